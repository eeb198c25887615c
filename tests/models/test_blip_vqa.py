"""BLIP VQA specifics: LoRA presets (FedUMM's parameter counts on blip-vqa-base), module
groups, and the encoder-decoder batch layout."""

from __future__ import annotations

import re

import pytest
import torch

from fedumm.adapters import apply_lora, count_parameters
from fedumm.config import AdapterConfig, ModelConfig
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import ConfigError
from fedumm.models.blip_vqa import IGNORE_INDEX, BlipVQABackend
from fedumm.models.registry import get_backend


def blip_vqa_base_config():
    """The architecture of Salesforce/blip-vqa-base (weights not needed to count LoRA)."""
    from transformers import BlipConfig

    return BlipConfig(
        text_config=dict(
            vocab_size=30524,
            hidden_size=768,
            encoder_hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
        ),
        vision_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            image_size=384,
            patch_size=16,
        ),
    )


@pytest.fixture(scope="module")
def meta_blip_vqa_base():
    from transformers import BlipForQuestionAnswering

    config = blip_vqa_base_config()

    def build():
        with torch.device("meta"):
            model = BlipForQuestionAnswering(config)
        return model.requires_grad_(False)

    return build


# r=16 on a 768->768 linear: 16 x (768 + 768) = 24,576; on 768<->3072: 16 x (768 + 3072) = 61,440.
# 24 BERT layers (12 encoder, 12 decoder), each with self- and cross-attention.
_SQUARE, _WIDE, _LAYERS = 24_576, 61_440, 24


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (None, 1_179_648),
        ("attention", 1_179_648),
        ("qv_self", 1_179_648),  # q, v of self-attention
        ("qkv", 3_538_944),  # q, k, v of self- and cross-attention
        # q, k, v, output of self- and cross-attention (8 square) + intermediate and output (2 wide)
        ("all_linear", _LAYERS * (8 * _SQUARE + 2 * _WIDE)),  # 7,667,712
    ],
)
def test_fedumm_lora_parameter_counts_on_blip_vqa_base(meta_blip_vqa_base, preset, expected):
    adapter = AdapterConfig(r=16, preset=preset)
    backend = BlipVQABackend(ModelConfig(backend="blip_vqa", device="cpu"))
    with torch.device("meta"):
        model = apply_lora(meta_blip_vqa_base(), adapter, backend.lora_target_regex(adapter))
    trainable, _ = count_parameters(model)
    assert trainable == expected
    # Never the vision tower (its attention is one fused qkv projection anyway), nor the
    # decoder's prediction head.
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert not any("vision_model" in n or ".cls.predictions." in n for n in trained)


def test_groups_partition_blip_vqa_base(meta_blip_vqa_base):
    names = [n for n, _ in meta_blip_vqa_base().named_parameters()]
    groups = {g: re.compile(p) for g, p in BlipVQABackend.module_groups.items()}
    for name in names:
        assert sum(bool(r.fullmatch(name)) for r in groups.values()) == 1, name
    assert not any(groups["connector"].fullmatch(n) for n in names)  # no projector in BLIP


def test_unknown_preset_lists_blip_presets():
    backend = BlipVQABackend(ModelConfig(backend="blip_vqa", device="cpu"))
    with pytest.raises(ConfigError, match="available: all_linear, attention, qkv, qv_self"):
        backend.lora_target_regex(AdapterConfig(preset="qkvo"))


@pytest.fixture(scope="module")
def blip_backend():
    from fedumm.models.tiny import resolve_model_path

    backend = get_backend("blip_vqa")(
        ModelConfig(backend="blip_vqa", name_or_path=resolve_model_path("tiny-blip-vqa"), device="cpu")
    )
    backend.load()
    return backend


def test_decoder_sequence_is_dec_answer_sep(blip_backend):
    backend = blip_backend
    text = backend.model.config.text_config
    samples = make_synthetic_vqa(3, seed=6)
    batch = backend.training_batch(samples)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert (batch["input_ids"][:, 0] == backend.tokenizer.cls_token_id).all()
    assert (batch["decoder_input_ids"][:, 0] == text.bos_token_id).all()
    for i, sample in enumerate(samples):
        n = int(batch["decoder_attention_mask"][i].sum())
        answer = backend.tokenizer(sample["multiple_choice_answer"], add_special_tokens=False)["input_ids"]
        assert batch["decoder_input_ids"][i, :n].tolist() == [text.bos_token_id, *answer, text.sep_token_id]
        assert batch["labels"][i, 1:n].tolist() == [*answer, text.sep_token_id]
        assert batch["labels"][i, 0] == IGNORE_INDEX and (batch["labels"][i, n:] == IGNORE_INDEX).all()


def test_checkpoint_of_another_family_is_rejected(tiny_llava_path):
    backend = get_backend("blip_vqa")(ModelConfig(backend="blip_vqa", name_or_path=tiny_llava_path, device="cpu"))
    with pytest.raises(ConfigError, match="backend blip_vqa loads BLIP checkpoints, got model_type 'llava'"):
        backend.load()


def test_segment_losses_are_each_segments_own_smoothed_loss(blip_backend):
    # Prepare: two segments of 2 and 3 rows whose answers differ in length (different token counts).
    backend, model = blip_backend, blip_backend.model
    first, second = make_synthetic_vqa(2, seed=1), make_synthetic_vqa(3, seed=2)
    text = model.config.text_config
    saved = text.label_smoothing
    text.label_smoothing = model.text_decoder.label_smoothing = 0.1  # blip-vqa-base's value (tiny: 0)
    # Execute
    try:
        assert backend.label_smoothing() == 0.1
        with torch.no_grad():
            joint = backend.segment_losses(model, backend.training_batch(first + second), [2, 3])
            alone = [backend.loss(model, backend.training_batch(rows)) for rows in (first, second)]
    finally:
        text.label_smoothing = model.text_decoder.label_smoothing = saved
    with torch.no_grad():
        unsmoothed = backend.segment_losses(model, backend.training_batch(first + second), [2, 3])
    # Assert: BLIP's own (label-smoothed, token-mean) loss of each segment on its own.
    assert joint.shape == (2,)
    assert torch.allclose(joint, torch.stack(alone), atol=1e-5)
    assert (joint - unsmoothed).abs().min() > 1e-3  # the smoothing is in: without it the losses differ
