"""The message-level layer (``fedumm.compression``): fields concatenated in sorted key order,
their exact layout, the layout digest, and decode_delta's refusals."""

from __future__ import annotations

import pytest
import torch

from fedumm.compression import (
    CompressionError,
    build_codec,
    decode_delta,
    encode_delta,
    expected_layout,
    layout_digest,
)

# Maxima 127/256 and 127/128: scales 1/256 and 1/128, exact in bfloat16 (the scales' dtype on a float32 wire).
DELTA = {"z": torch.tensor([[0.49609375, -0.49609375, 0.0]]), "a": torch.tensor([0.9921875, 0.0])}
SHAPES = {"z": (1, 3), "a": (2,)}


def test_fields_are_concatenated_in_sorted_key_order():
    # Prepare/Execute: int8 of "a" (s = 1/128) then "z" (s = 1/256).
    fields = encode_delta(DELTA, build_codec("int8"), torch.float32, seed=0)
    # Assert: codes of a, then of z; one scale per tensor (both have one row).
    assert fields["codes"].tolist() == [127, 0, 127, -127, 0]
    assert fields["scales"].dtype == torch.bfloat16
    assert fields["scales"].float().tolist() == [1 / 128, 1 / 256]
    decoded = decode_delta(fields, build_codec("int8"), SHAPES)
    assert all(torch.allclose(decoded[k], DELTA[k], atol=1e-6) for k in DELTA)


@pytest.mark.parametrize(
    ("name", "wire", "layout"),
    [
        ("int8", torch.float16, {"codes": (torch.int8, 5), "scales": (torch.float16, 2)}),
        ("int4", torch.float32, {"codes": (torch.uint8, 3), "scales": (torch.bfloat16, 2)}),  # ceil(3/2) + 1
        ("topk", torch.bfloat16, {"values": (torch.bfloat16, 2), "indices": (torch.int16, 2)}),
    ],
)
def test_expected_layout_follows_from_the_shapes(name, wire, layout):
    codec = build_codec(name, 0.4)  # topk: round(0.4 * 3) = 1 and round(0.4 * 2) = 1
    assert expected_layout(codec, SHAPES, wire) == layout
    fields = encode_delta(DELTA, codec, wire, seed=1)
    assert {f: (t.dtype, t.numel()) for f, t in fields.items()} == layout


def test_layout_digest_depends_on_keys_and_shapes_not_order():
    assert layout_digest({"a": (2,), "z": (1, 3)}) == layout_digest(SHAPES)
    assert layout_digest({"z": (3, 1), "a": (2,)}) != layout_digest(SHAPES)
    assert layout_digest({"y": (1, 3), "a": (2,)}) != layout_digest(SHAPES)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: {**f, "codes": f["codes"][:-1]}, "too short for tensor 'z'"),
        (lambda f: {**f, "codes": torch.cat([f["codes"], f["codes"][:1]])}, "has 6 entries, expected 5"),
        (lambda f: {"codes": f["codes"]}, "fields ['codes'], expected ['codes', 'scales']"),
        (lambda f: {**f, "scales": torch.tensor([0.01, float("nan")])}, "tensor 'z': a scale is not finite"),
    ],
)
def test_decode_refuses_fields_that_do_not_fit(change, reason):
    fields = encode_delta(DELTA, build_codec("int8"), torch.float32, seed=0)
    with pytest.raises(CompressionError, match=reason.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        decode_delta(change(fields), build_codec("int8"), SHAPES)


def test_build_codec_none_is_plain_replies():
    assert build_codec("none") is None
    with pytest.raises(ValueError, match="unknown codec 'int2'"):
        build_codec("int2")
