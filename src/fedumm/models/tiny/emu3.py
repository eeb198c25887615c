"""tiny-emu3: early fusion, encoder-free. Images are tokens of the decoder's own vocabulary
(``<|visual token NNNNNN|>``), made by a VQ tokenizer trained on synthetic scenes at build time
(``fedumm.models.tiny.vq``); no vision encoder. "USER: ... ASSISTANT:" chat template.

Emu3's processor downsamples by 8, so its images are 64x64 (the synthetic scenes need
``data.synthetic.image_size: 64``): an 8x8 grid of codes, each row closed by the end-of-line
token (72 image tokens). At 32 px, a 4x4 grid of 8-pixel codes could not hold a shape's outline
and colour reliably."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, tiny_tokenizer
from fedumm.models.tiny.llava import LLAVA_CHAT_TEMPLATE
from fedumm.models.tiny.vq import train_vq

#: Emu3's special tokens (the names its processor and vocabulary mapping read).
EMU3_TOKENS = ["<|image start|>", "<|image end|>", "<|image token|>", "<|extra_200|>", "<|extra_201|>", "*"]
CODEBOOK_SIZE = 128
#: VQ training at build time: steps of batches of fresh 64 px scenes (16 keeps the build near a minute).
VQ_STEPS = 200
VQ_BATCH = 16
_DOWNSAMPLE = 8  # fixed in Emu3Processor
#: Side of tiny-emu3's images: 8x8 codes.
IMAGE_SIZE = 64


def visual_token(code: int) -> str:
    return f"<|visual token {code:06d}|>"


def build_tiny_emu3(path: Path, image_size: int = IMAGE_SIZE, patch_size: int = _DOWNSAMPLE, seed: int = 0) -> None:
    """Emu3 shape: a Llama-like decoder over text and visual tokens, a VQ tokenizer (Emu3VQVAE,
    no temporal downsampling) trained on synthetic scenes."""
    import torch
    from transformers import Emu3Config, Emu3ForConditionalGeneration, Emu3ImageProcessor, Emu3Processor

    if patch_size != _DOWNSAMPLE:
        raise ValueError(f"tiny-emu3: Emu3's processor downsamples by {_DOWNSAMPLE}, got patch_size={patch_size}")
    tokenizer = tiny_tokenizer(
        EMU3_TOKENS + [visual_token(i) for i in range(CODEBOOK_SIZE)],
        named={
            "image_token": "<image>",
            "boi_token": "<|image start|>",
            "eoi_token": "<|image end|>",
            "image_wrapper_token": "<|image token|>",
            "eof_token": "<|extra_201|>",
        },
    )
    processor = Emu3Processor(
        image_processor=Emu3ImageProcessor(
            min_pixels=image_size * image_size,
            max_pixels=image_size * image_size,
            spatial_factor=_DOWNSAMPLE,
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
        ),
        tokenizer=tokenizer,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = Emu3Config(
        text_config=llama_text_config(len(tokenizer), tokenizer, attention_dropout=0.0),
        vq_config=dict(
            codebook_size=CODEBOOK_SIZE,
            embed_dim=8,
            latent_channels=8,  # Emu3's decoder stacks latents and codes: the same width
            base_channels=32,  # GroupNorm(32)
            channel_multiplier=[1] * _DOWNSAMPLE.bit_length(),  # log2(8) downsamplings
            num_res_blocks=1,
            attn_resolutions=[],
            temporal_downsample_factor=1,
            hidden_size=32,  # the middle block's attention runs over base_channels
            num_attention_heads=1,
        ),
        vocabulary_map=tokenizer.get_vocab(),
    )
    torch.manual_seed(seed)
    model = Emu3ForConditionalGeneration(config)
    vq = model.model.vqmodel

    def encode(pixels):
        hidden = vq.encoder(pixels.unsqueeze(1)).permute(0, 2, 1, 3, 4)  # (B, C, T=1, h, w)
        return vq.quant_conv(hidden).squeeze(2)

    def decode(quantised):
        quant = quantised.unsqueeze(2)
        post = vq.post_quant_conv(quant)
        return vq.decoder(post.permute(0, 2, 1, 3, 4), quant.permute(0, 2, 1, 3, 4))

    train_vq(
        encode,
        decode,
        vq.quantize.embedding,
        list(vq.parameters()),
        steps=VQ_STEPS,
        batch_size=VQ_BATCH,
        image_size=image_size,
        seed=seed,
    )
    vq.eval()
    generation = model.generation_config
    generation.pad_token_id, generation.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
