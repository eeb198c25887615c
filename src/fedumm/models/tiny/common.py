"""Parts the tiny families share: the word-level vocabulary and tokenizers, the Llama-shaped
decoder and small vision-tower dimensions, and seeding, building and saving a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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


def tiny_vocab() -> dict[str, int]:
    tokens = SPECIAL_TOKENS + list(dict.fromkeys(_WORDS)) + [str(i) for i in range(101)]
    tokens += list("?.,:;!'\"-()/")
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def word_level(vocab: dict[str, int], unk_token: str):
    """A lowercasing ``tokenizers.Tokenizer`` over ``vocab``: whitespace-separated words, each
    split into runs of word characters and single punctuation marks."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk_token))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), "isolated")]
    )
    return tok


def tiny_tokenizer(
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
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocab()
    for token in extra_tokens:
        vocab.setdefault(token, len(vocab))
    tok = word_level(vocab, "<unk>")
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


def llama_text_config(vocab_size: int, tokenizer, **overrides) -> dict:
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


def vision_dims(image_size: int, patch_size: int, hidden_size: int = 64, **overrides) -> dict:
    """Vision-tower config keys shared by the CLIP-, SigLIP- and BLIP-style towers: 2 layers,
    4 heads, an MLP twice ``hidden_size`` wide."""
    return dict(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        **overrides,
    )


def save_model(path: Path, model_class, config, processor, *, seed: int, tokenizer=None) -> None:
    """Seed torch, build ``model_class(config)`` with random weights, save it and ``processor``
    to ``path``. With ``tokenizer``, the generation config takes its pad and eos ids."""
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    if tokenizer is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    processor.save_pretrained(path)
