"""Emu3, the encoder-free backend, on the built-in tiny Emu3: text-to-image batches, loss,
sampling, VQ reconstruction, and understanding through the image tokens."""

from __future__ import annotations

import pytest
import torch

from fedumm.adapters import apply_lora
from fedumm.config import AdapterConfig, ModelConfig, TrainConfig
from fedumm.data.synthetic import make_synthetic_vqa, render_image
from fedumm.federation.train import train_local
from fedumm.metrics import normalize_answer
from fedumm.models.registry import get_backend
from fedumm.models.tiny import resolve_model_path
from fedumm.models.tiny.vq import reconstruction_quality
from fedumm.types import IGNORE_INDEX

SCENES = [
    ("red", "square", 8, 12),
    ("blue", "circle", 28, 6),
    ("green", "triangle", 4, 36),
    ("yellow", "square", 40, 40),
]
SIZE = 64  # tiny-emu3's images: 8x8 codes


def t2i_rows() -> list[dict]:
    return [
        {
            "task": "t2i",
            "prompt": f"a {colour} {shape}",
            "image": render_image(shape, colour, [(x, y)], SIZE),
            "question": "",
            "answers": [],
            "multiple_choice_answer": "",
        }
        for colour, shape, x, y in SCENES
    ]


def load_emu3():
    config = ModelConfig(backend="emu3", name_or_path=resolve_model_path("tiny-emu3"), device="cpu")
    backend = get_backend("emu3")(config)
    base = backend.load()
    torch.manual_seed(0)
    return backend, apply_lora(base, AdapterConfig(dropout=0.0), backend.lora_target_regex(AdapterConfig()))


@pytest.fixture(scope="module")
def emu3():
    return load_emu3()


def test_generation_batch_supervises_the_visual_tokens_only(emu3):
    backend, _ = emu3
    rows = t2i_rows()

    batch = backend.training_batch(rows)

    grids = backend.image_codes([r["image"] for r in rows])
    visual = set(backend.mapping.image_tokens)
    for i, grid in enumerate(grids):
        assert grid.shape == (8, 8)
        supervised = batch["labels"][i][batch["labels"][i] != IGNORE_INDEX]
        expected = [backend.mapping.img2bpe[int(c)] for c in grid.flatten()]
        assert supervised.tolist() == expected  # 64 codes in raster order, no end-of-line
        positions = (batch["labels"][i] != IGNORE_INDEX).nonzero().flatten()
        assert batch["input_ids"][i, positions].tolist() == expected
        # Every token before the first image token is prompt or header, none supervised.
        first = int(positions[0])
        assert not set(batch["input_ids"][i, :first].tolist()) & visual


def test_generation_loss_is_the_cross_entropy_on_visual_positions(emu3):
    backend, model = emu3
    batch = backend.training_batch(t2i_rows())

    with torch.no_grad():
        loss = backend.loss(model, batch)
        log_probs = backend.answer_logits(model, batch).float().log_softmax(dim=-1)

    picked = [
        -log_probs[b, t - 1, batch["labels"][b, t]]
        for b in range(4)
        for t in range(batch["labels"].shape[1])
        if batch["labels"][b, t] != IGNORE_INDEX
    ]
    assert len(picked) == 4 * 64
    assert loss.item() == pytest.approx(torch.stack(picked).mean().item(), rel=1e-5)


def test_unconditional_prompt_keeps_bos_and_the_image_header(emu3):
    backend, _ = emu3
    conditional = backend.training_batch(t2i_rows())

    with backend.training_session(0, TrainConfig(cfg_dropout=0.999999)):
        dropped = backend.training_batch(t2i_rows())

    tok = backend.tokenizer
    first = tok.convert_ids_to_tokens(dropped["input_ids"][0].tolist())
    header = first.index("<|image start|>")
    assert first[0] == "<s>" and set(first[1:header]) == {"<pad>"}
    assert first[header : header + 5] == ["<|image start|>", "8", "*", "8", "<|image token|>"]
    assert torch.equal(dropped["labels"], conditional["labels"])


def test_generate_images_returns_seeded_images_of_the_data_size(emu3):
    backend, model = emu3

    images = backend.generate_images(model, ["a red square", "a blue circle"], cfg_scale=3.0, seed=1, temperature=1.0)
    again = backend.generate_images(model, ["a red square", "a blue circle"], cfg_scale=3.0, seed=1, temperature=1.0)
    plain = backend.generate_images(model, ["a red square"], cfg_scale=1.0, seed=1, temperature=0.0)

    assert [(i.mode, i.size) for i in images] == [("RGB", (SIZE, SIZE))] * 2
    assert [i.tobytes() for i in images] == [i.tobytes() for i in again]
    assert plain[0].size == (SIZE, SIZE)


def test_vq_reconstructs_the_synthetic_scenes(emu3):
    backend, _ = emu3
    images = [r["image"] for r in make_synthetic_vqa(60, seed=3, split="test", image_size=SIZE)]

    quality = reconstruction_quality(images, backend.reconstruct_images(images))

    # 8x8 codes of 64 px scenes, the VQ trained on one thread (the same tokenizer on every
    # machine): about 14/255 and 97% here; a random VQ decodes noise (error ~ 100, colour 1/6).
    assert quality["mean_abs_error"] < 20
    assert quality["colour_agreement"] > 0.9


def test_training_mode_leaves_the_vq_codes_and_its_batchnorm_statistics_alone(emu3):
    # Prepare: the codes in eval mode, the BatchNorm running means of the tokenizer.
    backend, model = emu3
    images = [r["image"] for r in t2i_rows()]
    vq = backend.model.model.vqmodel
    norms = [m for m in vq.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    means = [m.running_mean.clone() for m in norms]
    before = backend.image_codes(images)
    # Execute: fine-tuning's model.train(), then codes of a batch and of its first row alone.
    model.train()
    try:
        batch, alone = backend.image_codes(images), backend.image_codes(images[:1])
    finally:
        model.eval()
    # Assert: Emu3's VQ has BatchNorm layers, and they neither use batch statistics nor move.
    assert norms and all(not m.training for m in norms)
    assert all(torch.equal(a, b) for a, b in zip(before, batch)) and torch.equal(alone[0], before[0])
    assert all(torch.equal(m.running_mean, mean) for m, mean in zip(norms, means))


@pytest.mark.slow
def test_teacher_forced_image_token_accuracy_rises_with_training(emu3):
    backend, model = emu3
    rows = t2i_rows()
    before = backend.image_token_metrics(model, rows)

    train_local(model, backend, rows, TrainConfig(local_steps=30, batch_size=4, lr=5e-3, cfg_dropout=0.0), seed=0)

    after = backend.image_token_metrics(model, rows)
    assert before["tokens"] == 4 * 64 and before["image_token_accuracy"] < 0.1
    assert after["image_token_accuracy"] > 0.4


@pytest.mark.slow
def test_lora_learns_colour_questions_through_the_image_tokens():
    """No vision encoder: the answer can only come from the visual tokens in the sequence."""
    backend, model = load_emu3()
    scenes = make_synthetic_vqa(1200, seed=11, image_size=SIZE, answer_noise=0.0)
    rows = [r for r in scenes if r["answer_type"] == "color"]
    train, test = rows[:120], rows[-40:]

    train_local(model, backend, train, TrainConfig(local_steps=200, batch_size=8, lr=1e-2), seed=0)

    answers = backend.predict(model, test)
    accuracy = sum(normalize_answer(a) == r["multiple_choice_answer"] for a, r in zip(answers, test)) / len(test)
    majority = max(
        sum(r["multiple_choice_answer"] == c for r in test) for c in {r["multiple_choice_answer"] for r in test}
    )
    assert accuracy > majority / len(test) + 0.1  # 6 colours: chance 1/6
