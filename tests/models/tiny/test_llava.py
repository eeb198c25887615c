"""tiny-llava and tiny-llava-next: configs, chat template, image tokens, seeded weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.llava import build_tiny_llava


def _load(name):
    from transformers import AutoConfig, AutoProcessor

    path = resolve_model_path(name)
    return AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)


#: name -> (model_type, image tokens for one 32x32 image: 4x4 patches, CLS dropped; LLaVA-NeXT adds
#: one 32x32 tile and an image_newline per row of it)
CASES = {"tiny-llava": ("llava", 16), "tiny-llava-next": ("llava_next", 16 + 16 + 4)}


@pytest.mark.parametrize("name", CASES)
def test_config_prompt_and_image_tokens(name, user_turn, image):
    model_type, image_tokens = CASES[name]
    config, processor = _load(name)
    tok = processor.tokenizer
    assert config.model_type == model_type
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers) == (64, 2)
    assert config.text_config.vocab_size == len(tok)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (32, 8)
    assert config.image_token_id == tok.image_token_id
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    assert prompt == "USER: <image>\nwhat color? ASSISTANT:"
    ids = processor(text=prompt, images=[image], return_tensors="pt")["input_ids"]
    assert (ids == tok.image_token_id).sum().item() == image_tokens


def _weights_digest(path: Path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_the_seed_decides_the_weights(tmp_path):
    folders = [tmp_path / name for name in ("a", "b", "c")]
    for folder, seed in zip(folders, (0, 0, 1), strict=True):
        build_tiny_llava(folder, seed=seed)
    digests = [_weights_digest(folder) for folder in folders]
    assert digests[0] == digests[1] != digests[2]
    assert digests[0] == _weights_digest(Path(resolve_model_path("tiny-llava")))
