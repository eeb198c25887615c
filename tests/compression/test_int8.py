"""int8: hand-computed codes and scales, the one-step error bound, unbiasedness over seeds, and
the value checks a receiver runs."""

from __future__ import annotations

import pytest
import torch

from fedumm.compression.base import scale_dtype
from fedumm.compression.int8 import Int8

WIRES = [torch.float32, torch.float16, torch.bfloat16]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_codes_and_scales_by_hand():
    # Prepare: row 0 has max |x| = 127/128 (s = 1/128, exact in bfloat16, the scales' dtype on a
    # float32 wire); row 1 is all zeros.
    x = torch.tensor([[0.9921875, -0.390625, 0.15625], [0.0, 0.0, 0.0]])
    # Execute
    fields = Int8().encode(x, torch.float32, _gen())
    # Assert: s = 1/128 for the first row, 0 for the zero row; 127, -50 and 20 steps are whole
    # codes, so rounding keeps them.
    assert fields["scales"].float().tolist() == [1 / 128, 0.0]
    assert fields["codes"].dtype == torch.int8 and fields["codes"].shape == (6,)
    assert fields["codes"].tolist() == [127, -50, 20, 0, 0, 0]
    assert torch.allclose(Int8().decode(fields, (2, 3)), x, atol=1e-6)


def test_a_one_dimensional_tensor_is_one_row():
    x = torch.tensor([0.5, -2.54, 1.0])
    fields = Int8().encode(x, torch.float32, _gen())
    # The scale is 2.54 / 127 rounded up to bfloat16: at most 2^-8 above it.
    scale = float(fields["scales"][0])
    assert fields["scales"].shape == (1,) and 2.54 / 127 <= scale <= 2.54 / 127 * (1 + 2**-8)
    assert Int8().sizes((3,)) == {"codes": 3, "scales": 1}
    assert Int8().sizes((4, 5, 2)) == {"codes": 40, "scales": 4}


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (7,), (3, 5, 2)])
def test_error_is_below_one_quantisation_step(wire, shape):
    # Prepare: entries over several magnitudes, so rows have different scales.
    x = torch.randn(shape, generator=_gen(1)) * torch.logspace(-4, 0, shape[0]).reshape(-1, *[1] * (len(shape) - 1))
    if len(shape) == 1:
        x = torch.randn(shape, generator=_gen(1))
    # Execute
    fields = Int8().encode(x, wire, _gen(2))
    decoded = Int8().decode(fields, shape)
    # Assert: the scale (in the wire dtype) is at least max|row| / 127, and every entry is within
    # one step s of its row: |q s - x| < s (stochastic rounding moves by less than one code).
    rows = shape[0] if len(shape) > 1 else 1
    scales = fields["scales"].float()
    assert fields["scales"].dtype == scale_dtype(wire)
    assert bool((scales * 127 >= x.reshape(rows, -1).abs().amax(dim=1)).all())
    step = scales.reshape(rows, 1).expand(rows, x.numel() // rows).reshape(shape)
    assert bool(((decoded - x).abs() <= step * (1 + 1e-6)).all())
    assert int(fields["codes"].abs().max()) <= 127


def test_stochastic_rounding_is_unbiased_over_seeds():
    # Prepare: one row whose entries sit between codes (s = 1/127 when max |x| = 1).
    x = torch.linspace(-1, 1, 41)
    scale = 1 / 127
    # Execute: the mean decode over many seeds.
    n = 4000
    mean = sum(Int8().decode(Int8().encode(x, torch.float32, _gen(seed)), (41,)) for seed in range(n)) / n
    # Assert: each decode is x rounded down or up by a Bernoulli(frac) step, std <= s/2, so the
    # mean is within 5 standard errors of x; deterministic round-to-nearest is off by up to s/2.
    assert float((mean - x).abs().max()) < 5 * (scale / 2) / n**0.5
    nearest = torch.round(x / scale) * scale
    assert float((nearest - x).abs().max()) > 10 * (scale / 2) / n**0.5


def test_the_same_seed_gives_the_same_codes():
    x = torch.randn(8, 8, generator=_gen(3))
    a, b = Int8().encode(x, torch.float32, _gen(5)), Int8().encode(x, torch.float32, _gen(5))
    c = Int8().encode(x, torch.float32, _gen(6))
    assert torch.equal(a["codes"], b["codes"]) and not torch.equal(a["codes"], c["codes"])


@pytest.mark.parametrize(
    ("codes", "scales", "reason"),
    [
        ([-128, 0], [0.1], "outside [-127, 127]"),
        ([1, 0], [float("nan")], "not finite"),
        ([1, 0], [-0.1], "negative"),
    ],
)
def test_check_refuses_values_outside_the_code(codes, scales, reason):
    fields = {"codes": torch.tensor(codes, dtype=torch.int8), "scales": torch.tensor(scales)}
    assert reason in Int8().check(fields, (2,))


def test_check_passes_an_encoded_tensor():
    x = torch.randn(4, 3, generator=_gen(4))
    assert Int8().check(Int8().encode(x, torch.float16, _gen()), (4, 3)) is None
