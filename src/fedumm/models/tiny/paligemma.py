"""tiny-paligemma: SigLIP tower, linear projector, Gemma decoder; prefix-LM, no chat template."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer, vision_dims


def build_tiny_paligemma(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """PaliGemma shape: SigLIP tower, linear projector, Gemma decoder; prefix-LM, no chat template."""
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tokenizer = tiny_tokenizer()
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    # The processor adds PaliGemma's 1,152 <locXXXX>/<segXXX> tokens to the tokenizer.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = llama_text_config(len(tokenizer), tokenizer, head_dim=16, num_key_value_heads=1)
    text.pop("max_position_embeddings")
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**vision_dims(image_size, patch_size, hidden_size=32, projection_dim=64)),
        text_config=GemmaConfig(**text),
        image_token_index=tokenizer.image_token_id,
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    save_model(path, PaliGemmaForConditionalGeneration, config, processor, seed=seed, tokenizer=tokenizer)
