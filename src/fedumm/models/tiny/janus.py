"""tiny-janus: SigLIP understanding tower + MLP aligner, VQ image tokenizer and generation head,
Llama decoder; "<|User|>: ... <|Assistant|>:" chat template.

The VQ tokenizer is trained on synthetic scenes at build time (``fedumm.models.tiny.vq``), so
image tokens reconstruct the synthetic images; 32x32 images are 8x8 = 64 tokens (patches of 4
pixels) for both the understanding tower and the VQ model (Janus ties the two grids)."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, tiny_tokenizer
from fedumm.models.tiny.vq import train_vq

JANUS_CHAT_TEMPLATE = (  # "<|User|>: <image_placeholder>\nquestion\n\n<|Assistant|>:"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)

JANUS_TOKENS = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]

#: VQ training steps at build time (batches of 32 fresh scenes).
VQ_STEPS = 200


def build_tiny_janus(path: Path, image_size: int = 32, patch_size: int = 4, seed: int = 0) -> None:
    """Janus(-Pro) shape: SigLIP understanding tower + MLP aligner, VQ tokenizer and generation
    head (image generation path), Llama decoder; the VQ model trained on synthetic scenes."""
    import torch
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
        # Janus normalises to [-1, 1] for both towers (the VQ model is trained on that range).
        image_processor=JanusImageProcessorPil(
            size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
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
            num_embeddings=128,
            latent_channels=32,
            base_channels=32,  # GroupNorm(32)
            # log2(patch_size) downsamplings (one per level after the first): one code per patch.
            channel_multiplier=[1] * patch_size.bit_length(),
            num_res_blocks=1,
            projection_dim=64,
            image_token_embed_dim=64,
            num_hidden_layers=1,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(config)
    vq = model.model.vqmodel
    train_vq(
        lambda pixels: vq.quant_conv(vq.encoder(pixels)),
        lambda quantised: vq.decoder(vq.post_quant_conv(quantised)),
        vq.quantize.embedding,
        [p for n, p in vq.named_parameters()],
        steps=VQ_STEPS,
        image_size=image_size,
        seed=seed,
    )
    vq.eval()
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    # What Janus's generate(generation_mode="image") reads: keeps BOS and BOI in the unconditional prompt.
    generation.generation_kwargs = {"boi_token_id": tokenizer.convert_tokens_to_ids("<begin_of_image>")}
    model.save_pretrained(path)
    processor.save_pretrained(path)
