"""tiny-minicpm-v: config, ChatML template, image tokens with and without slicing."""

from __future__ import annotations

import pytest
from PIL import Image

from fedumm.models.minicpm_v import PROCESSORS, MiniCPMV46ImageProcessor
from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.minicpm_v import MINICPM_TOKENS


@pytest.mark.parametrize(("name", "version"), [("tiny-minicpm-v", "4_6"), ("tiny-minicpm-v4.7", "4_7")])
def test_config_and_prompt(name, version, user_turn):
    from transformers import AutoConfig

    path = resolve_model_path(name)
    config = AutoConfig.from_pretrained(path)
    processor = PROCESSORS[f"minicpmv{version}"].from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == f"minicpmv{version}" and config.text_config.model_type == "qwen3_5_text"
    assert config.text_config.layer_types == ["full_attention", "linear_attention", "full_attention"]
    assert config.text_config.vocab_size == len(tok)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in MINICPM_TOKENS)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    assert type(processor.image_processor).__name__ == "MiniCPMV4_6ImageProcessorPil"
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\n<|image_pad|>\nwhat color?<|im_end|>\n<|im_start|>assistant\n"
    if version == "4_7":  # canvas M-RoPE's markers
        assert [config.image_start_id, config.slice_end_id, config.newline_id] == [
            tok.convert_tokens_to_ids(t) for t in ("<image>", "</slice>", "\n")
        ]


def _image_tokens(processor, image) -> tuple[list[str], int]:
    batch = processor(images=[image], text=["<|image_pad|>"], return_tensors="pt")
    tokens = processor.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    return tokens, int((batch["input_ids"] == processor.image_token_id).sum())


def test_a_small_image_is_one_overview_of_sixteen_tokens(image):
    processor = MiniCPMV46ImageProcessor.from_pretrained(resolve_model_path("tiny-minicpm-v"))
    tokens, count = _image_tokens(processor, image)
    # 32x32 upscaled to 64x64, patches of 4: 16x16 patches, merged 4x4 -> 16 tokens; no slices.
    assert count == 16
    assert tokens[:4] == ["<image_id>", "0", "</image_id>", "<image>"] and tokens[-1] == "</image>"
    assert "<slice>" not in tokens


def test_a_wide_image_is_cut_into_slices():
    processor = MiniCPMV46ImageProcessor.from_pretrained(resolve_model_path("tiny-minicpm-v"))
    tokens, count = _image_tokens(processor, Image.new("RGB", (128, 64), "blue"))
    # 128x64 is twice the 64x64 slice area: a 1x2 grid of 64x64 slices (16 tokens each), and an
    # overview of the same area, 45x90 rounded to multiples of 16 = 48x96 -> 12x24 patches -> 18.
    assert tokens.count("<slice>") == tokens.count("</slice>") == 2
    assert count == 18 + 2 * 16
    overview = tokens[tokens.index("<image>") + 1 : tokens.index("</image>")]
    assert len(overview) == 18
