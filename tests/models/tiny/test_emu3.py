"""tiny-emu3: visual tokens in the vocabulary, the image header, no vision tower."""

from __future__ import annotations

from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.emu3 import CODEBOOK_SIZE, visual_token


def test_config_vocabulary_and_image_tokens(user_turn, image):
    from transformers import AutoConfig, AutoProcessor

    path = resolve_model_path("tiny-emu3")
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == "emu3" and config.vq_config.codebook_size == CODEBOOK_SIZE
    vocab = tok.get_vocab()
    assert all(visual_token(i) in vocab for i in range(CODEBOOK_SIZE))
    assert config.vocabulary_map[visual_token(5)] == vocab[visual_token(5)]
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    ids = processor(text=[prompt], images=[image], return_tensors="pt")["input_ids"][0]
    tokens = tok.convert_ids_to_tokens(ids)
    # The 32x32 image resized to tiny-emu3's 64x64 and downsampled by 8: "8*8", then 8 rows of
    # 8 codes + end-of-line = 72 placeholders.
    start = tokens.index("<|image start|>")
    assert tokens[start : start + 5] == ["<|image start|>", "8", "*", "8", "<|image token|>"]
    assert tokens.count("<image>") == 72 and tokens[0] == "<s>"
