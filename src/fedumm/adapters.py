"""LoRA through peft, and the adapter-state contract every other module relies on.

* ``get_adapter_state`` returns detached CPU copies of the trainable tensors under canonical
  keys: no ``base_model.model.`` wrapper prefix and no adapter name, e.g.
  ``model.language_model.layers.0.self_attn.q_proj.lora_A.weight``.
* With per-task adapters (``adapter.per_task``) the model holds two peft adapters,
  ``understanding`` and ``generation``; their keys keep the adapter name
  (``...q_proj.lora_A.generation.weight``), so each adapter's tensors are told apart on the wire.
* ``set_adapter_state`` is strict: missing keys, unexpected keys and shape mismatches raise
  ``AdapterStateError`` naming them, and nothing is written unless every key matches.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fedumm.config import AdapterConfig
from fedumm.errors import AdapterStateError, ConfigError
from fedumm.lowrank import A_SUFFIX, B_SUFFIX, lora_modules, product, split_svd
from fedumm.types import State, check_state_matches, describe_keys

_WRAPPER_PREFIX = "base_model.model."

#: The peft adapter of a single-adapter run (its name never appears in canonical keys).
DEFAULT_ADAPTER = "default"
#: Per-task adapters (adapter.per_task, FedUMM's per-modality adapters): one for understanding
#: tasks, one for generation tasks, on the same frozen base.
UNDERSTANDING_ADAPTER, GENERATION_ADAPTER = "understanding", "generation"
TASK_ADAPTERS = (UNDERSTANDING_ADAPTER, GENERATION_ADAPTER)
#: The tasks whose rows train (and are evaluated with) the generation adapter.
GENERATION_TASKS = frozenset({"t2i"})


def adapter_of_task(task: str) -> str:
    """The per-task adapter a row of ``task`` trains: generation for text-to-image, else understanding."""
    return GENERATION_ADAPTER if task in GENERATION_TASKS else UNDERSTANDING_ADAPTER


def adapter_of_key(key: str) -> str | None:
    """The per-task adapter a canonical LoRA key belongs to (None: not a per-task adapter's key)."""
    for name in TASK_ADAPTERS:
        if f".lora_A.{name}." in key or f".lora_B.{name}." in key:
            return name
    return None


def matching_module_names(model: torch.nn.Module, targets: str) -> list[str]:
    """Module names ``targets`` matches the way peft matches a string ``target_modules``
    (re.fullmatch on the full module name)."""
    regex = re.compile(targets)
    return [name for name, _ in model.named_modules() if name and regex.fullmatch(name)]


def apply_lora(
    model: torch.nn.Module,
    config: AdapterConfig,
    targets: str | None,
    modules_to_save: list[str] | None = None,
    adapter_names: Sequence[str] = (DEFAULT_ADAPTER,),
):
    """Wrap a frozen model with LoRA adapters on the modules ``targets`` (a regex) matches.

    ``adapter_names``: one peft adapter per name, the same LoRA layout each (per-task adapters:
    ``TASK_ADAPTERS``); the first is active. Their A factors are drawn one after the other from
    torch's generator, so a seeded run gives every party the same initial adapters.

    ``modules_to_save`` (full module names) get a trainable copy that peft saves with the
    adapter, so fully trained groups such as the connector travel in the PEFT format too.
    ``targets=None`` adds no LoRA layer at all (a run that never trains LoRA): peft then
    wraps only ``modules_to_save``, and the result still saves and loads as a PEFT adapter.
    """
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415 (heavy: loads transformers)
    from peft.utils.constants import DUMMY_TARGET_MODULES  # noqa: PLC0415

    if targets is None and not modules_to_save:
        raise ValueError("apply_lora: no LoRA targets and no modules to save: nothing would train")
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=DUMMY_TARGET_MODULES if targets is None else targets,
        modules_to_save=modules_to_save or None,
    )
    try:
        wrapped = get_peft_model(model, lora, adapter_name=adapter_names[0])
        if len(adapter_names) > 1:
            for name in adapter_names[1:]:
                wrapped.add_adapter(name, copy.deepcopy(lora))
            wrapped.set_adapter(adapter_names[0])
        return wrapped
    except ValueError as exc:
        if targets is not None and not matching_module_names(model, targets):
            raise ConfigError(
                f"adapter.target_modules: {targets!r} matches no module of {type(model).__name__} "
                "(re.fullmatch on full module names such as 'model.language_model.layers.0.self_attn.q_proj')"
            ) from exc
        raise ConfigError(f"adapter.target_modules: peft cannot add LoRA on {targets!r}: {exc}") from exc


def activate_adapter(model: torch.nn.Module, name: str) -> None:
    """Route the forward pass through peft adapter ``name``, leaving every parameter's
    ``requires_grad`` as it was (peft's ``set_adapter`` would freeze the other adapters, and
    what trains is the round plan's business, ``ModelHost.configure``)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    model.set_adapter(name)
    for param in trainable:
        param.requires_grad_(True)


def canonical_key(name: str, adapter_name: str = DEFAULT_ADAPTER) -> str:
    """Parameter name inside a PeftModel -> the key used on the wire and in checkpoints:
    no wrapper prefix, no adapter name, and a modules_to_save copy named like its module."""
    name = name.removeprefix(_WRAPPER_PREFIX)
    name = name.replace(f".modules_to_save.{adapter_name}.", ".")
    return name.replace(f".{adapter_name}.", ".")


def is_lora_key(key: str) -> bool:
    return ".lora_" in key


def lora_base_weights(model: torch.nn.Module, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """The frozen weight under each LoRA layer whose B factor is in ``keys`` (canonical keys),
    keyed by that B key: float32 CPU copies, shaped (out_features, in_features)."""
    out = {}
    for key in keys:
        if ".lora_B." not in key:
            continue
        layer = model.get_submodule(_WRAPPER_PREFIX + key.split(".lora_B.")[0])
        out[key] = layer.get_base_layer().weight.detach().to("cpu", torch.float32).clone()
    return out


def group_layout(model: torch.nn.Module, pattern: str) -> tuple[list[str], list[str]]:
    """Where a module group's parameters (re.fullmatch of ``pattern`` on parameter names) live.

    Returns ``(modules, bare)``: ``modules`` are the outermost modules that hold parameters of
    their own and whose parameters, all the way down, belong to the group: peft's
    ``modules_to_save`` (a module holding any parameter outside the group is never handed to
    peft, or peft would copy and train all of it). ``bare`` are the group's parameters under
    none of those modules, e.g. LLaVA-NeXT's ``model.image_newline``, which sits directly on a
    module that also holds the vision tower and the language model: they train in place.
    """
    regex = re.compile(pattern)
    modules: list[str] = []
    covered: set[str] = set()
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{m}.") for m in modules):
            continue  # the root cannot be wrapped; a chosen module's children come with it
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        below = [n for n, _ in module.named_parameters(prefix=name)]
        if all(regex.fullmatch(n) for n in below):
            modules.append(name)
            covered.update(below)
    bare = [n for n, _ in model.named_parameters() if regex.fullmatch(n) and n not in covered]
    return modules, bare


def unit_parameters(
    model: torch.nn.Module, module_groups: Mapping[str, str]
) -> dict[str, dict[str, torch.nn.Parameter]]:
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


#: Parameters trained in place (no module of their own to hand peft as modules_to_save, e.g.
#: LLaVA-NeXT's image_newline) are saved next to the PEFT adapter in this file.
IN_PLACE_FILE = "fedumm_in_place.safetensors"


def lora_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """peft's LoRA layers by canonical module name (``model.language_model.layers.0.self_attn.q_proj``)."""
    return {
        name.removeprefix(_WRAPPER_PREFIX): module
        for name, module in model.named_modules()
        if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict) and hasattr(module, "get_base_layer")
    }


def merged_factors(delta: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor]) -> tuple[State, int]:
    """LoRA factors of ``delta[m] + B_m A_m`` for every module m of ``current`` (canonical factor
    keys), exact: the SVD U S Vᵀ kept at the largest numerical rank over the modules (singular
    values above max(S) x max(shape) x float32 eps), B = U S^½, A = S^½ Vᵀ. Returns (factors, rank)."""
    merged: dict[str, torch.Tensor] = {}
    for module in lora_modules(current):
        total = product(current, module)
        merged[module] = total + delta[module].float() if module in delta else total
    decompositions = {m: torch.linalg.svd(t, full_matrices=False) for m, t in merged.items()}
    eps = torch.finfo(torch.float32).eps
    rank = 1
    for module, (_, s, _) in decompositions.items():
        if s.numel() and float(s[0]) > 0:
            rank = max(rank, int((s > s[0] * max(merged[module].shape) * eps).sum()))
    factors: State = {}
    for module, total in merged.items():
        b, a = split_svd(total, rank)
        factors[module + A_SUFFIX], factors[module + B_SUFFIX] = a, b
    return factors, rank


def save_adapter(
    model: torch.nn.Module,
    path: str,
    in_place: Mapping[str, torch.Tensor],
    factors: tuple[Mapping[str, torch.Tensor], int] | None = None,
) -> None:
    """Write the PEFT adapter folder (LoRA and modules_to_save) and, when there are any, the
    in-place trained parameters under their canonical keys (``IN_PLACE_FILE``).

    ``save_embedding_layers=False``: peft's "auto" opens the base checkpoint's config.json to
    find out whether the vocabulary was resized, and warns when that folder is gone (e.g. a
    cache folder removed after loading). fedumm never resizes the vocabulary, and a trained
    embedding is a modules_to_save copy that peft saves anyway."""

    model.save_pretrained(path, save_embedding_layers=False)
    if factors is not None:
        _replace_lora(model, path, *factors)
    if in_place:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in in_place.items()}, str(Path(path) / IN_PLACE_FILE))


def _replace_lora(model: torch.nn.Module, path: str, factors: Mapping[str, torch.Tensor], rank: int) -> None:
    """Rewrite a saved PEFT folder with other LoRA factors of rank ``rank`` (the scale alpha / r
    kept: lora_alpha becomes alpha x rank / r); the other saved tensors stay."""
    folder = Path(path)
    weights = folder / "adapter_model.safetensors"
    saved = load_file(str(weights))
    for key in [k for k in saved if is_lora_key(k)]:
        del saved[key]
    for key, tensor in factors.items():
        saved[_WRAPPER_PREFIX + key] = tensor.detach().to("cpu", torch.float32).contiguous()
    config = copy.deepcopy(model.peft_config["default"])
    config.lora_alpha = config.lora_alpha * rank / config.r
    config.r = rank
    config.save_pretrained(str(folder))
    save_file(saved, str(weights), metadata={"format": "pt"})


def load_adapter(base: torch.nn.Module, path: str):
    """``PeftModel.from_pretrained(base, path)`` plus the in-place parameters of ``IN_PLACE_FILE``
    (strict: a key the model lacks, or a shape mismatch, is an error and nothing is written).
    A per-task folder (peft saves each named adapter in its own subfolder, ``<path>/understanding``
    and ``<path>/generation``) loads both adapters, understanding active."""
    from peft import PeftModel  # noqa: PLC0415 (heavy: loads transformers)

    folder = Path(path)
    if not (folder / "adapter_config.json").is_file() and all(
        (folder / name / "adapter_config.json").is_file() for name in TASK_ADAPTERS
    ):
        model = PeftModel.from_pretrained(base, str(folder / TASK_ADAPTERS[0]), adapter_name=TASK_ADAPTERS[0])
        for name in TASK_ADAPTERS[1:]:
            model.load_adapter(str(folder / name), adapter_name=name)
        model.set_adapter(TASK_ADAPTERS[0])
        return model
    model = PeftModel.from_pretrained(base, path)
    extra = Path(path) / IN_PLACE_FILE
    if extra.is_file():
        state = load_file(str(extra))
        params = {canonical_key(n): p for n, p in model.named_parameters() if ".original_module." not in n}
        unknown = set(state) - set(params)
        if unknown:
            raise AdapterStateError(f"{extra}: {len(unknown)} key(s) the model lacks: {describe_keys(unknown)}")
        load_state({k: params[k] for k in state}, state, f"{extra} does not match the model")
    return model
