"""tiny-janus: SigLIP understanding tower + MLP aligner, VQ image tokenizer and generation head,
Llama decoder; "<|User|>: ... <|Assistant|>:" chat template."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer

JANUS_CHAT_TEMPLATE = (  # "<|User|>: <image_placeholder>\nquestion\n\n<|Assistant|>:"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)

JANUS_TOKENS = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]


def build_tiny_janus(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Janus(-Pro) shape: SigLIP understanding tower + MLP aligner, VQ tokenizer and generation
    head (image generation path), Llama decoder."""
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
    )

    tokenizer = tiny_tokenizer(
        JANUS_TOKENS,
        named={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>", "eoi_token": "<end_of_image>"},
    )
    num_image_tokens = (image_size // patch_size) ** 2
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        chat_template=JANUS_CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens,
    )
    config = JanusConfig(
        text_config=llama_text_config(len(tokenizer), tokenizer),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            mlp_ratio=2.0,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=64,
            depth=2,
            num_image_tokens=num_image_tokens,
        ),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=64,
            latent_channels=32,
            base_channels=32,  # GroupNorm(32)
            channel_multiplier=[1, 1],
            num_res_blocks=1,
            projection_dim=64,
            image_token_embed_dim=64,
            num_hidden_layers=1,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    save_model(path, JanusForConditionalGeneration, config, processor, seed=seed, tokenizer=tokenizer)
