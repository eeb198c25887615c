"""The strict key/shape check every state exchange goes through."""

import pytest
import torch

from fedumm.errors import AdapterStateError
from fedumm.types import DTYPES, check_state_matches, describe_keys

REFERENCE = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}


@pytest.mark.parametrize(
    ("state", "fragment"),
    [
        ({"a": torch.zeros(2, 3)}, r"1 missing key\(s\): b"),
        ({**REFERENCE, "c": torch.zeros(1)}, r"1 unexpected key\(s\): c"),
        ({"a": torch.zeros(3, 2), "b": torch.zeros(4)}, r"shape mismatch for 'a': got \(3, 2\), expected \(2, 3\)"),
    ],
)
def test_mismatches_are_named(state, fragment):
    with pytest.raises(AdapterStateError, match=rf"^client 3: {fragment}"):
        check_state_matches(REFERENCE, state, "client 3")


def test_matching_state_and_shape_references_pass():
    check_state_matches(REFERENCE, {"a": torch.ones(2, 3), "b": torch.ones(4)}, "ok")
    check_state_matches({"a": torch.Size([2, 3])}, {"a": torch.ones(2, 3)}, "sizes")


def test_describe_keys_lists_three_then_counts():
    assert describe_keys({"d", "a", "c", "b", "e"}) == "a, b, c and 2 more"
    assert describe_keys({"x"}) == "x"


def test_dtype_names_cover_the_config_literals():
    assert DTYPES == {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
