"""tiny-janus: config (understanding tower, VQ model), chat template, image tokens."""

from __future__ import annotations

from fedumm.models.tiny import resolve_model_path


def test_config_prompt_and_image_tokens(user_turn, image):
    from transformers import AutoConfig, AutoProcessor

    path = resolve_model_path("tiny-janus")
    config, processor = AutoConfig.from_pretrained(path), AutoProcessor.from_pretrained(path)
    tok = processor.tokenizer
    assert config.model_type == "janus"
    # 32x32 images as an 8x8 grid of 4-pixel patches, in both towers; a 128-code VQ tokenizer.
    assert (config.vision_config.num_image_tokens, config.vq_config.num_embeddings) == (64, 128)
    assert config.vq_config.num_patches == 8
    assert config.image_token_id == tok.convert_tokens_to_ids("<image_placeholder>")
    assert (tok.boi_token, tok.eoi_token) == ("<begin_of_image>", "<end_of_image>")
    prompt = processor.apply_chat_template(user_turn, add_generation_prompt=True)
    assert prompt.startswith("<|User|>: <image_placeholder>\nwhat color?") and prompt.endswith("<|Assistant|>:")
    ids = processor(text=prompt, images=[image], return_tensors="pt")["input_ids"]
    assert (ids == config.image_token_id).sum().item() == 64
