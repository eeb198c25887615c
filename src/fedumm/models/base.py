"""The backend contract: everything model-family specific lives behind these methods.

A backend loads a frozen base model and its processor, turns samples (dicts with the VQAv2
columns) into training batches whose labels cover answer tokens only, computes the loss and
generates answers. Training, federation and evaluation code never branch on the family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from fedumm.config import AdapterConfig, ModelConfig
from fedumm.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


_BLANK_SIZE = (32, 32)  # processors resize it like any other image


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {spec!r} requested but no CUDA device is available")
    return device


class Backend(ABC):
    """One model family. Subclasses register with ``@register_backend(name)``."""

    name: ClassVar[str]
    #: LoRA presets: name -> regex (peft ``target_modules``, matched against full module names).
    #: Anchored on the language side, because q/k/v names also occur in vision towers.
    #: A class attribute, or a property where it depends on the checkpoint (hf_vlm: read from
    #: its config.json on first use), so always read it from the backend instance.
    lora_presets: dict[str, str]
    default_lora_preset: ClassVar[str] = "attention"
    #: Built-in tiny model loaded when model.name_or_path is null.
    default_model: ClassVar[str]
    #: Parameter groups of the base model: name -> regex over parameter names (re.fullmatch).
    #: The standard names are "vision", "connector" and "language"; each parameter falls in
    #: exactly one group (a family may add one, e.g. Janus's "generation"; a group may match
    #: nothing, e.g. BLIP's "connector"). Like lora_presets, read it from the instance.
    module_groups: dict[str, str] = {}

    def __init__(self, config: ModelConfig):
        self.config = config
        self.name_or_path = config.name_or_path or self.default_model
        self.device = resolve_device(config.device)
        self.model: torch.nn.Module | None = None
        self.processor: Any = None

    @abstractmethod
    def load(self) -> torch.nn.Module:
        """Load the frozen base model (every parameter requires_grad=False) and the processor."""

    @abstractmethod
    def training_batch(self, samples: Sequence[dict]) -> dict[str, torch.Tensor]:
        """Model inputs plus ``labels`` (-100 everywhere except the answer tokens)."""

    @abstractmethod
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        """Greedy-decoded answers, one per sample."""

    def lora_target_regex(self, adapter: AdapterConfig) -> str:
        """adapter.target_modules if given, else the named (or default) preset's regex."""
        if adapter.target_modules:
            return adapter.target_modules
        preset = adapter.preset or self.default_lora_preset
        try:
            return self.lora_presets[preset]
        except KeyError:
            raise ConfigError(
                f"adapter.preset: unknown preset {preset!r} for backend {self.name}; "
                f"available: {', '.join(sorted(self.lora_presets))}"
            ) from None

    @staticmethod
    def images_of(samples: Sequence[dict]) -> list:
        """Each sample's image; a text-only sample (image None, e.g. under a missing-modality
        scenario) gets a black placeholder, the zero-filling baseline for a missing modality,
        so every family's processor sees one image per prompt."""
        from PIL import Image

        return [s["image"] if s.get("image") is not None else Image.new("RGB", _BLANK_SIZE) for s in samples]

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors to the model device; floating-point ones (pixel values) to ``model.dtype``."""
        from fedumm.models.loading import cast_inputs

        return cast_inputs(batch, self.device, DTYPES[self.config.dtype])
