"""Built-in tiny models: real transformers architectures at hidden size 64, random weights.

They are created once in a cache folder with ``save_pretrained`` and then loaded like any
checkpoint through ``from_pretrained``, so the embedded default exercises the same loading
path as a real model. The processor (word-level tokenizer, *Pil image processor, chat
template) is made locally: nothing is downloaded.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from fedumm.errors import ConfigError

# Bump when the architecture or vocabulary changes so stale caches are not reused.
_TINY_VERSION = "1"

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

_WORDS = """
what which who where when why how many much is are was were do does did can could should
the a an this that these those there here it its of in on at to from with without and or not
color colour shape image picture photo object objects thing things left right top bottom
yes no red green blue yellow purple orange black white gray grey brown pink
circle circles square squares triangle triangles rectangle star
zero one two three four five six seven eight nine ten
man woman person people dog cat car bus train table chair room street water sky tree
large small big little size number count type kind side front back
user assistant question answer
""".split()

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


def tiny_vocab() -> dict[str, int]:
    tokens = SPECIAL_TOKENS + list(dict.fromkeys(_WORDS)) + [str(i) for i in range(101)]
    tokens += list("?.,:;!'\"-()/")
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def _tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), "isolated")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def build_tiny_llava(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """LLaVA-1.5 shape: CLIP vision tower -> 2-layer MLP connector -> Llama decoder."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _tiny_tokenizer()
    vocab = tiny_vocab()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    text_config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        initializer_range=0.2,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    vision_config = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_id=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=vocab["<pad>"],
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.generation_config.eos_token_id = vocab["</s>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)


# "name" or "org/name", each part starting with a letter, digit or underscore.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")

TINY_MODELS: dict[str, Callable[[Path], None]] = {"tiny-llava": build_tiny_llava}


def cache_root() -> Path:
    return Path(os.environ.get("FEDUMM_CACHE", Path.home() / ".cache" / "fedumm"))


def resolve_model_path(name_or_path: str) -> str:
    """Map a built-in tiny model name to its cached folder (building it once); pass others on."""
    builder = TINY_MODELS.get(name_or_path)
    if builder is None:
        path = Path(name_or_path).expanduser()
        if path.exists():
            return str(path)
        if _HUB_ID.fullmatch(name_or_path):
            return name_or_path
        raise ConfigError(f"model.name_or_path: no such folder {name_or_path!r}")
    target = cache_root() / "models" / f"{name_or_path}-v{_TINY_VERSION}"
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # Build in a sibling temp folder and rename, so a crash never leaves half a checkpoint.
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            builder(tmp)
            if (target / "config.json").is_file():  # another process won the race
                shutil.rmtree(tmp)
            else:
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return str(target)
