"""CLIPScore of generated images against their prompts, through torchmetrics, with a CLIP checkpoint
named by ``eval.clip_model`` (a local folder saved with ``save_pretrained``, or a hub name).

Hessel et al. (2021), "CLIPScore: A Reference-free Evaluation Metric for Image Captioning",
EMNLP: CLIP-S(image, text) = w * max(cos(E_image, E_text), 0) with CLIP's image and text
embeddings; torchmetrics (``torchmetrics.multimodal.CLIPScore``) uses w = 100, so a score lies
in [0, 100]. Each image is scored on its own (the metric is updated with one pair, computed and
reset), so the per-image clamp at 0 is the paper's; the summary is the mean of the per-image
scores (torchmetrics' own corpus value clamps the mean instead, which differs only when some
cosine is negative).

Two adaptations keep torchmetrics working here, neither changing the formula:

- torchmetrics loads a checkpoint itself only under a few hub names, so the model and processor
  are loaded here (``CLIPModel`` / ``CLIPProcessor.from_pretrained``) and handed over as the
  callable it also accepts;
- torchmetrics 1.9 expects ``get_image_features`` / ``get_text_features`` to return the
  embedding tensor, while transformers 5 returns a model output whose ``pooler_output`` holds
  the projected embedding: ``_FeatureTensors`` returns that tensor.

Without torchvision, transformers' CLIP processor falls back to its PIL backend, which is what
runs here; nothing on this path imports torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedumm.errors import ConfigError

__all__ = ["ClipScorer"]


class _FeatureTensors(torch.nn.Module):
    """A CLIP model whose feature methods return the projected embedding tensors (see the module)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


class ClipScorer:
    """CLIPScore (torchmetrics) with the CLIP checkpoint at ``path`` (``eval.clip_model``).

    Raises:
        ConfigError: naming eval.clip_model, if the checkpoint cannot be loaded as CLIP.
    """

    def __init__(self, path: str, device: str = "cpu") -> None:
        from torchmetrics.multimodal import CLIPScore
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(path).eval().to(device)
            processor = CLIPProcessor.from_pretrained(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"eval.clip_model: cannot load a CLIP checkpoint (CLIPModel and CLIPProcessor) from {path!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        wrapped = _FeatureTensors(model)
        self.path = path
        self.metric = CLIPScore(model_name_or_path=lambda: (wrapped, processor))

    @torch.no_grad()
    def scores(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> list[float]:
        """The CLIPScore of each image against its prompt, in [0, 100].

        Raises:
            ValueError: if the lengths differ.
        """
        if len(images) != len(prompts):
            raise ValueError(f"clip scores: {len(images)} images but {len(prompts)} prompts")
        out = []
        for image, prompt in zip(images, prompts):
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
            self.metric.update([pixels], [prompt])
            out.append(float(self.metric.compute()))
            self.metric.reset()
        return out
