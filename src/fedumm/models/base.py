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

from fedumm.config import ModelConfig


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        from fedumm.errors import ConfigError

        raise ConfigError(f"model.device: {spec!r} requested but no CUDA device is available")
    return device


class Backend(ABC):
    """One model family. Subclasses register with ``@register_backend(name)``."""

    name: ClassVar[str]
    #: Regex (peft ``target_modules``) for LoRA when the config gives none: the language side only,
    #: because q/k/v names also occur in vision towers.
    default_lora_targets: ClassVar[str]

    def __init__(self, config: ModelConfig):
        self.config = config
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

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
