"""Text-to-image training shared by the generation-capable backends (Janus, Emu3): the task of a
batch, classifier-free-guidance prompt dropout, and teacher-forced image-token metrics.

Classifier-free guidance (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance"; for
autoregressive image tokens as in Janus, Chen et al. 2025, "Janus-Pro") trains one model both
conditionally and unconditionally: each training row's prompt is replaced by the
unconditional prompt with probability p (``train.cfg_dropout``, Janus's 0.1), and sampling
mixes the two next-token distributions, logits = uncond + s * (cond - uncond) (``eval.cfg_scale``).
The dropout draws come from a generator seeded with the local training seed when training
starts (``Backend.training_session``), so the rows a step drops are fixed by (seed, step);
outside training (evaluation, metrics) no prompt is dropped.

Teacher-forced metrics on held-out prompt/image pairs: with the true image tokens as context,
NLL = mean over image tokens of -log p(token | prompt, earlier tokens), accuracy = fraction
whose argmax is the true token. They move with training even while sampled images are poor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from fedumm.config import TrainConfig
from fedumm.data.images import as_pil
from fedumm.errors import DataError
from fedumm.types import IGNORE_INDEX

#: The ``task`` of a text-to-image row (the row contract of issue 13).
T2I = "t2i"
_UNDERSTANDING = "vqa"


def row_task(row: dict) -> str:
    """A row's task: its ``task`` column, understanding ("vqa") when absent."""
    return str(row.get("task") or _UNDERSTANDING)


def batch_task(rows: Sequence[dict]) -> str:
    """The one task of a batch; a batch mixing tasks is a ValueError naming two of them."""
    tasks = list(dict.fromkeys(row_task(r) for r in rows))
    if len(tasks) > 1:
        raise ValueError(
            f"a batch mixes tasks {tasks[0]!r} and {tasks[1]!r}; batches hold rows of one task (generation "
            "rows have task 't2i')"
        )
    return tasks[0] if tasks else _UNDERSTANDING


def target_image(row: dict):
    """A text-to-image row's target image (PIL); a row without one (or without a prompt) is a
    DataError naming the row."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        raise DataError(f"text-to-image row {row.get('metadata') or row!r:.120}: no 'prompt' text")
    images = row.get("images") or ([row["image"]] if row.get("image") is not None else [])
    if len(images) != 1:
        raise DataError(f"text-to-image row {prompt!r}: needs exactly one target image, has {len(images)}")
    return as_pil(images[0])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper (LoRA layers and modules_to_save copies sit
    inside it, so calling its modules runs the adapter)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class PromptDropout:
    """Which rows of each training batch get the unconditional prompt: Bernoulli(p) per row
    from a seeded generator; off (never drops) until ``start``."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None
        self.p = 0.0

    def start(self, seed: int, p: float) -> None:
        self.generator, self.p = torch.Generator().manual_seed(seed), p

    def stop(self) -> None:
        self.generator, self.p = None, 0.0

    def draw(self, rows: int) -> list[bool]:
        if self.generator is None or self.p == 0.0:
            return [False] * rows
        return (torch.rand(rows, generator=self.generator) < self.p).tolist()


class GenerationMixin:
    """Generation-side helpers for a ``Backend`` subclass: prompt dropout while training and the
    teacher-forced image-token metrics over ``training_batch`` + ``answer_logits``."""

    supports_generation = True
    #: Rows per forward pass in ``image_token_metrics``.
    metrics_batch_size = 16

    def _dropout(self) -> PromptDropout:
        if not hasattr(self, "_prompt_dropout"):
            self._prompt_dropout = PromptDropout()
        return self._prompt_dropout

    @contextlib.contextmanager
    def training_session(self, seed: int, config: TrainConfig) -> Iterator[None]:
        dropout = self._dropout()
        dropout.start(seed, config.cfg_dropout)
        try:
            yield
        finally:
            dropout.stop()

    def drop_prompts(self, rows: int) -> list[bool]:
        """Per row of a generation batch being built: whether its prompt becomes unconditional."""
        return self._dropout().draw(rows)

    @torch.no_grad()
    def image_token_metrics(self, model: torch.nn.Module, rows: Sequence[dict]) -> dict:
        """Teacher-forced NLL (nats per image token) and top-1 accuracy over ``rows``' image
        tokens; ``n`` = rows, ``tokens`` = image tokens scored."""
        if not rows:
            raise ValueError("image_token_metrics needs at least one row")
        was_training = model.training
        model.eval()
        nll, correct, tokens = 0.0, 0, 0
        try:
            for start in range(0, len(rows), self.metrics_batch_size):
                batch = self.to_device(self.training_batch(rows[start : start + self.metrics_batch_size]))
                logits = self.answer_logits(model, batch)[:, :-1].float()
                targets = batch["labels"][:, 1:]
                scored = targets != IGNORE_INDEX
                nll += torch.nn.functional.cross_entropy(logits[scored], targets[scored], reduction="sum").item()
                correct += (logits[scored].argmax(dim=-1) == targets[scored]).sum().item()
                tokens += int(scored.sum())
        finally:
            model.train(was_training)
        return {
            "image_token_nll": nll / tokens,
            "image_token_accuracy": correct / tokens,
            "n": len(rows),
            "tokens": tokens,
        }
