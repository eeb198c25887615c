"""The parts the tiny families share: vocabulary, tokenizers, decoder and vision dimensions."""

from __future__ import annotations

from fedumm.models.tiny.common import (
    SPECIAL_TOKENS,
    llama_text_config,
    tiny_tokenizer,
    tiny_vocab,
    vision_dims,
)


def test_vocab_starts_with_the_special_tokens_and_has_no_gaps():
    vocab = tiny_vocab()
    assert list(vocab)[: len(SPECIAL_TOKENS)] == SPECIAL_TOKENS
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert {"red", "circle", "0", "100", "?"} <= set(vocab)


def test_default_tokenizer_is_word_level_and_lowercases():
    tok = tiny_tokenizer()
    assert len(tok) == len(tiny_vocab())
    assert tok.convert_ids_to_tokens(tok("What colour, Zebra?")["input_ids"]) == ["what", "colour", ",", "<unk>", "?"]
    assert (tok.pad_token, tok.bos_token, tok.eos_token, tok.image_token) == ("<pad>", "<s>", "</s>", "<image>")
    assert tok.padding_side == "right"


def test_extra_tokens_are_matched_whole_and_named_tokens_set():
    tok = tiny_tokenizer(["<|im_end|>"], eos="<|im_end|>", named={"image_token": "<image>", "boi_token": "<s>"})
    assert tok.convert_tokens_to_ids("<|im_end|>") == len(tiny_vocab())
    assert tok.convert_ids_to_tokens(tok("red<|im_end|>")["input_ids"]) == ["red", "<|im_end|>"]
    assert tok.eos_token == "<|im_end|>" and tok.boi_token == "<s>"


def test_add_bos_prepends_it():
    assert tiny_tokenizer(add_bos=True)("red")["input_ids"] == [tiny_vocab()["<s>"], tiny_vocab()["red"]]
    assert tiny_tokenizer()("red")["input_ids"] == [tiny_vocab()["red"]]


def test_llama_text_config_takes_ids_from_the_tokenizer_and_overrides():
    tok = tiny_tokenizer()
    config = llama_text_config(300, tok, num_key_value_heads=1)
    assert config["vocab_size"] == 300 and config["num_key_value_heads"] == 1 and config["hidden_size"] == 64
    assert (config["pad_token_id"], config["bos_token_id"], config["eos_token_id"]) == (0, 2, 3)


def test_vision_dims():
    assert vision_dims(32, 8, hidden_size=32, projection_dim=64) == dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=64,
    )
