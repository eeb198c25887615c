"""int8: per-row scaled 8-bit codes with stochastic rounding (QSGD-style, Alistarh et al. 2017,
with one scale per row as in Dettmers et al. 2022's vector-wise quantisation).

For a tensor X reshaped to rows × columns (rows = its first dimension; a 1-D tensor is one row):
s_i = max_j |X_ij| / 127 (rounded up to ``base.scale_dtype``),
q_ij = SR(X_ij / s_i) ∈ [-127, 127]
(SR = unbiased stochastic rounding, ``base.stochastic_round``), decoded as q_ij · s_i. Per entry
|q_ij s_i − X_ij| < s_i (one step) and E[q_ij s_i] = X_ij. The code −128 is never produced and
is refused on receipt. Fields: ``codes`` int8 (numel,), ``scales`` ``base.scale_dtype(wire)`` (rows,).
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

LEVELS = 127


class Int8(Codec):
    name = "int8"
    fields = ("codes", "scales")

    def dtypes(self, wire: torch.dtype, max_numel: int) -> dict[str, torch.dtype]:
        return {"codes": torch.int8, "scales": scale_dtype(wire)}

    def sizes(self, shape: tuple[int, ...]) -> dict[str, int]:
        return {"codes": numel(shape), "scales": rows(shape)}

    def encode(self, x: torch.Tensor, wire: torch.dtype, generator: torch.Generator) -> Fields:
        scales = row_scales(x, LEVELS, scale_dtype(wire))
        return {"codes": quantize(x, scales, LEVELS, generator).to(torch.int8), "scales": scales}

    def decode(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        return dequantize(fields["codes"], fields["scales"], shape)

    def check(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> str | None:
        if bool((fields["codes"] < -LEVELS).any()):
            return f"an int8 code is outside [-{LEVELS}, {LEVELS}]"
        return check_scales(fields["scales"])
