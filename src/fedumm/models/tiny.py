"""Built-in tiny models: real transformers architectures at hidden size 64, random weights.

They are created once in a cache folder with ``save_pretrained`` and then loaded like any
checkpoint through ``from_pretrained``, so the embedded default exercises the same loading
path as a real model. The processor (word-level tokenizer, *Pil image processor, chat
template) is made locally: nothing is downloaded.

``TINY_MODELS``: tiny-llava (the default), tiny-llava-next, tiny-qwen2-vl, tiny-qwen2.5-vl,
tiny-idefics3, tiny-smolvlm, tiny-paligemma (backend hf_vlm), tiny-janus (janus) and
tiny-blip-vqa (blip_vqa). Their vision towers see 32x32 images (the synthetic data's size)
as 4x4 patches of 8 pixels. Where the stock processor needs torchvision (Qwen2-VL and
Qwen2.5-VL; SmolVLM), the folder holds processor parts fedumm can load without it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from fedumm.errors import ConfigError

# Bump when the architecture or vocabulary changes so stale caches are not reused.
_TINY_VERSION = "2"  # 2: tiny-idefics3 adds BOS and its template starts with it

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


def _tiny_tokenizer(
    extra_tokens: Sequence[str] = (),
    *,
    eos: str = "</s>",
    named: dict[str, str] | None = None,
    add_bos: bool = False,
):
    """Word-level tokenizer over ``tiny_vocab()``.

    ``extra_tokens`` (family control tokens such as ``<|im_end|>``) are appended to the vocabulary
    and marked special, so they are matched whole before pre-tokenisation; ``named`` gives the
    named special tokens the family's processor reads (``image_token``, ``boi_token``, ...).
    ``add_bos``: encoding with special tokens prepends ``<s>``, as Llama-3 tokenizers do.
    The default call builds exactly the tiny-llava tokenizer.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    for token in extra_tokens:
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), "isolated")]
    )
    if extra_tokens:
        tok.add_special_tokens(SPECIAL_TOKENS + list(extra_tokens))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token=eos,
        extra_special_tokens=named if named is not None else {"image_token": "<image>"},
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


# --- Further families. Each builder makes a real transformers architecture at hidden size 64
# (vision 32-64), 2 layers, random weights, with a locally made processor whose image size
# matches the vision tower (the synthetic images are 32x32), and saves both to ``path``.
# Chat templates are written here in each family's prompt style (no hub files are read).

IM_CHAT_TEMPLATE = (  # ChatML, as Qwen2-VL uses it
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

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

JANUS_CHAT_TEMPLATE = (  # "<|User|>: <image_placeholder>\nquestion\n\n<|Assistant|>:"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|User|>: {% else %}<|Assistant|>: {% endif %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>\n{% else %}{{ item['text'] }}{% endif %}"
    "{% endfor %}\n\n{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


def _llama_text_config(vocab_size: int, tokenizer, **overrides) -> dict:
    """Decoder config shared by the tiny families (Llama-shaped; overrides per family)."""
    config = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        # Large init so a frozen random lm_head gives confident logits that LoRA can steer.
        initializer_range=0.2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config.update(overrides)
    return config


def _save(model, processor, tokenizer, path: Path, eos_ids: Sequence[int] | None = None) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = list(eos_ids) if eos_ids else tokenizer.eos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)


def build_tiny_llava_next(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """LLaVA-NeXT (1.6) shape: anyres tiles + base image, CLIP tower, MLP, image_newline, Llama."""
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    tokenizer = _tiny_tokenizer()
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size,
        ),
        text_config=_llama_text_config(len(tokenizer), tokenizer),
        image_token_index=tokenizer.image_token_id,
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
    )
    torch.manual_seed(seed)
    _save(LlavaNextForConditionalGeneration(config), processor, tokenizer, path)


QWEN_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
               "<|video_pad|>", "<|endoftext|>"]


def _qwen_parts(image_size: int, patch_size: int):
    from transformers import Qwen2VLImageProcessorPil

    from fedumm.models.processors import QwenVLImageTextProcessor

    tokenizer = _tiny_tokenizer(QWEN_TOKENS, eos="<|im_end|>", named={"image_token": "<|image_pad|>"})
    image_processor = Qwen2VLImageProcessorPil(
        size={"shortest_edge": image_size * image_size, "longest_edge": image_size * image_size},
        patch_size=patch_size, merge_size=2, temporal_patch_size=2,
    )
    processor = QwenVLImageTextProcessor(image_processor, tokenizer, IM_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS}
    text = _llama_text_config(
        len(tokenizer), tokenizer,
        # head_dim 16 -> 8 rotary frequencies split over (temporal, height, width).
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    special = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return tokenizer, processor, text, special


def build_tiny_qwen2_vl(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Qwen2-VL shape: ViT over 2x2-merged patches with M-RoPE, Qwen2 decoder.

    The stock Qwen2VLProcessor cannot be built without torchvision (it requires a video
    processor); the folder holds the tokenizer, the Qwen2VLImageProcessorPil config and the chat
    template, which fedumm's QwenVLImageTextProcessor loads.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tokenizer, processor, text, special = _qwen_parts(image_size, patch_size)
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
            patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
        ),
        **special,
    )
    torch.manual_seed(seed)
    _save(Qwen2VLForConditionalGeneration(config), processor, tokenizer, path)


def build_tiny_qwen2_5_vl(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Qwen2.5-VL shape: windowed-attention ViT (SwiGLU, RMSNorm), merger, Qwen2 decoder."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer, processor, text, special = _qwen_parts(image_size, patch_size)
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=64,
            patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
            window_size=2 * patch_size * 2, fullatt_block_indexes=[1],
        ),
        **special,
    )
    torch.manual_seed(seed)
    _save(Qwen2_5_VLForConditionalGeneration(config), processor, tokenizer, path)


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"]


def _idefics3_processor(image_size: int, patch_size: int, scale_factor: int, template: str,
                        extra: Sequence[str] = (), add_bos: bool = False):
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor

    tokenizer = _tiny_tokenizer(IDEFICS3_TOKENS + list(extra), eos="<end_of_utterance>", add_bos=add_bos)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,  # one global image: 32x32 synthetic images need no tiles
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(image_size // patch_size) ** 2 // scale_factor**2,
        chat_template=template,
    )
    return tokenizer, processor


def build_tiny_idefics3(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Idefics3 shape: SigLIP-style tower, pixel-shuffle connector, Llama decoder."""
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    tokenizer, processor = _idefics3_processor(image_size, patch_size, 2, IDEFICS3_CHAT_TEMPLATE, add_bos=True)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size,
        ),
        text_config=_llama_text_config(len(tokenizer), tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    _save(Idefics3ForConditionalGeneration(config), processor, tokenizer, path)


def build_tiny_smolvlm(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """SmolVLM shape (Idefics3 layout, SmolLM decoder) with an Idefics3Processor: the stock
    SmolVLMProcessor requires a video processor, which needs torchvision."""
    import torch
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    tokenizer, processor = _idefics3_processor(
        image_size, patch_size, 2, SMOLVLM_CHAT_TEMPLATE, extra=["<|im_start|>"]
    )
    config = SmolVLMConfig(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size,
        ),
        text_config=_llama_text_config(len(tokenizer), tokenizer),
        scale_factor=2,
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    _save(SmolVLMForConditionalGeneration(config), processor, tokenizer, path)


def build_tiny_paligemma(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """PaliGemma shape: SigLIP tower, linear projector, Gemma decoder; prefix-LM, no chat template."""
    import torch
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )

    tokenizer = _tiny_tokenizer()
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = (image_size // patch_size) ** 2
    # The processor adds PaliGemma's 1,152 <locXXXX>/<segXXX> tokens to the tokenizer.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    text = _llama_text_config(len(tokenizer), tokenizer, head_dim=16, num_key_value_heads=1)
    for key in ("max_position_embeddings",):
        text.pop(key)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size, projection_dim=64,
        ),
        text_config=GemmaConfig(**text),
        image_token_index=tokenizer.image_token_id,
        projection_dim=64,
        hidden_size=64,
        vocab_size=len(tokenizer),
    )
    torch.manual_seed(seed)
    _save(PaliGemmaForConditionalGeneration(config), processor, tokenizer, path)


JANUS_TOKENS = ["<image_placeholder>", "<begin_of_image>", "<end_of_image>", "<|User|>", "<|Assistant|>"]


def build_tiny_janus(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """Janus(-Pro) shape: SigLIP understanding tower + MLP aligner, VQ tokenizer and generation
    head (image generation path), Llama decoder."""
    import torch
    from transformers import (
        JanusConfig,
        JanusForConditionalGeneration,
        JanusImageProcessorPil,
        JanusProcessor,
    )

    tokenizer = _tiny_tokenizer(
        JANUS_TOKENS,
        named={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
               "eoi_token": "<end_of_image>"},
    )
    num_image_tokens = (image_size // patch_size) ** 2
    processor = JanusProcessor(
        image_processor=JanusImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        chat_template=JANUS_CHAT_TEMPLATE,
        num_image_tokens=num_image_tokens,
    )
    config = JanusConfig(
        text_config=_llama_text_config(len(tokenizer), tokenizer),
        vision_config=dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2.0,
            image_size=image_size, patch_size=patch_size, projection_dim=64, depth=2,
            num_image_tokens=num_image_tokens,
        ),
        vq_config=dict(
            embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,  # GroupNorm(32)
            channel_multiplier=[1, 1], num_res_blocks=1, projection_dim=64,
            image_token_embed_dim=64, num_hidden_layers=1,
        ),
        image_token_id=tokenizer.image_token_id,
    )
    torch.manual_seed(seed)
    _save(JanusForConditionalGeneration(config), processor, tokenizer, path)


BLIP_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _blip_tokenizer():
    """BERT-style word-level tokenizer: "[CLS] text [SEP]", plus BLIP's "[DEC]" decoder BOS."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in tiny_vocab() if w not in SPECIAL_TOKENS]
    vocab = {t: i for i, t in enumerate(BLIP_SPECIAL_TOKENS + words + ["[DEC]"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), "isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens(BLIP_SPECIAL_TOKENS + ["[DEC]"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", bos_token="[DEC]",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_blip_vqa(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """BLIP VQA shape: ViT, BERT question encoder with cross-attention to the image, BERT
    answer decoder with cross-attention to the question."""
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    tokenizer = _blip_tokenizer()
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, encoder_hidden_size=64,
            intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
        ),
        vision_config=dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            image_size=image_size, patch_size=patch_size,
            initializer_range=0.02,  # BLIP's default 1e-10 would make a blind random tower
        ),
    )
    torch.manual_seed(seed)
    model = BlipForQuestionAnswering(config)
    model.save_pretrained(path)
    processor.save_pretrained(path)


# "name" or "org/name", each part starting with a letter, digit or underscore.
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*(/[A-Za-z0-9_][\w.-]*)?")

TINY_MODELS: dict[str, Callable[[Path], None]] = {
    "tiny-llava": build_tiny_llava,
    "tiny-llava-next": build_tiny_llava_next,
    "tiny-qwen2-vl": build_tiny_qwen2_vl,
    "tiny-qwen2.5-vl": build_tiny_qwen2_5_vl,
    "tiny-idefics3": build_tiny_idefics3,
    "tiny-smolvlm": build_tiny_smolvlm,
    "tiny-paligemma": build_tiny_paligemma,
    "tiny-janus": build_tiny_janus,
    "tiny-blip-vqa": build_tiny_blip_vqa,
}


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
