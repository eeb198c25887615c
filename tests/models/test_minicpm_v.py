"""MiniCPM-V through transformers' native classes: the torchvision-free processors, the family's
module groups and its FedMLLM LoRA preset."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from fedumm.adapters import apply_lora
from fedumm.config import AdapterConfig, ModelConfig
from fedumm.models.hf_vlm import last_attention_layer
from fedumm.models.minicpm_v import PROCESSORS, MiniCPMV46ImageProcessor
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path


def _text(layers: int, types: list[str] | None = None):
    return SimpleNamespace(num_hidden_layers=layers, layer_types=types)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_text(28), 27),  # Qwen2-7B (MiniCPM-V 2.6): FedMLLM's layers.27
        (_text(4), 3),
        (_text(8, (["linear_attention"] * 3 + ["full_attention"]) * 2), 7),  # Qwen3.5's pattern
        (_text(4, ["full_attention", "full_attention", "linear_attention", "linear_attention"]), 1),
    ],
)
def test_last_attention_layer(text, expected):
    assert last_attention_layer(text) == expected


def test_without_torchvision_the_images_only_processor_loads():
    from transformers import AutoProcessor

    path = resolve_model_path("tiny-minicpm-v")
    # The stock processor needs the (torchvision) video processor: AutoProcessor falls back to
    # the bare tokenizer.
    assert getattr(AutoProcessor.from_pretrained(path), "image_processor", None) is None
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=path, device="cpu"))
    backend.load()
    assert isinstance(backend.processor, MiniCPMV46ImageProcessor)
    assert set(PROCESSORS) == {"minicpmv4_6", "minicpmv4_7"}


def test_the_processor_saves_and_reloads_without_a_video_processor(tmp_path):
    processor = MiniCPMV46ImageProcessor.from_pretrained(resolve_model_path("tiny-minicpm-v"))
    processor.save_pretrained(tmp_path)
    again = MiniCPMV46ImageProcessor.from_pretrained(tmp_path)
    assert not list(tmp_path.glob("video_preprocessor*"))
    assert again.chat_template == processor.chat_template and again.image_token == "<|image_pad|>"
    assert again.image_processor.to_dict() == processor.image_processor.to_dict()


@pytest.mark.parametrize("name", ["tiny-minicpm-v", "tiny-minicpm-v4.7"])
def test_fedmllm_preset_wraps_the_last_attention_layers_q_proj_only(name):
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=resolve_model_path(name), device="cpu"))
    base = backend.load()
    # The tiny decoder is (full, linear, full): the last attention layer is 2.
    assert backend.lora_presets["fedmllm"] == r"model\.language_model\.layers\.2\.self_attn\.q_proj"
    model = apply_lora(base, AdapterConfig(r=16), backend.lora_target_regex(AdapterConfig(preset="fedmllm")))
    trained = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert {n.rsplit(".lora_", 1)[0] for n in trained} == {
        "base_model.model.model.language_model.layers.2.self_attn.q_proj"
    }
    # q_proj: 64 -> 4 heads x 16 x 2 (Qwen3.5's query carries its output gate) = 128; r = 16.
    assert sum(trained.values()) == 16 * 64 + 128 * 16


def test_attention_preset_skips_the_linear_attention_layer():
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=resolve_model_path("tiny-minicpm-v"), device="cpu"))
    base = backend.load()
    regex = re.compile(backend.lora_target_regex(AdapterConfig()))
    wrapped = sorted({n.split(".self_attn")[0] for n, _ in base.named_modules() if regex.fullmatch(n)})
    assert wrapped == ["model.language_model.layers.0", "model.language_model.layers.2"]
    groups = backend.module_groups
    assert groups["connector"] == r"model\.merger\..*"
    assert re.fullmatch(groups["vision"], "model.vision_tower.vit_merger.linear_1.weight")  # the tower's own merger
