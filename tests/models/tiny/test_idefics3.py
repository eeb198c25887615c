"""tiny-idefics3 and tiny-smolvlm: configs, templates (BOS vs <|im_start|>), one global image."""

from __future__ import annotations

import pytest

from fedumm.models.tiny import resolve_model_path

#: name -> (model_type, prompt for one user turn, whether the tokenizer adds BOS)
CASES = {
    "tiny-idefics3": ("idefics3", "<s>User:<image>what color?<end_of_utterance>\nAssistant:", True),
    "tiny-smolvlm": ("smolvlm", "<|im_start|>User:<image>what color?<end_of_utterance>\nAssistant:", False),
}


@pytest.mark.parametrize("name", CASES)
def test_config_prompt_and_image_tokens(name, user_turn, image):
    from transformers import AutoConfig, AutoProcessor

    model_type, expected_prompt, adds_bos = CASES[name]
    path = resolve_model_path(name)
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == model_type and type(processor).__name__ == "Idefics3Processor"
    assert (config.scale_factor, config.vision_config.hidden_size, config.text_config.hidden_size) == (2, 32, 64)
    assert tok.eos_token == "<end_of_utterance>"
    assert (tok("red")["input_ids"][0] == tok.bos_token_id) == adds_bos
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    assert prompt == expected_prompt
    ids = processor(text=prompt, images=[image], return_tensors="pt")["input_ids"]
    # 4x4 patches, pixel-shuffled 2x2 into 4 tokens, no tiles.
    assert (ids == tok.image_token_id).sum().item() == 4
