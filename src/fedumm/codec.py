"""Tensors <-> bytes for everything that crosses between parties: safetensors, never pickle.

``encode`` optionally casts floating tensors to a transport dtype (fp16/bf16 halve the bytes);
``decode`` returns float32 tensors when the payload was cast, so aggregation never runs in a
reduced precision by accident.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Collection, Mapping
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedumm.errors import AdapterStateError
from fedumm.types import DTYPES

WireDtype = Literal["float32", "float16", "bfloat16"]


def encode(
    state: Mapping[str, torch.Tensor],
    dtype: WireDtype = "float32",
    metadata: Mapping[str, str] | None = None,
    exact: Collection[str] = (),
) -> bytes:
    """Floating tensors cast to ``dtype``, except the keys in ``exact``, which travel in their own
    dtype (a codec's fields, whose dtypes the codec fixed)."""
    wire = DTYPES[dtype]
    tensors = {
        k: (v.to(wire) if v.is_floating_point() and k not in exact else v).detach().cpu().contiguous()
        for k, v in state.items()
    }
    meta = {"fedumm_wire_dtype": dtype, **(metadata or {})}
    return st_save(tensors, metadata=meta)


def decode(payload: bytes) -> dict[str, torch.Tensor]:
    try:
        tensors = st_load(payload)
    except SafetensorError as exc:
        raise AdapterStateError(f"payload is not a valid safetensors buffer: {exc}") from None
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def encode_message(
    parts: Mapping[str, Mapping[str, torch.Tensor]],
    dtype: WireDtype = "float32",
    metadata: Mapping[str, str] | None = None,
    exact_parts: Collection[str] = (),
) -> bytes:
    """Several named tensor dicts in one safetensors payload (keys ``part/name``), with
    ``metadata`` in its header; the tensors of ``exact_parts`` keep their dtypes."""
    flat = {}
    for part, tensors in parts.items():
        if "/" in part:
            raise ValueError(f"message part name {part!r} must not contain '/'")
        flat.update({f"{part}/{k}": v for k, v in tensors.items()})
    exact = {f"{part}/{k}" for part in exact_parts for k in parts.get(part, {})}
    return encode(flat, dtype, metadata={**(metadata or {}), "fedumm_parts": ",".join(parts)}, exact=exact)


def decode_message(payload: bytes) -> dict[str, dict[str, torch.Tensor]]:
    flat = decode(payload)
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in _message_parts(payload)}
    for key, tensor in flat.items():
        part, sep, name = key.partition("/")
        if not sep:
            raise AdapterStateError(f"message key {key!r} has no part prefix")
        parts.setdefault(part, {})[name] = tensor
    return parts


def _message_parts(payload: bytes) -> list[str]:
    # Parts are listed in the header metadata so that empty parts survive the round trip.
    (header_len,) = struct.unpack("<Q", payload[:8])
    meta = json.loads(payload[8 : 8 + header_len]).get("__metadata__", {})
    names = meta.get("fedumm_parts", "")
    return [n for n in names.split(",") if n]
