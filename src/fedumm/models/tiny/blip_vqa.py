"""tiny-blip-vqa: ViT, BERT question encoder and answer decoder with cross-attention, and a BERT-style
word-level tokenizer ("[CLS] text [SEP]", "[DEC]" decoder BOS)."""

from __future__ import annotations

from pathlib import Path

from fedumm.models.tiny.common import SPECIAL_TOKENS, save_model, tiny_vocab, vision_dims, word_level

BLIP_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _blip_tokenizer():
    """BERT-style word-level tokenizer: "[CLS] text [SEP]", plus BLIP's "[DEC]" decoder BOS."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    words = [w for w in tiny_vocab() if w not in SPECIAL_TOKENS]
    vocab = {t: i for i, t in enumerate(BLIP_SPECIAL_TOKENS + words + ["[DEC]"])}
    tok = word_level(vocab, "[UNK]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.add_special_tokens(BLIP_SPECIAL_TOKENS + ["[DEC]"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="[DEC]",
        model_input_names=["input_ids", "attention_mask"],
    )


def build_tiny_blip_vqa(path: Path, image_size: int = 32, patch_size: int = 8, seed: int = 0) -> None:
    """BLIP VQA shape: ViT, BERT question encoder with cross-attention to the image, BERT
    answer decoder with cross-attention to the question."""
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    tokenizer = _blip_tokenizer()
    processor = BlipProcessor(
        image_processor=BlipImageProcessorPil(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            encoder_hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            initializer_range=0.2,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
        ),
        # BLIP's default initializer_range 1e-10 would make a blind random tower.
        vision_config=vision_dims(image_size, patch_size, initializer_range=0.02),
    )
    # No tokenizer: the generation config keeps the model class's defaults.
    save_model(path, BlipForQuestionAnswering, config, processor, seed=seed)
