"""The backend contract: everything model-family specific lives behind these methods.

A backend loads a frozen base model and its processor, turns samples (dicts with the VQAv2
columns) into training batches whose labels cover answer tokens only, computes the loss,
generates answers and scores fixed candidate answers (``score_choices``: the log-likelihood
of each candidate under teacher forcing, e.g. for a classifier's ROC-AUC). Training,
federation and evaluation code never branch on the family.

Images of a row: ``images`` (a list, for rows with several images) or else ``image`` (one
image, or None for a text-only row, which gets a black placeholder). A backend that takes one
image per prompt (``images_per_prompt == 1``) rejects a row with more, naming its family.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image

from fedumm.config import AdapterConfig, ModelConfig, TrainConfig
from fedumm.data.images import as_pil
from fedumm.errors import ConfigError
from fedumm.models.loading import cast_inputs
from fedumm.types import DTYPES, IGNORE_INDEX

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
    #: exactly one group (a family may add its own, e.g. Janus's generation-path "gen_embed",
    #: "gen_aligner", "gen_head" and "vq"; a group may match nothing, e.g. BLIP's "connector").
    #: Like lora_presets, read it from the instance; ``group_names`` lists the names a config may
    #: select before any checkpoint is read.
    module_groups: dict[str, str] = {}

    #: Text-to-image rows (task "t2i") train and evaluate: ``training_batch`` builds generation
    #: batches for them, and ``generate_images``, ``image_token_metrics`` and
    #: ``reconstruct_images`` exist (``fedumm.models.generation``).
    supports_generation: ClassVar[bool] = False

    #: Images one prompt may hold: 1 (BLIP, PaliGemma) or None (any number).
    images_per_prompt: int | None = 1

    def __init__(self, config: ModelConfig):
        self.config = config
        self.name_or_path = config.name_or_path or self.default_model
        self.device = resolve_device(config.device)
        self.model: torch.nn.Module | None = None
        self.processor: Any = None

    @classmethod
    def group_names(cls) -> tuple[str, ...]:
        """Module group names this backend may have (finetune.groups is checked against them)."""
        return tuple(cls.module_groups)

    @contextlib.contextmanager
    def training_session(self, seed: int, config: TrainConfig) -> Iterator[None]:
        """Wraps one local training run (``federation.train.train_local``); generation backends
        seed their classifier-free-guidance prompt dropout here."""
        yield

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

    @property
    def family_name(self) -> str:
        """How error messages name the model family (hf_vlm: its family table entry)."""
        return self.name

    @staticmethod
    def row_images(sample: dict) -> list:
        """A row's images as PIL images: ``images`` when it holds any, else ``[image]``; a text-only
        row (no image, e.g. under a missing-modality scenario) gets one black placeholder, the
        zero-filling baseline for a missing modality. Rows hold image references
        (``fedumm.data.images.ImageRef``); this is where they are decoded, so only a batch's
        images (and a small cache) are in memory at a time."""
        images = sample.get("images")
        if images:
            return [as_pil(image) for image in images]
        image = sample.get("image")
        return [as_pil(image) if image is not None else Image.new("RGB", _BLANK_SIZE)]

    def images_by_row(self, samples: Sequence[dict]) -> list[list]:
        """Each row's images, checked against ``images_per_prompt``."""
        rows = [self.row_images(s) for s in samples]
        limit = self.images_per_prompt
        if limit is not None:
            for i, images in enumerate(rows):
                if len(images) > limit:
                    raise ConfigError(
                        f"model: the {self.family_name} family takes {limit} image per prompt, but row "
                        f"{i} of the batch (question {samples[i].get('question')!r}) has {len(images)} "
                        "images; use a multi-image family (LLaVA, LLaVA-NeXT, Qwen2-VL, Idefics3, "
                        "SmolVLM, Janus) or rows with one image"
                    )
        return rows

    def images_of(self, samples: Sequence[dict]) -> list:
        """Every row's images in order, one flat list (checked as in ``images_by_row``)."""
        return [image for images in self.images_by_row(samples) for image in images]

    # -- scoring fixed answers -----------------------------------------------------------------

    def answer_logits(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits over the sequence ``batch["labels"]`` is laid on, position t predicting token
        t + 1 (decoder-only models: the input ids; BLIP: the decoder ids)."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return model(**inputs).logits

    @torch.no_grad()
    def score_choices(self, model: torch.nn.Module, samples: Sequence[dict], choices: Sequence[str]) -> torch.Tensor:
        """Log-likelihood of each candidate answer for each row: a float32 CPU tensor of shape
        ``(len(samples), len(choices))``, entry [i, j] = sum over the answer tokens of choice j
        (its end token included, as in training) of log p(token | image, question, earlier
        answer tokens), under teacher forcing on the training batch layout."""
        if not samples or not choices:
            raise ValueError("score_choices needs at least one sample and one choice")
        rows = [dict(s, multiple_choice_answer=c) for s in samples for c in choices]
        return self.score_answers(model, rows).view(len(samples), len(choices))

    @torch.no_grad()
    def score_answers(self, model: torch.nn.Module, samples: Sequence[dict]) -> torch.Tensor:
        """Log-likelihood of each row's own ``multiple_choice_answer`` (float32 CPU, one per row),
        scored as ``score_choices`` scores a choice."""
        if not samples:
            raise ValueError("score_answers needs at least one sample")
        batch = self.to_device(self.training_batch(list(samples)))
        labels = batch["labels"]
        logits = self.answer_logits(model, batch).float()
        log_probs = logits[:, :-1].log_softmax(dim=-1)
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        return (picked * supervised).sum(dim=1).cpu()

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def sample_losses(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's own loss, shape ``(rows,)``: the mean cross-entropy over that row's answer
        tokens (no label smoothing). DP-SGD needs it: ``loss`` averages over the batch's tokens,
        which weights a row's gradient by the other rows' answer lengths."""
        logits = self.answer_logits(model, batch).float()
        targets = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
        return per_token.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)

    def label_smoothing(self) -> float:
        """The label smoothing of ``loss`` (BLIP's decoder smooths by its config's value)."""
        return 0.0

    def segment_losses(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], sizes: Sequence[int]
    ) -> torch.Tensor:
        """The loss ``loss`` would give each segment of consecutive rows on its own, shape
        ``(len(sizes),)``: per segment, the mean cross-entropy over its answer tokens (vectorised
        clients, ``fedumm.federation.parallel``: one forward over several clients' batches)."""
        logits = self.answer_logits(model, batch).float()
        targets = batch["labels"][:, 1:]
        per_token = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2),
            targets,
            ignore_index=IGNORE_INDEX,
            reduction="none",
            label_smoothing=self.label_smoothing(),
        )
        supervised = (targets != IGNORE_INDEX).sum(dim=1)
        sums = torch.stack([part.sum() for part in per_token.split(list(sizes))])
        counts = torch.stack([part.sum() for part in supervised.split(list(sizes))])
        return sums / counts

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tensors to the model device; floating-point ones (pixel values) to ``model.dtype``."""
        return cast_inputs(batch, self.device, DTYPES[self.config.dtype])
