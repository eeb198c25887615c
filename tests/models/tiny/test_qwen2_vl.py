"""tiny-qwen2-vl and tiny-qwen2.5-vl: configs, ChatML template, merged image tokens."""

from __future__ import annotations

import pytest

from fedumm.models.processors import QwenVLImageTextProcessor
from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.qwen2_vl import QWEN_TOKENS


@pytest.mark.parametrize(("name", "model_type"), [("tiny-qwen2-vl", "qwen2_vl"), ("tiny-qwen2.5-vl", "qwen2_5_vl")])
def test_config_prompt_and_image_tokens(name, model_type, user_turn, image):
    from transformers import AutoConfig

    path = resolve_model_path(name)
    config = AutoConfig.from_pretrained(path)
    processor = QwenVLImageTextProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == model_type
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.text_config.vocab_size == len(tok)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in QWEN_TOKENS)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.eos_token == "<|im_end|>"
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>what color?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = processor(text=[prompt], images=[image], return_tensors="pt")
    # 32x32 in patches of 8: a 4x4 grid, merged 2x2 into 4 image tokens.
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    assert (batch["input_ids"] == processor.image_token_id).sum().item() == 4
