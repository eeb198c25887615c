"""Tensors <-> bytes for everything that crosses between parties: safetensors, never pickle.

``encode`` optionally casts floating tensors to a transport dtype (fp16/bf16 halve the bytes);
``decode`` returns float32 tensors when the payload was cast, so aggregation never runs in a
reduced precision by accident.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedumm.errors import AdapterStateError

WireDtype = Literal["float32", "float16", "bfloat16"]
_WIRE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def encode(
    state: Mapping[str, torch.Tensor],
    dtype: WireDtype = "float32",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    wire = _WIRE_DTYPES[dtype]
    tensors = {
        k: (v.to(wire) if v.is_floating_point() else v).detach().cpu().contiguous()
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
