"""Tiny parts for ``model.compose``: tiny-clip-vision (a CLIP vision model with its *Pil image
processor) and tiny-llama (a Llama causal LM with a Llama-3-style chat template whose messages
are plain strings, and no image token: composing adds it)."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import llama_text_config, save_model, tiny_vocab, vision_dims, word_level

LLAMA_TOKENS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

#: Llama-3's turn layout; content is a string, as in text-only Llama templates.
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


def build_tiny_clip_vision(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """A CLIP vision encoder (``CLIPVisionModel``) and its image processor."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    config = CLIPVisionConfig(**vision_dims(image_size, patch_size))
    save_model(path, CLIPVisionModel, config, image_processor, seed=seed)


def build_tiny_llama(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """A Llama causal LM (``LlamaForCausalLM``) with a word-level tokenizer over the tiny
    vocabulary minus ``<image>``, BOS ``<|begin_of_text|>``, no pad token (as Llama-3's)."""
    from tokenizers import processors
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = [t for t in tiny_vocab() if t not in ("<image>", "<pad>", "<s>", "</s>")] + LLAMA_TOKENS
    vocab = {t: i for i, t in enumerate(words)}
    tok = word_level(vocab, "<unk>")
    tok.add_special_tokens(["<unk>", *LLAMA_TOKENS])
    bos = vocab["<|begin_of_text|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        chat_template=LLAMA_CHAT_TEMPLATE,
    )
    config = LlamaConfig(**llama_text_config(len(tokenizer), tokenizer, pad_token_id=None))
    save_model(path, LlamaForCausalLM, config, tokenizer, seed=seed, tokenizer=tokenizer)
