"""int4: per-row scaled 4-bit codes with stochastic rounding, two codes per byte.

As ``int8`` with L = 7: s_i = max_j |X_ij| / 7 (rounded up to ``base.scale_dtype``),
q_ij = SR(X_ij / s_i)
∈ [-7, 7], decoded as q_ij · s_i; per entry |error| < s_i and the decode is unbiased. Packing: the
tensor's codes in row-major order, each stored as the nibble q + 8 ∈ [1, 15]; code 2m goes in the
low nibble of byte m and code 2m + 1 in its high nibble. A tensor of odd size pads its last high
nibble with 8 (code 0). Nibble 0 (code −8) is never produced and is refused, as is any other
padding. Fields: ``codes`` uint8 (⌈numel / 2⌉,), ``scales`` ``base.scale_dtype(wire)`` (rows,).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedumm.compression.base import (
    Codec,
    Fields,
    check_scales,
    dequantize,
    numel,
    quantize,
    row_scales,
    rows,
    scale_dtype,
)

LEVELS = 7
_OFFSET = 8  # nibble = code + 8


def pack(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes in [-7, 7] (any integer or float dtype) -> uint8, two per byte, low nibble first."""
    nibbles = codes.reshape(-1).to(torch.int16) + _OFFSET
    if nibbles.numel() % 2:
        nibbles = torch.cat([nibbles, torch.tensor([_OFFSET], dtype=torch.int16)])
    pairs = nibbles.reshape(-1, 2)
    return (pairs[:, 0] | (pairs[:, 1] << 4)).to(torch.uint8)


def unpack(packed: torch.Tensor, count: int) -> torch.Tensor:
    """uint8 bytes -> the first ``count`` codes (int16)."""
    wide = packed.to(torch.int16)
    nibbles = torch.stack([wide & 0xF, wide >> 4], dim=1).reshape(-1)
    return nibbles[:count] - _OFFSET


class Int4(Codec):
    name = "int4"
    fields = ("codes", "scales")

    def dtypes(self, wire: torch.dtype, max_numel: int) -> dict[str, torch.dtype]:
        return {"codes": torch.uint8, "scales": scale_dtype(wire)}

    def sizes(self, shape: tuple[int, ...]) -> dict[str, int]:
        return {"codes": (numel(shape) + 1) // 2, "scales": rows(shape)}

    def encode(self, x: torch.Tensor, wire: torch.dtype, generator: torch.Generator) -> Fields:
        scales = row_scales(x, LEVELS, scale_dtype(wire))
        return {"codes": pack(quantize(x, scales, LEVELS, generator)), "scales": scales}

    def decode(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        return dequantize(unpack(fields["codes"], numel(shape)), fields["scales"], shape)

    def check(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> str | None:
        count = numel(shape)
        codes = unpack(fields["codes"], 2 * fields["codes"].numel())
        if bool((codes[:count] < -LEVELS).any()):
            return f"an int4 code is outside [-{LEVELS}, {LEVELS}]"
        if bool((codes[count:] != 0).any()):
            return "the int4 padding nibble is not the zero code"
        return check_scales(fields["scales"])
