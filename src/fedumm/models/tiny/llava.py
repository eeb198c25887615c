"""tiny-llava (LLaVA-1.5) and tiny-llava-next (LLaVA-NeXT): CLIP tower, MLP connector, Llama decoder,
"USER: ... ASSISTANT:" chat template."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer, vision_dims

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: Processor arguments both builders share; CLIP's CLS token is dropped by the "default" strategy.
_PROCESSOR_ARGS = dict(
    vision_feature_select_strategy="default", num_additional_image_tokens=1, chat_template=LLAVA_CHAT_TEMPLATE
)
_FEATURES = dict(vision_feature_select_strategy="default", vision_feature_layer=-1)


def build_tiny_llava(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """LLaVA-1.5 shape: CLIP vision tower -> 2-layer MLP connector -> Llama decoder."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = tiny_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, **_PROCESSOR_ARGS
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**vision_dims(image_size, patch_size)),
        text_config=LlamaConfig(**llama_text_config(len(tokenizer), tokenizer)),
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **_FEATURES,
    )
    save_model(path, LlavaForConditionalGeneration, config, processor, seed=seed, tokenizer=tokenizer)


def build_tiny_llava_next(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """LLaVA-NeXT (1.6) shape: anyres tiles + base image, CLIP tower, MLP, image_newline, Llama."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = tiny_tokenizer()
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size, **_PROCESSOR_ARGS
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**vision_dims(image_size, patch_size)),
        text_config=llama_text_config(len(tokenizer), tokenizer),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch_size) ** 2,
        **_FEATURES,
    )
    save_model(path, LlavaNextForConditionalGeneration, config, processor, seed=seed, tokenizer=tokenizer)
