"""tiny-idefics3 and tiny-smolvlm: SigLIP-style tower, pixel-shuffle connector, Llama decoder,
"User:<image>question<end_of_utterance>\\nAssistant:" template, one global image (no tiles).

Both use an Idefics3Processor: the stock SmolVLMProcessor requires a video processor, which needs
torchvision.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_tokenizer, vision_dims

IDEFICS3_CHAT_TEMPLATE = (  # "<s>User:<image>question<end_of_utterance>\nAssistant:"
    # Starts with BOS, as Idefics3-8B-Llama3's does ("<|begin_of_text|>"), whose tokenizer adds
    # BOS too: the backend must not add a second one.
    "{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

SMOLVLM_CHAT_TEMPLATE = "<|im_start|>" + IDEFICS3_CHAT_TEMPLATE.removeprefix("{{ bos_token }}")

IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]

_SCALE_FACTOR = 2  # pixel shuffle: 2x2 patch features -> one image token


def _build(
    path: Path,
    config_class,
    model_class,
    image_size: int,
    patch_size: int,
    seed: int,
    template: str,
    extra: Sequence[str] = (),
    add_bos: bool = False,
) -> None:
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer = tiny_tokenizer(IDEFICS3_TOKENS + list(extra), eos="<end_of_utterance>", add_bos=add_bos)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,  # one global image: 32x32 synthetic images need no tiles
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch_size) ** 2 // _SCALE_FACTOR**2,
        chat_template=template,
    )
    config = config_class(
        vision_config=vision_dims(image_size, patch_size, hidden_size=32),
        text_config=llama_text_config(len(tokenizer), tokenizer),
        scale_factor=_SCALE_FACTOR,
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    save_model(path, model_class, config, processor, seed=seed, tokenizer=tokenizer)


def build_tiny_idefics3(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Idefics3 shape: SigLIP-style tower, pixel-shuffle connector, Llama decoder; the tokenizer adds BOS."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    _build(
        path,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        image_size,
        patch_size,
        seed,
        IDEFICS3_CHAT_TEMPLATE,
        add_bos=True,
    )


def build_tiny_smolvlm(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """SmolVLM shape (Idefics3 layout, SmolLM decoder), prompts start with ``<|im_start|>``."""
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    _build(
        path,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        image_size,
        patch_size,
        seed,
        SMOLVLM_CHAT_TEMPLATE,
        extra=["<|im_start|>"],
    )
