"""tiny-blip-vqa: BERT-style tokenizer ([CLS] ... [SEP], [DEC] BOS) and config."""

from __future__ import annotations

from fedumm.models.tiny import resolve_model_path


def test_tokenizer_and_config():
    from transformers import AutoConfig, AutoProcessor

    path = resolve_model_path("tiny-blip-vqa")
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == "blip"
    assert tok.convert_ids_to_tokens(tok("What colour?")["input_ids"]) == ["[CLS]", "what", "colour", "?", "[SEP]"]
    assert (tok.bos_token, tok.pad_token_id) == ("[DEC]", 0)
    assert config.text_config.vocab_size == len(tok)
    assert (config.text_config.bos_token_id, config.text_config.eos_token_id) == (tok.bos_token_id, tok.sep_token_id)
    assert config.vision_config.initializer_range == 0.02
    assert "token_type_ids" not in tok("red")
