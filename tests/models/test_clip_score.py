"""Tests for CLIPScore (fedumm.models.clip_score) with a tiny CLIP built and saved locally."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from fedumm.errors import ConfigError

pytest.importorskip("torchmetrics")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CLIP at hidden size 32 (random weights, word-level tokenizer) saved with save_pretrained."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from fedumm.models.tiny.common import tiny_tokenizer

    torch.manual_seed(0)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        # eos_token_id 2: CLIP's original pooling (the position of the largest token id), tokenizer-agnostic.
        text_config={**layers, "vocab_size": 400, "max_position_embeddings": 32, "eos_token_id": 2},
        vision_config={**layers, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    path = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tiny_tokenizer()).save_pretrained(path)
    return path


def _by_hand(path: Path, image: Image.Image, prompt: str) -> float:
    """max(100 * cos(E_image, E_text), 0) from CLIP's own forward (embeddings normalised here)."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
    a, b = out.image_embeds[0].double(), out.text_embeds[0].double()
    return max(100 * float(a @ b / (a.norm() * b.norm())), 0.0)


def test_clip_scores_equal_the_hand_computation(tiny_clip: Path) -> None:
    from fedumm.models.clip_score import ClipScorer

    # Prepare: six image/prompt pairs.
    images = [Image.new("RGB", (32 + 8 * i, 32), (40 * i, 200 - 30 * i, 90)) for i in range(6)]
    prompts = ["yes", "two blue circles", "a green triangle", "a red square", "three yellow squares", "a cat"]
    # Execute
    scores = ClipScorer(str(tiny_clip)).scores(images, prompts)
    expected = [_by_hand(tiny_clip, image, prompt) for image, prompt in zip(images, prompts)]
    # Assert: the same numbers, clamped at 0; the random tiny CLIP gives both signs.
    assert scores == pytest.approx(expected, abs=1e-3)
    assert any(s > 0 for s in scores) and any(s == 0 for s in scores)
    assert all(0 <= s <= 100 for s in scores)
    assert "torchvision" not in sys.modules


def test_clip_scores_check_lengths(tiny_clip: Path) -> None:
    from fedumm.models.clip_score import ClipScorer

    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        ClipScorer(str(tiny_clip)).scores([Image.new("RGB", (8, 8))] * 2, ["a"])


def test_unloadable_clip_names_the_key(tmp_path: Path) -> None:
    from fedumm.models.clip_score import ClipScorer

    (tmp_path / "not-clip").mkdir()
    with pytest.raises(ConfigError, match=r"^eval.clip_model: cannot load a CLIP checkpoint .*not-clip"):
        ClipScorer(str(tmp_path / "not-clip"))


def test_clip_model_key_defaults_off() -> None:
    from fedumm.config import load_config

    assert load_config(None, []).eval.clip_model is None
    assert load_config(None, ["eval.clip_model=/models/clip"]).eval.clip_model == "/models/clip"
