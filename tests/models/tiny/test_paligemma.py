"""tiny-paligemma: Gemma decoder config, no chat template, PaliGemma's location tokens."""

from __future__ import annotations

from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.common import tiny_vocab


def test_config_and_processor():
    from transformers import AutoConfig, AutoProcessor

    path = resolve_model_path("tiny-paligemma")
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == "paligemma" and config.text_config.model_type == "gemma"
    assert (config.text_config.head_dim, config.text_config.num_key_value_heads) == (16, 1)
    assert processor.chat_template is None
    assert processor.image_seq_length == 16
    # The processor added 1,024 <locXXXX> and 128 <segXXX> tokens to the tiny vocabulary.
    assert len(tok) == len(tiny_vocab()) + 1152 == config.text_config.vocab_size
    assert tok.convert_tokens_to_ids("<loc1023>") != tok.unk_token_id
