"""Processors fedumm builds where the stock one needs torchvision (Qwen2-VL, SmolVLM), and the
per-family tables of the generic backend."""

from __future__ import annotations

import json
import shutil

import pytest

from fedumm.config import AdapterConfig, ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.models.hf_vlm import FAMILIES
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path


def test_stock_qwen2_vl_processor_needs_torchvision_here():
    """Documents why QwenVLImageTextProcessor exists; skip where torchvision is installed."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the stock processor can load")
    from transformers import AutoProcessor

    with pytest.raises(ImportError, match="Torchvision"):
        AutoProcessor.from_pretrained(resolve_model_path("tiny-qwen2-vl"))


def test_qwen_processor_round_trips(tmp_path):
    from fedumm.models.processors import QwenVLImageTextProcessor

    processor = QwenVLImageTextProcessor.from_pretrained(resolve_model_path("tiny-qwen2-vl"))
    processor.save_pretrained(tmp_path)
    again = QwenVLImageTextProcessor.from_pretrained(str(tmp_path))
    assert again.chat_template == processor.chat_template
    samples = make_synthetic_vqa(2, seed=0)
    prompt = again.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color?"}]}],
        add_generation_prompt=True,
    )
    assert prompt.endswith("<|im_start|>assistant\n") and prompt.count(again.image_token) == 1
    out = again(images=[s["image"] for s in samples], text=[prompt, prompt], padding=True)
    assert (out["input_ids"] == again.image_token_id).sum(dim=1).tolist() == [4, 4]
    with pytest.raises(ValueError, match="more images than image tokens"):
        again(images=[samples[0]["image"]], text=["no image token"])


def test_smolvlm_checkpoint_with_stock_processor_falls_back_to_idefics3(tmp_path):
    """A SmolVLM folder as published (SmolVLMProcessor, which needs a video processor) loads
    with the Idefics3 processor built from its image processor, tokenizer and template."""
    from transformers import AutoTokenizer, SmolVLMImageProcessorPil

    source = resolve_model_path("tiny-smolvlm")
    folder = tmp_path / "smolvlm"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "generation_config.json", "chat_template.jinja"):
        shutil.copy(f"{source}/{name}", folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    SmolVLMImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": 32}, max_image_size={"longest_edge": 32}
    ).save_pretrained(folder)
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": "SmolVLMProcessor", "image_seq_len": 4})
    )

    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=str(folder), device="cpu"))
    model = backend.load()
    assert type(backend.processor).__name__ in ("Idefics3Processor", "SmolVLMProcessor")
    assert backend.processor.image_seq_len == 4
    samples = make_synthetic_vqa(2, seed=0)
    batch = backend.training_batch(samples)
    assert (batch["input_ids"] == model.config.image_token_id).sum(dim=1).tolist() == [4, 4]
    assert len(backend.predict(model, samples)) == 2


@pytest.mark.parametrize(
    ("name", "anchor"),
    [
        ("tiny-llava", "language_model"),
        ("tiny-llava-next", "language_model"),
        ("tiny-qwen2-vl", "language_model"),
        ("tiny-idefics3", "text_model"),
        ("tiny-smolvlm", "text_model"),
        ("tiny-paligemma", "language_model"),
    ],
)
def test_presets_follow_the_checkpoint_family_before_load(name, anchor):
    backend = get_backend("hf_vlm")(ModelConfig(name_or_path=resolve_model_path(name), device="cpu"))
    assert backend.lora_target_regex(AdapterConfig()) == rf".*{anchor}.*\.(q_proj|k_proj|v_proj)"
    assert backend.lora_target_regex(AdapterConfig(preset="all_linear")).startswith(f".*{anchor}.*")
    assert set(backend.module_groups) == {"vision", "connector", "language"}


def test_janus_backend_rejects_other_families_and_has_generation_groups(tiny_llava_path):
    backend = get_backend("janus")(ModelConfig(backend="janus", name_or_path=tiny_llava_path, device="cpu"))
    with pytest.raises(ConfigError, match="backend janus loads janus checkpoints, got model_type 'llava'"):
        backend.load()
    assert set(FAMILIES["janus"].module_groups()) == {
        "vision",
        "connector",
        "language",
        "gen_embed",
        "gen_aligner",
        "gen_head",
        "vq",
    }
