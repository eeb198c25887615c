"""topk: exactly the k largest magnitudes, k's rounding, the index dtype, and refused indices."""

from __future__ import annotations

import pytest
import torch

from fedumm.compression.topk import TopK, index_dtype

GEN = torch.Generator().manual_seed(0)


def test_keeps_exactly_the_k_largest_magnitudes():
    # Prepare: 10 entries; the 3 largest |x| are -5 (index 1), 4 (index 5) and 3 (index 2).
    x = torch.tensor([[0.1, -5.0, 3.0, 0.2, -0.05], [4.0, 0.0, -0.3, 2.9, 1.0]])
    # Execute: fraction 0.3 of 10 entries -> k = 3.
    fields = TopK(0.3).encode(x, torch.float32, GEN)
    decoded = TopK(0.3).decode(fields, (2, 5))
    # Assert: increasing flat indices, their values, zeros elsewhere.
    assert fields["indices"].tolist() == [1, 2, 5]
    assert fields["values"].tolist() == [-5.0, 3.0, 4.0]
    expected = torch.zeros(10)
    expected[[1, 2, 5]] = torch.tensor([-5.0, 3.0, 4.0])
    assert torch.equal(decoded, expected.reshape(2, 5))


def test_random_tensor_keeps_the_top_set():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(1))
    fields = TopK(0.1).encode(x, torch.float32, GEN)
    kept = set(fields["indices"].tolist())
    # k = round(0.1 * 1024) = 102; every kept |x| is >= every dropped |x|.
    assert len(kept) == 102
    flat = x.reshape(-1).abs()
    dropped = [i for i in range(1024) if i not in kept]
    assert float(flat[list(kept)].min()) >= float(flat[dropped].max())


@pytest.mark.parametrize(("fraction", "n", "k"), [(0.1, 1024, 102), (0.01, 1024, 10), (0.001, 100, 1), (1.0, 7, 7)])
def test_k_is_the_rounded_fraction_and_at_least_one(fraction, n, k):
    assert TopK(fraction).sizes((n,)) == {"values": k, "indices": k}


def test_values_travel_in_the_wire_dtype():
    x = torch.tensor([1.0 / 3, -2.0, 0.0])
    fields = TopK(0.7).encode(x, torch.bfloat16, GEN)
    assert fields["values"].dtype == torch.bfloat16
    assert fields["values"].float().tolist() == [float(torch.tensor(1.0 / 3).to(torch.bfloat16)), -2.0]


@pytest.mark.parametrize(
    ("n", "dtype"), [(2, torch.int16), (32_768, torch.int16), (32_769, torch.int32), (2**31 + 1, torch.int64)]
)
def test_index_dtype_is_the_smallest_that_holds_every_position(n, dtype):
    assert index_dtype(n) == dtype


@pytest.mark.parametrize(
    ("indices", "values", "reason"),
    [
        ([0, 10], [1.0, 1.0], "outside [0, 10)"),
        ([-1, 3], [1.0, 1.0], "outside [0, 10)"),
        ([3, 3], [1.0, 1.0], "strictly increasing"),
        ([4, 2], [1.0, 1.0], "strictly increasing"),
        ([2, 4], [1.0, float("inf")], "not finite"),
    ],
)
def test_check_refuses_bad_indices_and_values(indices, values, reason):
    fields = {"indices": torch.tensor(indices, dtype=torch.int16), "values": torch.tensor(values)}
    assert reason in TopK(0.2).check(fields, (10,))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_zero_one_is_refused(fraction):
    with pytest.raises(ValueError, match="topk fraction"):
        TopK(fraction)
