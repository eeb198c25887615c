"""int4: nibble packing by hand (odd lengths included), the one-step error bound, unbiasedness,
and refused codes and padding."""

from __future__ import annotations

import pytest
import torch

from fedumm.compression.int4 import Int4, pack, unpack


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pack_by_hand_with_an_odd_length():
    # Prepare: codes -7, 7, 0 -> nibbles 1, 15, 8, and the padding nibble 8 (code 0).
    codes = torch.tensor([-7, 7, 0])
    # Execute
    packed = pack(codes)
    # Assert: byte 0 = 1 | 15 << 4 = 241, byte 1 = 8 | 8 << 4 = 136; unpacking gives the codes back.
    assert packed.dtype == torch.uint8 and packed.tolist() == [241, 136]
    assert unpack(packed, 3).tolist() == [-7, 7, 0]
    assert unpack(packed, 4).tolist() == [-7, 7, 0, 0]


@pytest.mark.parametrize("shape", [(1,), (5,), (3, 3), (7, 5), (16, 64)])
def test_odd_and_even_sizes_round_trip_within_one_step(shape):
    # Prepare
    x = torch.randn(shape, generator=_gen(1))
    # Execute
    fields = Int4().encode(x, torch.float32, _gen(2))
    decoded = Int4().decode(fields, shape)
    # Assert: ceil(n / 2) bytes, one scale per row, |error| < one step per entry, codes in [-7, 7].
    n, rows = x.numel(), shape[0] if len(shape) > 1 else 1
    assert fields["codes"].shape == ((n + 1) // 2,) and Int4().sizes(shape)["codes"] == (n + 1) // 2
    assert fields["scales"].shape == (rows,)
    step = fields["scales"].reshape(rows, 1).expand(rows, n // rows).reshape(shape)
    assert bool(((decoded - x).abs() <= step * (1 + 1e-6)).all())
    assert int(unpack(fields["codes"], n).abs().max()) <= 7
    assert Int4().check(fields, shape) is None


def test_scale_and_codes_by_hand():
    # max |x| = 0.875 -> s = 0.125 (exact in bfloat16, the scales' dtype on a float32 wire);
    # 0.875, -0.375, 0 are whole steps and stay exact.
    fields = Int4().encode(torch.tensor([0.875, -0.375, 0.0]), torch.float32, _gen())
    assert fields["scales"].dtype == torch.bfloat16 and float(fields["scales"][0]) == 0.125
    assert unpack(fields["codes"], 3).tolist() == [7, -3, 0]


def test_stochastic_rounding_is_unbiased_over_seeds():
    x = torch.linspace(-1, 1, 29)  # s = 1/7: most entries fall between codes
    n, scale = 3000, 1 / 7
    mean = sum(Int4().decode(Int4().encode(x, torch.float32, _gen(seed)), (29,)) for seed in range(n)) / n
    assert float((mean - x).abs().max()) < 5 * (scale / 2) / n**0.5


@pytest.mark.parametrize(
    ("packed", "reason"),
    [
        ([0x01, 0x88], "outside [-7, 7]"),  # the second code is nibble 0 = code -8
        ([0x81, 0x98], "padding nibble"),  # 3 codes: the last high nibble must be 8 (code 0)
    ],
)
def test_check_refuses_bad_nibbles(packed, reason):
    fields = {"codes": torch.tensor(packed, dtype=torch.uint8), "scales": torch.tensor([0.1])}
    assert reason in Int4().check(fields, (3,))
