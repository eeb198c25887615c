"""LoRA through peft, and the adapter-state contract every other module relies on.

* ``get_adapter_state`` returns detached CPU copies of the trainable tensors under canonical
  keys: no ``base_model.model.`` wrapper prefix and no adapter name, e.g.
  ``model.language_model.layers.0.self_attn.q_proj.lora_A.weight``.
* ``set_adapter_state`` is strict: missing keys, unexpected keys and shape mismatches raise
  ``AdapterStateError`` naming them, and nothing is written unless every key matches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from fedumm.config import AdapterConfig
from fedumm.errors import AdapterStateError, ConfigError

_WRAPPER_PREFIX = "base_model.model."


def apply_lora(model: torch.nn.Module, config: AdapterConfig, targets: str,
               modules_to_save: list[str] | None = None):
    """Wrap a frozen model with LoRA adapters on the modules ``targets`` (a regex) matches.

    ``modules_to_save`` (full module names) get a trainable copy that peft saves with the
    adapter, so fully trained groups such as the connector travel in the PEFT format too.
    """
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
        modules_to_save=modules_to_save or None,
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as exc:  # peft raises ValueError when the regex matches no module
        raise ConfigError(f"adapter.target_modules: {targets!r} matches no module ({exc})") from None


def canonical_key(name: str, adapter_name: str = "default") -> str:
    """Parameter name inside a PeftModel -> the key used on the wire and in checkpoints:
    no wrapper prefix, no adapter name, and a modules_to_save copy named like its module."""
    name = name.removeprefix(_WRAPPER_PREFIX)
    name = name.replace(f".modules_to_save.{adapter_name}.", ".")
    return name.replace(f".{adapter_name}.", ".")


def is_lora_key(key: str) -> bool:
    return ".lora_" in key


def group_module_names(model: torch.nn.Module, pattern: str) -> list[str]:
    """Names of the modules whose own parameters all match ``pattern`` (re.fullmatch on the
    parameter name): the leaf modules of a group, as peft's ``modules_to_save`` wants them."""
    regex = re.compile(pattern)
    names = []
    for module_name, module in model.named_modules():
        own = [f"{module_name}.{p}" if module_name else p for p, _ in module.named_parameters(recurse=False)]
        if own and all(regex.fullmatch(n) for n in own):
            names.append(module_name)
    return names


def unit_parameters(model: torch.nn.Module, module_groups: Mapping[str, str]) -> dict[str, dict[str, torch.nn.Parameter]]:
    """Parameters of a (peft-wrapped) model by unit: "lora" and each module group.

    peft's frozen ``original_module`` copies belong to no unit; a parameter matching two
    groups is an error in the backend's group table."""
    units: dict[str, dict[str, torch.nn.Parameter]] = {"lora": {}, **{g: {} for g in module_groups}}
    compiled = {g: re.compile(p) for g, p in module_groups.items()}
    for name, param in model.named_parameters():
        if ".original_module." in name:
            continue
        key = canonical_key(name)
        if is_lora_key(key):
            units["lora"][key] = param
            continue
        groups = [g for g, regex in compiled.items() if regex.fullmatch(key)]
        if len(groups) > 1:
            raise AdapterStateError(f"parameter {key!r} matches several module groups: {groups}")
        if groups:
            units[groups[0]][key] = param
    return units


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    params: dict[str, torch.nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = canonical_key(name)
            if key in params:
                raise AdapterStateError(f"two trainable parameters map to the same key {key!r}")
            params[key] = param
    return params


def copy_state(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies (never views of the live parameters)."""
    return {k: p.detach().to("cpu", copy=True) for k, p in params.items()}


def get_adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return copy_state(trainable_parameters(model))


def _describe(keys: set[str], limit: int = 3) -> str:
    shown = sorted(keys)[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more


def check_state_matches(
    reference: Mapping[str, torch.Tensor | torch.Size], state: Mapping[str, torch.Tensor], what: str
) -> None:
    """Raise unless ``state`` has exactly the keys and shapes of ``reference``."""
    missing = set(reference) - set(state)
    unexpected = set(state) - set(reference)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_describe(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_describe(unexpected)}")
        raise AdapterStateError(f"{what}: " + "; ".join(parts))
    for key, tensor in state.items():
        ref = reference[key]
        ref_shape = ref if isinstance(ref, torch.Size) else ref.shape
        if tuple(tensor.shape) != tuple(ref_shape):
            raise AdapterStateError(
                f"{what}: shape mismatch for {key!r}: got {tuple(tensor.shape)}, "
                f"expected {tuple(ref_shape)}"
            )


@torch.no_grad()
def load_state(params: Mapping[str, torch.nn.Parameter], state: Mapping[str, torch.Tensor], what: str) -> None:
    """Copy ``state`` into ``params`` after checking keys and shapes; nothing is written on error."""
    check_state_matches(params, state, what)
    for key, param in params.items():
        param.copy_(state[key].to(device=param.device, dtype=param.dtype))


def set_adapter_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    load_state(trainable_parameters(model), state, "adapter state does not match the model")


def state_nbytes(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def full_model_nbytes(model: torch.nn.Module) -> int:
    """Bytes one full-fine-tuning message of this model would carry (all base weights)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    trainable = {id(p) for p in trainable_parameters(model).values()}
    return sum(p.numel() * p.element_size() for p in base.parameters() if id(p) not in trainable)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in trainable_parameters(model).values())
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
