"""tiny-qwen2-vl and tiny-qwen2.5-vl: ViT over 2x2-merged patches with M-RoPE, Qwen2 decoder, ChatML.

The stock Qwen2VLProcessor cannot be built without torchvision (it requires a video processor);
the folder holds the tokenizer, the Qwen2VLImageProcessorPil config and the chat template, which
fedumm's QwenVLImageTextProcessor loads.
"""

from __future__ import annotations

from pathlib import Path

from fedumm.models.processors import QwenVLImageTextProcessor
from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer

IM_CHAT_TEMPLATE = (  # ChatML, as Qwen2-VL uses it
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

QWEN_TOKENS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<|endoftext|>",
]


def _build(path: Path, config_class, model_class, vision: dict, image_size: int, patch_size: int, seed: int) -> None:
    """Tokenizer, image processor, decoder and special ids both Qwen generations share; ``vision``
    is the family's vision config."""
    from transformers import Qwen2VLImageProcessorPil

    tokenizer = tiny_tokenizer(QWEN_TOKENS, eos="<|im_end|>", named={"image_token": "<|image_pad|>"})
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size},
        patch_size=patch_size,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = QwenVLImageTextProcessor(image_processor, tokenizer, IM_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    text = llama_text_config(
        len(tokenizer),
        tokenizer,
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    config = config_class(
        text_config=text,
        vision_config=dict(patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2, **vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    save_model(path, model_class, config, processor, seed=seed, tokenizer=tokenizer)


def build_tiny_qwen2_vl(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Qwen2-VL shape: ViT over 2x2-merged patches with M-RoPE, Qwen2 decoder."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2)
    _build(path, Qwen2VLConfig, Qwen2VLForConditionalGeneration, vision, image_size, patch_size, seed)


def build_tiny_qwen2_5_vl(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Qwen2.5-VL shape: windowed-attention ViT (SwiGLU, RMSNorm), merger, Qwen2 decoder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        out_hidden_size=64,
        window_size=2 * patch_size * 2,
        fullatt_block_indexes=[1],
    )
    _build(path, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, vision, image_size, patch_size, seed)
