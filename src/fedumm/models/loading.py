"""The load path every backend shares: dtype, 4-/8-bit quantization, gradient checkpointing,
freezing, device placement, and one-line ConfigErrors for what a user can fix.

* ``model.dtype``: the dtype the base weights are loaded in (``from_pretrained(dtype=...)``);
  backends cast floating-point inputs (pixel values) to it.
* ``model.quantization``: ``4bit`` (NF4, double quantization; QLoRA) or ``8bit`` (LLM.int8) via
  transformers' ``BitsAndBytesConfig``. bitsandbytes runs on CUDA only, so on another device, or
  without the package, loading stops with a ConfigError naming ``model.quantization``. The
  vision tower and connector stay unquantized (``skip_modules``); they are small and sensitive.
* ``model.gradient_checkpointing``: recompute activations in the backward pass (non-reentrant
  checkpointing), with ``enable_input_require_grads`` so LoRA layers behind a frozen embedding
  still receive gradients.
"""

from __future__ import annotations

import importlib.util
import types
from collections.abc import Sequence
from typing import Any

import torch

from fedumm.config import ModelConfig
from fedumm.errors import ConfigError
from fedumm.types import DTYPES


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_error(path: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"model.name_or_path: cannot load {path!r}: {first_line(exc)}")


def bitsandbytes_available() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(config: ModelConfig, device: torch.device, skip_modules: Sequence[str] = ()):
    """A BitsAndBytesConfig for ``model.quantization``, None for "none"; a ConfigError where
    bitsandbytes cannot run (no CUDA device, package missing)."""
    mode = config.quantization
    if mode == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(
            f"model.quantization: {mode!r} needs a CUDA GPU (bitsandbytes kernels run on CUDA "
            f"only) but the model device is {device.type}; use model.quantization=none on this machine"
        )
    if not bitsandbytes_available():
        raise ConfigError(
            f"model.quantization: {mode!r} needs the bitsandbytes package, which is not installed "
            "(install the qlora extra: pip install 'fedumm[qlora]'), or use model.quantization=none"
        )
    from transformers import BitsAndBytesConfig

    skip = list(skip_modules) or None
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    compute = DTYPES[config.dtype]
    if compute == torch.float32:  # 4-bit matmuls want a 16-bit compute dtype
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
        llm_int8_skip_modules=skip,
    )


def _clone_after_require_grads(model: torch.nn.Module) -> None:
    """``enable_input_require_grads`` for models that add to the embedding output in place
    (BLIP: ``embeddings += position_embeddings``): the stock hook turns that output into a leaf
    that requires grad, which an in-place add rejects; returning a clone keeps it a non-leaf."""

    def hook(module, inputs, output):
        return output.requires_grad_(True).clone()

    def enable_input_require_grads(self) -> None:
        from transformers import PreTrainedModel

        seen: set[int] = set()
        for module in self.modules():
            if not isinstance(module, PreTrainedModel):
                continue
            try:
                embeddings = module.get_input_embeddings()
            except NotImplementedError:
                continue
            if embeddings is not None and id(embeddings) not in seen:
                seen.add(id(embeddings))
                embeddings.register_forward_hook(hook)

    # peft calls model.enable_input_require_grads() again when it wraps a checkpointed model.
    model.enable_input_require_grads = types.MethodType(enable_input_require_grads, model)


def enable_gradient_checkpointing(model: torch.nn.Module, in_place_embeddings: bool = False) -> None:
    """Non-reentrant activation checkpointing on every layer that supports it.

    ``enable_input_require_grads`` makes the (frozen) embedding output require grad: reentrant
    checkpointing needs it for LoRA layers inside a checkpointed block to get gradients, and peft
    calls it on any checkpointed model it wraps. ``in_place_embeddings``: the model adds to the
    embedding output in place, so the hook must return a copy.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"model.gradient_checkpointing: {type(model).__name__} does not support gradient "
            "checkpointing; set it to false"
        )
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if in_place_embeddings:
        _clone_after_require_grads(model)
    if hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()


def load_frozen_model(
    model_class: Any,
    path: str,
    config: ModelConfig,
    device: torch.device,
    skip_modules: Sequence[str] = (),
    in_place_embeddings: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """``model_class.from_pretrained(path)`` with the memory options of ``config``; every
    parameter frozen, the model on ``device`` and in eval mode."""
    quant = quantization_config(config, device, skip_modules)  # fails before any weight loads
    kwargs["dtype"] = DTYPES[config.dtype]
    if config.attn_implementation != "auto":
        kwargs["attn_implementation"] = config.attn_implementation
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
    try:
        model = model_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        if config.attn_implementation != "auto" and "attn" in str(exc).lower():
            raise ConfigError(
                f"model.attn_implementation: {path} does not support {config.attn_implementation!r} attention "
                f"({str(exc).splitlines()[0]}); use model.attn_implementation=auto"
            ) from exc
        raise load_error(path, exc) from exc
    model.requires_grad_(False)
    if quant is None:
        model.to(device)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model, in_place_embeddings)
    model.eval()
    return model


def cast_inputs(batch: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Move tensors to ``device``; floating-point ones (pixel values) also to ``dtype``."""
    out = {}
    for key, value in batch.items():
        if torch.is_tensor(value):
            if value.is_floating_point():
                value = value.to(device=device, dtype=dtype, non_blocking=True)
            else:
                value = value.to(device, non_blocking=True)
        out[key] = value
    return out
