"""Janus text-to-image training and sampling on the built-in tiny Janus (trained VQ tokenizer)."""

from __future__ import annotations

import pytest
import torch

from fedumm.adapters import apply_lora
from fedumm.config import AdapterConfig, ModelConfig, TrainConfig
from fedumm.data.synthetic import make_synthetic_vqa, render_image
from fedumm.federation.train import train_local
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.vq import reconstruction_quality
from fedumm.types import IGNORE_INDEX

SCENES = [
    ("red", "square", 4, 6),
    ("blue", "circle", 14, 3),
    ("green", "triangle", 2, 18),
    ("yellow", "square", 20, 20),
]


def t2i_rows(scenes=SCENES) -> list[dict]:
    """Text-to-image rows of the shared row contract, drawn like the synthetic data."""
    return [
        {
            "task": "t2i",
            "prompt": f"a {colour} {shape}",
            "image": render_image(shape, colour, [(x, y)], 32),
            "question": "",
            "answers": [],
            "multiple_choice_answer": "",
        }
        for colour, shape, x, y in scenes
    ]


@pytest.fixture(scope="module")
def janus():
    backend = get_backend("janus")(
        ModelConfig(backend="janus", name_or_path=resolve_model_path("tiny-janus"), device="cpu")
    )
    base = backend.load()
    torch.manual_seed(0)
    model = apply_lora(base, AdapterConfig(dropout=0.0), backend.lora_target_regex(AdapterConfig()))
    return backend, model


def test_generation_batch_supervises_the_image_codes_only(janus):
    backend, _ = janus
    rows = t2i_rows()

    batch = backend.training_batch(rows)

    codes = backend.image_tokens([r["image"] for r in rows])
    prompt_width = batch["input_ids"].shape[1]
    assert codes.shape == (4, 64)
    assert torch.equal(batch["image_tokens"], codes)
    assert (batch["labels"][:, :prompt_width] == IGNORE_INDEX).all()
    assert torch.equal(batch["labels"][:, prompt_width:], codes)
    boi = backend.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    assert (batch["input_ids"][:, -1] == boi).all()  # left-padded: every prompt ends with image-start
    assert batch["attention_mask"][:, -1].all()


def test_generation_loss_is_the_cross_entropy_on_image_positions(janus):
    backend, model = janus
    batch = backend.training_batch(t2i_rows())
    prompt_width = batch["input_ids"].shape[1]

    with torch.no_grad():
        loss = backend.loss(model, batch)
        logits = backend.answer_logits(model, batch)

    # By hand: position t predicts token t + 1, so image token j is scored at prompt_width - 1 + j.
    log_probs = logits.float().log_softmax(dim=-1)
    picked = [
        -log_probs[b, prompt_width - 1 + j, batch["image_tokens"][b, j]]
        for b in range(4)
        for j in range(batch["image_tokens"].shape[1])
    ]
    assert loss.item() == pytest.approx(torch.stack(picked).mean().item(), rel=1e-5)
    assert logits.shape[-1] == backend.model.config.vq_config.num_embeddings


def test_a_mixed_batch_is_refused(janus):
    backend, _ = janus
    with pytest.raises(ValueError, match="mixes tasks 't2i' and 'vqa'"):
        backend.training_batch(t2i_rows()[:1] + make_synthetic_vqa(1, seed=0))


def test_unconditional_prompt_keeps_bos_and_image_start_only(janus):
    backend, _ = janus
    conditional = backend.training_batch(t2i_rows())
    boi = backend.tokenizer.convert_tokens_to_ids("<begin_of_image>")
    pad = backend.tokenizer.pad_token_id

    with backend.training_session(0, TrainConfig(cfg_dropout=0.999999)):
        dropped = backend.training_batch(t2i_rows())

    ids = dropped["input_ids"]
    assert ((ids == boi) | (ids == pad)).all()
    assert torch.equal(ids == boi, conditional["input_ids"] == boi)
    assert torch.equal(dropped["labels"], conditional["labels"])  # the image target is unchanged


def test_dropout_inside_training_follows_the_seed(janus):
    backend, _ = janus
    rows = t2i_rows() * 4  # 16 rows

    def dropped_rows(seed: int) -> list[bool]:
        with backend.training_session(seed, TrainConfig(cfg_dropout=0.5)):
            ids = backend.training_batch(rows)["input_ids"]
        words = ids != backend.tokenizer.pad_token_id
        return (words.sum(dim=1) == 1).tolist()  # only the image-start token left

    assert dropped_rows(11) == dropped_rows(11)
    assert 0 < sum(dropped_rows(11)) < 16
    assert dropped_rows(11) != dropped_rows(12)
    outside = backend.training_batch(rows)["input_ids"] != backend.tokenizer.pad_token_id
    assert (outside.sum(dim=1) > 1).all()  # outside training no prompt is dropped


def test_generate_images_returns_seeded_images_of_the_data_size(janus):
    backend, model = janus

    images = backend.generate_images(model, ["a red square", "a blue circle"], cfg_scale=3.0, seed=1, temperature=1.0)
    again = backend.generate_images(model, ["a red square", "a blue circle"], cfg_scale=3.0, seed=1, temperature=1.0)
    plain = backend.generate_images(model, ["a red square"], cfg_scale=1.0, seed=1, temperature=0.0)

    assert [(i.mode, i.size) for i in images] == [("RGB", (32, 32))] * 2
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]
    assert plain[0].size == (32, 32)
    with pytest.raises(ValueError, match="cfg_scale must be >= 1"):
        backend.generate_images(model, ["a red square"], cfg_scale=0.5, seed=1, temperature=1.0)


def test_vq_reconstructs_the_synthetic_scenes(janus):
    backend, _ = janus
    images = [r["image"] for r in make_synthetic_vqa(60, seed=3, split="test")]

    quality = reconstruction_quality(images, backend.reconstruct_images(images))

    # A random VQ decodes to noise (mean error ~ 100 of 255, colour right ~ 1 in 6).
    assert quality["mean_abs_error"] < 20
    assert quality["colour_agreement"] >= 0.8


@pytest.mark.slow
def test_teacher_forced_image_token_accuracy_rises_with_training(janus):
    backend, model = janus
    rows = t2i_rows()
    before = backend.image_token_metrics(model, rows)

    train_local(model, backend, rows, TrainConfig(local_steps=30, batch_size=4, lr=5e-3, cfg_dropout=0.0), seed=0)

    after = backend.image_token_metrics(model, rows)
    assert before["n"] == 4 and before["tokens"] == 256
    assert before["image_token_accuracy"] < 0.1  # chance is 1 / 128
    assert after["image_token_accuracy"] > 0.4
    assert after["image_token_nll"] < before["image_token_nll"] - 2
