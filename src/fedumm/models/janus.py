"""Janus / Janus-Pro (DeepSeek) for understanding: ``JanusForConditionalGeneration`` with its
``JanusProcessor``.

Janus is a unified model: a SigLIP understanding tower feeds an MLP aligner into a Llama
decoder, and a separate VQ tokenizer with generation embeddings and head produces images. For
VQA only the understanding path runs; the generation modules form their own parameter group
("generation") besides "vision", "connector" (the aligner) and "language". Prompting (the
processor's chat template: "<|User|>: <image_placeholder>\\n{question}\\n\\n<|Assistant|>:"),
answer supervision and decoding are those of the generic backend (family "janus" in
``hf_vlm.FAMILIES``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from fedumm.models.hf_vlm import FAMILIES, HFVisionLanguageBackend
from fedumm.models.registry import register_backend


@contextlib.contextmanager
def _quiet_generation_logs() -> Iterator[None]:
    """Janus.generate hands a filled-in generation config back to GenerationMixin.generate,
    which then warns on every call that max_length and max_new_tokens are both set."""
    from transformers.utils import logging

    logger = logging.get_logger("transformers.generation.utils")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@register_backend("janus")
class JanusBackend(HFVisionLanguageBackend):
    default_model = "tiny-janus"
    lora_presets = FAMILIES["janus"].lora_presets()
    module_groups = FAMILIES["janus"].module_groups()
    model_class_name = "JanusForConditionalGeneration"
    model_types = ("janus",)

    @torch.no_grad()
    def predict(self, model: torch.nn.Module, samples: Sequence[dict]) -> list[str]:
        with _quiet_generation_logs():
            return super().predict(model, samples)
