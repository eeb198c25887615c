"""tiny-minicpm-v and tiny-minicpm-v4.7: MiniCPM-V 4.6 / 4.7 shape (transformers' native
``minicpmv4_6`` / ``minicpmv4_7``): a SigLIP-style NaViT tower with a window-attention merger
inside, the 2x2 MLP merger (the connector), a Qwen3.5 decoder mixing full- and linear-attention
layers (full, linear, full), ChatML template, image slicing by ``MiniCPMV4_6ImageProcessorPil``.

MiniCPM-V merges 4x4 patches into one image token (2x2 in the tower, 2x2 in the merger), so the
tiny processor upscales a 32x32 image to 64x64 (``scale_resolution``) in patches of 4 pixels:
16 image tokens, as many as tiny-llava's. An image larger than 64x64 is also cut into a grid
of slices with tokens of their own (up to ``max_slice_nums``). The tower is initialised with
std 0.2 (transformers' default 0.02 leaves random features of small coloured shapes nearly
identical, which no adapter can tell apart)."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer
from fedumm.models.tiny.qwen2_vl import IM_CHAT_TEMPLATE

#: MiniCPM-V's named special tokens -> the tiny tokenizer's strings.
NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "image_start_token": "<image>",
    "image_end_token": "</image>",
    "slice_start_token": "<slice>",
    "slice_end_token": "</slice>",
    "image_id_start_token": "<image_id>",
    "image_id_end_token": "</image_id>",
}

#: ChatML with MiniCPM-V's image placeholder (the processor expands it to the image's tokens).
CHAT_TEMPLATE = IM_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>\n")

#: "\n" is a token of its own: MiniCPM-V 4.7's canvas M-RoPE places the newline between slice rows.
MINICPM_TOKENS = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "\n", *NAMED_TOKENS.values()]


def _build(path: Path, version: str, image_size: int, patch_size: int, seed: int) -> None:
    """The tiny MiniCPM-V of ``version`` ("4_6" or "4_7"; 4.7 adds canvas M-RoPE, which needs
    the ids of its image/slice markers and the row separator in the config)."""
    import transformers
    from transformers import MiniCPMV4_6ImageProcessorPil

    from fedumm.models.minicpm_v import PROCESSORS

    tokenizer = tiny_tokenizer(MINICPM_TOKENS, eos="<|im_end|>", named=NAMED_TOKENS)
    patch, resolution = patch_size // 2, 2 * image_size
    image_processor = MiniCPMV4_6ImageProcessorPil(
        patch_size=patch, scale_resolution=resolution, max_slice_nums=4, use_image_id=True
    )
    processor = PROCESSORS[f"minicpmv{version}"](image_processor, tokenizer, chat_template=CHAT_TEMPLATE)
    rope = {"rope_type": "default", "rope_theta": 10000.0}
    if version == "4_7":  # head_dim 16 -> 8 rotary frequencies over (temporal, height, width)
        rope.update(mrope_section=[2, 3, 3], mrope_interleaved=True)
    text = llama_text_config(
        len(tokenizer),
        tokenizer,
        model_type="qwen3_5_text",
        num_key_value_heads=2,
        head_dim=16,
        num_hidden_layers=3,
        layer_types=["full_attention", "linear_attention", "full_attention"],
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        rope_parameters=rope,
    )
    vision = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        patch_size=patch,
        image_size=resolution,
        initializer_range=0.2,
    )
    ids = tokenizer.convert_tokens_to_ids
    markers = {}
    if version == "4_7":
        markers = dict(
            image_start_id=ids("<image>"),
            image_end_id=ids("</image>"),
            slice_start_id=ids("<slice>"),
            slice_end_id=ids("</slice>"),
            newline_id=ids("\n"),
        )
    config = getattr(transformers, f"MiniCPMV{version}Config")(
        text_config=text,
        vision_config=vision,
        insert_layer_id=0,  # the window merger after the first of the two tower layers
        image_size=resolution,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        **markers,
    )
    model_class = getattr(transformers, f"MiniCPMV{version}ForConditionalGeneration")
    save_model(path, model_class, config, processor, seed=seed, tokenizer=tokenizer)


def build_tiny_minicpm_v(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """MiniCPM-V 4.6 shape: NaViT tower + window merger, MLP merger, Qwen3.5 decoder."""
    _build(path, "4_6", image_size, patch_size, seed)


def build_tiny_minicpm_v4_7(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """MiniCPM-V 4.7 shape: as 4.6, with canvas M-RoPE (interleaved 3D rotary positions)."""
    _build(path, "4_7", image_size, patch_size, seed)
