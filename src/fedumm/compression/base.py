"""What every update codec answers, and the per-row stochastic quantiser int8 and int4 share.

A codec turns one float32 tensor into a few flat *fields* (integer codes, scales, values,
indices) and back. Every field's dtype and length follow from the tensor's shape, the wire
dtype and the codec's own parameter alone, so the receiver checks a payload's layout exactly
before it decodes anything; ``check`` then tests the values a layout cannot (code ranges, index
ranges, finite scales).

Stochastic rounding (Gupta et al. 2015, "Deep Learning with Limited Numerical Precision";
QSGD, Alistarh et al. 2017): y = x / s is rounded to ⌊y⌋ + 1 with probability y − ⌊y⌋, else
to ⌊y⌋, so E[q] = y (unbiased) and |q − y| < 1: the decoded q·s is within one quantisation
step s of x. The scale of a row is s = max|row| / L (L = 127 for int8, 7 for int4), rounded
*up* to the wire dtype so that |y| ≤ L holds with the scale actually sent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

Fields = dict[str, torch.Tensor]


class Codec(ABC):
    """One tensor <-> flat fields. Stateless; ``name`` is the ``federation.compression.codec`` value."""

    name: str
    #: Field names, in the order they are concatenated into a message.
    fields: tuple[str, ...]

    @abstractmethod
    def dtypes(self, wire: torch.dtype, max_numel: int) -> dict[str, torch.dtype]:
        """Each field's dtype on the wire (``max_numel``: the largest tensor of the message)."""

    @abstractmethod
    def sizes(self, shape: tuple[int, ...]) -> dict[str, int]:
        """Each field's length for one tensor of ``shape``."""

    @abstractmethod
    def encode(self, x: torch.Tensor, wire: torch.dtype, generator: torch.Generator) -> Fields:
        """``x`` (float32) as 1-D fields of ``sizes(x.shape)``; floating fields in ``wire``."""

    @abstractmethod
    def decode(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """The float32 tensor of ``shape`` the fields stand for (``check`` has passed)."""

    @abstractmethod
    def check(self, fields: Mapping[str, torch.Tensor], shape: tuple[int, ...]) -> str | None:
        """Why the fields' values are invalid for ``shape`` (None: valid); lengths already match."""


def numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def rows(shape: tuple[int, ...]) -> int:
    """The rows a tensor is scaled by: its first dimension; a 1-D (or 0-D) tensor is one row."""
    return shape[0] if len(shape) >= 2 else 1


def scale_dtype(wire: torch.dtype) -> torch.dtype:
    """The dtype int8/int4 scales travel in: the wire dtype when it is 16-bit, else bfloat16. A
    LoRA B row holds only r entries, so a float32 scale would cost r/4 codes' worth of bytes;
    bfloat16 keeps float32's range (tiny updates never round to a zero scale) and, rounded up,
    wastes at most 2^-8 of the code range, against a quantisation step of 1/127 (int8)."""
    return wire if wire in (torch.float16, torch.bfloat16) else torch.bfloat16


def row_scales(x: torch.Tensor, levels: int, wire: torch.dtype) -> torch.Tensor:
    """Per-row s = max|row| / levels in ``wire``, rounded up where the cast rounded down."""
    exact = x.reshape(rows(tuple(x.shape)), -1).abs().amax(dim=1) / levels
    scale = exact.to(wire)
    low = scale.float() < exact
    return torch.where(low, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)


def stochastic_round(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """⌊y⌋ + Bernoulli(y − ⌊y⌋), written so that an integer y stays exactly y."""
    low = torch.floor(y)
    up = torch.rand(y.shape, generator=generator) < (y - low)
    return low + up.to(y.dtype)


def quantize(x: torch.Tensor, scales: torch.Tensor, levels: int, generator: torch.Generator) -> torch.Tensor:
    """Integer codes in [-levels, levels] (float32 holding integers), flat in row-major order."""
    s = scales.float().unsqueeze(1)
    x2 = x.reshape(s.shape[0], -1)
    y = torch.where(s > 0, x2 / torch.where(s > 0, s, 1.0), 0.0).clamp(-levels, levels)
    return stochastic_round(y, generator).reshape(-1)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    s = scales.float().unsqueeze(1)
    return (codes.float().reshape(s.shape[0], -1) * s).reshape(shape)


def check_scales(scales: torch.Tensor) -> str | None:
    if not bool(torch.isfinite(scales).all()):
        return "a scale is not finite"
    if bool((scales < 0).any()):
        return "a scale is negative"
    return None
