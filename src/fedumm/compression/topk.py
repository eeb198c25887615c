"""topk: keep the k largest-magnitude entries of each tensor, send their values and positions
(sparsification as in Aji & Heafield 2017, Stich et al. 2018; with error feedback the dropped
mass is sent later, ``feedback``).

For a tensor of n entries, k = max(1, round(fraction · n)), at most n; the kept set is the
indices of the k largest |x| (ties broken by ``torch.topk``), sent in increasing order. Fields:
``values`` wire dtype (k,), ``indices`` (k,) flat row-major positions in the smallest signed
integer type that holds every position of the message's largest tensor (int16, int32 or int64).
Decoding scatters the values into zeros. Refused on receipt: an index outside [0, n) or indices
not strictly increasing (a repeated position), non-finite values.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedumm.compression.base import Codec, Fields, numel


def index_dtype(max_numel: int) -> torch.dtype:
    """The smallest signed integer type whose range holds positions 0 .. max_numel - 1."""
    for dtype in (torch.int16, torch.int32):
        if max_numel - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


class TopK(Codec):
    name = "topk"
    fields = ("values", "indices")

    def __init__(self, fraction: float):
        if not 0 < fraction <= 1:
            raise ValueError(f"topk fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction

    def kept(self, count: int) -> int:
        return min(count, max(1, round(self.fraction * count)))

    def dtypes(self, wire: torch.dtype, max_numel: int) -> dict[str, torch.dtype]:
        return {"values": wire, "indices": index_dtype(max_numel)}

    def sizes(self, shape: tuple[int, ...]) -> dict[str, int]:
        k = self.kept(numel(shape))
        return {"values": k, "indices": k}

    def encode(self, x: torch.Tensor, wire: torch.dtype, generator: torch.Generator) -> Fields:
        flat = x.reshape(-1)
        indices = torch.sort(torch.topk(flat.abs(), self.kept(flat.numel()), sorted=False).indices).values
        return {"values": flat[indices].to(wire), "indices": indices}

    def decode(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros(numel(shape))
        out[fields["indices"].long()] = fields["values"].float()
        return out.reshape(shape)

    def check(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> str | None:
        indices = fields["indices"].long()
        if bool(((indices < 0) | (indices >= numel(shape))).any()):
            return f"a topk index is outside [0, {numel(shape)})"
        if bool((indices[1:] <= indices[:-1]).any()):
            return "topk indices are not strictly increasing"
        if not bool(torch.isfinite(fields["values"]).all()):
            return "a topk value is not finite"
        return None
