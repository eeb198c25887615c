"""Compressed client updates (``federation.compression``): a client sends its delta
Δ = θ_k − θ (``types.state_delta``) through a codec; the server checks the payload's layout and
values, decodes it and rebuilds θ + D(C(Δ)) before any strategy sees it.

One codec per file (``int8``, ``int4``, ``topk``; registry ``CODECS``), error feedback in
``feedback``. On the wire a compressed reply's ``delta`` part holds one flat tensor per codec
field (``delta/codes`` and ``delta/scales``, or ``delta/values`` and ``delta/indices``): the
fields of the trained tensors in sorted key order, concatenated, so that the header stays a few
hundred bytes. The header metadata names the codec (``fedumm_codec``) and a digest of the sorted
keys and shapes (``fedumm_layout``), so the receiver knows every field's exact dtype and length
from its own list of this round's tensors before it reads a byte of data.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping

import torch

from fedumm.compression.base import Codec, Fields, numel
from fedumm.compression.feedback import compensate, next_residual
from fedumm.compression.int4 import Int4
from fedumm.compression.int8 import Int8
from fedumm.compression.topk import TopK
from fedumm.types import State

#: ``federation.compression.codec`` -> the codec, built from ``topk_fraction``.
CODECS: dict[str, Callable[[float], Codec]] = {
    "int8": lambda fraction: Int8(),
    "int4": lambda fraction: Int4(),
    "topk": TopK,
}
#: The message part of a compressed update, and its header metadata keys.
PART = "delta"
CODEC_KEY = "fedumm_codec"
LAYOUT_KEY = "fedumm_layout"

Shapes = Mapping[str, tuple[int, ...]]


class CompressionError(ValueError):
    """A compressed payload that does not fit its layout or holds invalid values (the reason)."""


def build_codec(name: str, topk_fraction: float = 0.1) -> Codec | None:
    """The codec ``federation.compression.codec`` names; None for ``none`` (plain replies)."""
    if name == "none":
        return None
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    return CODECS[name](topk_fraction)


def layout_digest(shapes: Shapes) -> str:
    """16 hex digits identifying the sorted keys and shapes a delta was encoded against."""
    text = ";".join(f"{k}:{'x'.join(map(str, shapes[k]))}" for k in sorted(shapes))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def metadata(codec: Codec, shapes: Shapes) -> dict[str, str]:
    return {CODEC_KEY: codec.name, LAYOUT_KEY: layout_digest(shapes)}


def expected_layout(codec: Codec, shapes: Shapes, wire: torch.dtype) -> dict[str, tuple[torch.dtype, int]]:
    """field -> (dtype, length) of the concatenated fields for tensors of ``shapes``."""
    dtypes = codec.dtypes(wire, max((numel(s) for s in shapes.values()), default=1))
    return {f: (dtypes[f], sum(codec.sizes(tuple(s))[f] for s in shapes.values())) for f in codec.fields}


def encode_delta(delta: Mapping[str, torch.Tensor], codec: Codec, wire: torch.dtype, seed: int) -> Fields:
    """The concatenated fields of every tensor of ``delta`` (sorted keys); stochastic rounding
    draws from one generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {k: tuple(v.shape) for k, v in delta.items()}
    dtypes = {f: d for f, (d, _) in expected_layout(codec, shapes, wire).items()}
    encoded = [codec.encode(delta[k].detach().float().cpu(), wire, generator) for k in sorted(delta)]
    return {f: torch.cat([e[f].reshape(-1).to(dtypes[f]) for e in encoded]) for f in codec.fields}


def decode_delta(fields: Mapping[str, torch.Tensor], codec: Codec, shapes: Shapes) -> State:
    """Split the concatenated fields over ``shapes`` (sorted keys), check their values and decode.
    Raises ``CompressionError`` naming the first field or tensor at fault."""
    if set(fields) != set(codec.fields):
        raise CompressionError(f"{codec.name} fields {sorted(fields)}, expected {sorted(codec.fields)}")
    offsets = dict.fromkeys(codec.fields, 0)
    out: State = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        part = {}
        for name, size in codec.sizes(shape).items():
            start = offsets[name]
            part[name] = fields[name].reshape(-1)[start : start + size]
            if part[name].numel() != size:
                raise CompressionError(f"{codec.name} field {name!r} is too short for tensor {key!r}")
            offsets[name] = start + size
        reason = codec.check(part, shape)
        if reason is not None:
            raise CompressionError(f"tensor {key!r}: {reason}")
        out[key] = codec.decode(part, shape)
    for name, used in offsets.items():
        if fields[name].numel() != used:
            raise CompressionError(f"{codec.name} field {name!r} has {fields[name].numel()} entries, expected {used}")
    return out


def compress(
    delta: Mapping[str, torch.Tensor],
    codec: Codec,
    wire: torch.dtype,
    seed: int,
    residual: Mapping[str, torch.Tensor] | None = None,
) -> tuple[Fields, State, State | None]:
    """(the fields to send, what the receiver will decode, the next residual) for one update;
    with ``residual`` (error feedback) the update sent is Δ + e and the residual is returned,
    else None."""
    corrected = compensate(delta, residual or {})
    fields = encode_delta(corrected, codec, wire, seed)
    # Decoded from the wire dtype's values, exactly as the receiver decodes them.
    sent = decode_delta(fields, codec, {k: tuple(v.shape) for k, v in corrected.items()})
    return fields, sent, next_residual(corrected, sent, residual) if residual is not None else None
