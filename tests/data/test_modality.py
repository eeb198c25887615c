"""Tests for the modality-heterogeneity scenarios (FedMLLM): realised rates, prompts, no mutation.

Rates follow FedMLLM's generators: ``missing`` drops image and text independently with
probability m each; ``mix`` gives each client each modality with probability 1 - q.
"""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from fedumm.data.modality import (
    BOTH,
    IMAGE_ONLY,
    NEITHER,
    TEXT_ONLY,
    apply_modality_scenario,
    missing_both_prompt,
    missing_text_prompt,
    mix_presence,
    modality_counts,
    modality_of,
    text_only_question,
    with_modality,
)

IMAGE = Image.new("RGB", (4, 4), (1, 2, 3))


def _row(i: int, task: str | None = None) -> dict:
    row = {
        "image": IMAGE,
        "question": f"q{i}?",
        "answers": ["a"],
        "multiple_choice_answer": "a",
        "metadata": {"row": i},
    }
    return row if task is None else {**row, "task": task}


def _clients(num_clients: int, per_client: int) -> list[list[dict]]:
    return [[_row(c * per_client + k) for k in range(per_client)] for c in range(num_clients)]


def _shares(client_rows: list[list[dict]]) -> dict[str, float]:
    counts = modality_counts([r for rows in client_rows for r in rows])
    total = sum(counts.values())
    return {m: n / total for m, n in counts.items()}


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 1.0])
def test_missing_drops_each_modality_independently_with_the_rate(rate: float) -> None:
    # Prepare: 20,000 rows over 4 clients.
    clients = _clients(4, 5000)
    # Execute
    shares = _shares(apply_modality_scenario(clients, "missing", rate, 0, seed=0))
    # Assert: P(image missing) = P(text missing) = m; both (1-m)^2, one only m(1-m), neither m^2.
    # Binomial sd <= 0.0036 on 20,000 rows, so 0.012 is more than 3 sd.
    assert shares[TEXT_ONLY] + shares[NEITHER] == pytest.approx(rate, abs=0.012)  # image dropped
    assert shares[IMAGE_ONLY] + shares[NEITHER] == pytest.approx(rate, abs=0.012)  # text dropped
    assert shares[BOTH] == pytest.approx((1 - rate) ** 2, abs=0.012)
    assert shares[NEITHER] == pytest.approx(rate**2, abs=0.012)
    assert shares[TEXT_ONLY] == pytest.approx(rate * (1 - rate), abs=0.012)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_missing_at_half_measures_fedmllm_rates() -> None:
    # Prepare: the audit's case, m = 0.5 over 20,000 rows of one client.
    out = apply_modality_scenario(_clients(1, 20000), "missing", 0.5, 0, seed=0)[0]
    # Execute
    image_dropped = sum(r["image"] is None for r in out) / len(out)
    text_dropped = sum(modality_of(r) in (IMAGE_ONLY, NEITHER) for r in out) / len(out)
    # Assert: 50% / 50% as in FedMLLM (the exclusive rate/2 draws gave 25% / 25%).
    assert image_dropped == pytest.approx(0.5, abs=0.012)
    assert text_dropped == pytest.approx(0.5, abs=0.012)


def test_a_sample_missing_both_keeps_only_the_instruction() -> None:
    # Execute: rate 1 drops everything from every sample.
    out = apply_modality_scenario([[_row(0, "classification"), _row(1)]], "missing", 1.0, 0, seed=0)[0]
    # Assert: no image, the task's bare instruction as the question, tagged "none".
    assert [r["image"] for r in out] == [None, None]
    assert [r["question"] for r in out] == ["Answer with the class label.", "Answer the question."]
    assert modality_counts(out) == {BOTH: 0, IMAGE_ONLY: 0, TEXT_ONLY: 0, NEITHER: 2}


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_mix_draws_each_modality_once_per_client_from_bernoulli(rate: float) -> None:
    # Prepare: 4,000 clients of 4 rows.
    clients = _clients(4000, 4)
    # Execute
    presence = mix_presence(4000, rate, seed=1)
    out = apply_modality_scenario(clients, "mix", rate, 0, seed=1)
    # Assert: each modality present with prob. 1 - q, independently (sd <= 0.008 on 4,000 clients).
    assert presence[:, 0].mean() == pytest.approx(1 - rate, abs=0.03)
    assert presence[:, 1].mean() == pytest.approx(1 - rate, abs=0.03)
    assert (presence[:, 0] & presence[:, 1]).mean() == pytest.approx((1 - rate) ** 2, abs=0.03)
    for (image, text), rows in zip(presence, out):
        kinds = {modality_of(r) for r in rows}
        if image and text:
            assert kinds == {BOTH}
        elif image or text:
            assert kinds == {IMAGE_ONLY if image else TEXT_ONLY}
        else:  # neither drawn: every sample keeps one of the two, never none
            assert kinds <= {IMAGE_ONLY, TEXT_ONLY}
    counted = modality_counts([r for rows in out for r in rows])
    assert counted[NEITHER] == 0


def test_mix_client_drawing_neither_gets_image_or_text_per_sample_by_a_fair_coin() -> None:
    # Prepare / Execute: q = 1, so every client draws neither modality; 2 clients x 5,000 rows.
    out = apply_modality_scenario(_clients(2, 5000), "mix", 1.0, 0, seed=3)
    # Assert: about half image-only, half text-only (sd 0.005), in each client.
    for rows in out:
        counts = modality_counts(rows)
        assert counts[BOTH] == counts[NEITHER] == 0
        assert counts[IMAGE_ONLY] / len(rows) == pytest.approx(0.5, abs=0.02)


def test_single_splits_image_clients_from_text_clients() -> None:
    # Execute
    out = apply_modality_scenario(_clients(5, 3), "single", rate=0.0, num_image_clients=2, seed=0)
    # Assert: clients 0-1 keep the image and get the generic prompt; 2-4 keep the question only.
    for rows in out[:2]:
        assert all(r["image"] is IMAGE and r["question"] == "Answer the question about the image." for r in rows)
        assert modality_counts(rows) == {BOTH: 0, IMAGE_ONLY: 3, TEXT_ONLY: 0, NEITHER: 0}
    for rows in out[2:]:
        assert all(r["image"] is None and r["question"].startswith("q") for r in rows)
        assert modality_counts(rows) == {BOTH: 0, IMAGE_ONLY: 0, TEXT_ONLY: 3, NEITHER: 0}


def test_none_keeps_everything_and_tags_it() -> None:
    out = apply_modality_scenario(_clients(2, 3), "none", 0.9, 0, seed=0)
    assert all(r["image"] is IMAGE and r["question"].startswith("q") for rows in out for r in rows)
    assert _shares(out)[BOTH] == 1.0


@pytest.mark.parametrize("scenario", ["none", "missing", "single", "mix"])
def test_inputs_are_never_mutated_and_outputs_are_new_dicts(scenario: str) -> None:
    # Prepare
    clients = _clients(3, 20)
    before = copy.deepcopy([[{k: v for k, v in r.items() if k != "image"} for r in rows] for rows in clients])
    # Execute
    out = apply_modality_scenario(clients, scenario, 1.0, 1, seed=0)
    # Assert
    after = [[{k: v for k, v in r.items() if k != "image"} for r in rows] for rows in clients]
    assert after == before
    assert all(r["image"] is IMAGE for rows in clients for r in rows)
    assert all(o is not r and o["metadata"] is not r["metadata"] for a, b in zip(out, clients) for o, r in zip(a, b))
    assert all(o["metadata"]["row"] == r["metadata"]["row"] for a, b in zip(out, clients) for o, r in zip(a, b))


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    clients = _clients(4, 50)
    first = [[modality_of(r) for r in rows] for rows in apply_modality_scenario(clients, "missing", 0.5, 0, 3)]
    again = [[modality_of(r) for r in rows] for rows in apply_modality_scenario(clients, "missing", 0.5, 0, 3)]
    other = [[modality_of(r) for r in rows] for rows in apply_modality_scenario(clients, "missing", 0.5, 0, 4)]
    assert first == again != other


@pytest.mark.parametrize(
    ("task", "prompt"),
    [
        (None, "Answer the question about the image."),
        ("vqa", "Answer the question about the image."),
        ("classification", "Classify the image. Answer with the class label."),
        ("caption", "Describe the image."),
    ],
)
def test_missing_text_prompt_by_task(task: str | None, prompt: str) -> None:
    # Execute
    row = with_modality(_row(0, task), IMAGE_ONLY)
    # Assert
    assert missing_text_prompt(_row(0, task)) == prompt
    assert row["question"] == prompt and row["metadata"]["modality"] == IMAGE_ONLY


def test_the_run_task_picks_the_prompt_when_rows_have_no_task_column() -> None:
    # Prepare: one row without a task column, one whose own task says caption.
    clients = [[_row(0), _row(1, "caption")]]
    # Execute: the run's eval.task is classification.
    out = apply_modality_scenario(clients, "single", 0.0, 1, seed=0, task="classification")[0]
    # Assert: the row's own task wins; else the run's task, not VQA.
    assert [r["question"] for r in out] == ["Classify the image. Answer with the class label.", "Describe the image."]
    assert missing_both_prompt({}, "caption") == "Write a caption."


def test_configured_prompts_replace_the_task_defaults() -> None:
    # Prepare: FedMLLM's Hateful Memes prompts.
    clients = [[_row(0, "classification")] * 50]
    prompts = {
        "image_only_prompt": "Is the content hateful based on the image?",
        "no_modality_prompt": "Is the content hateful?",
    }
    # Execute: missing at 0.7 gives image-only and neither rows among 50.
    out = apply_modality_scenario(clients, "missing", 0.7, 0, seed=0, **prompts)[0]
    # Assert
    by_kind = {modality_of(r): r["question"] for r in out}
    assert by_kind[IMAGE_ONLY] == "Is the content hateful based on the image?"
    assert by_kind[NEITHER] == "Is the content hateful?"


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (
            "meme text\nIs the content hateful based on the text and image?",
            "meme text\nIs the content hateful based on the text?",
        ),
        ("Does the image and the text agree?", "Does the text agree?"),
        ("Judge the Text and Image together.", "Judge the Text together."),
        ("What colour is the shape?", "What colour is the shape?"),  # nothing to narrow
    ],
)
def test_text_only_rows_narrow_references_to_both_modalities(question: str, expected: str) -> None:
    # Execute
    row = with_modality({**_row(0), "question": question}, TEXT_ONLY)
    # Assert
    assert text_only_question(question) == expected
    assert row["question"] == expected and row["image"] is None


def test_dropping_the_image_also_empties_images() -> None:
    row = with_modality({**_row(0), "images": [IMAGE, IMAGE]}, TEXT_ONLY)
    assert row["image"] is None and row["images"] == []
    assert row["question"] == "q0?" and row["metadata"]["modality"] == TEXT_ONLY


def test_a_row_without_image_keeps_its_text_even_when_image_only() -> None:
    row = with_modality({**_row(0), "image": None}, IMAGE_ONLY)
    assert row["question"] == "q0?" and row["metadata"]["modality"] == TEXT_ONLY


def test_an_image_only_row_losing_its_image_becomes_none() -> None:
    # Prepare: a caption-style row, image and no question.
    row = with_modality({**_row(0, "caption"), "question": ""}, TEXT_ONLY)
    # Assert: nothing left but the instruction.
    assert row["image"] is None and row["question"] == "Write a caption."
    assert row["metadata"]["modality"] == NEITHER


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"image": IMAGE, "question": "q"}, BOTH),
        ({"image": IMAGE, "question": ""}, IMAGE_ONLY),
        ({"image": None, "question": "q"}, TEXT_ONLY),
        ({"image": None, "images": [IMAGE], "question": "q"}, BOTH),
        ({"image": None, "question": ""}, NEITHER),
        ({"image": IMAGE, "question": "q", "metadata": {"modality": IMAGE_ONLY}}, IMAGE_ONLY),
    ],
)
def test_modality_of(row: dict, expected: str) -> None:
    assert modality_of(row) == expected


@pytest.mark.parametrize(
    ("scenario", "rate", "num_image_clients", "fragment"),
    [
        ("drop", 0.5, 0, "scenario"),
        ("missing", 1.5, 0, "rate"),
        ("single", 0.5, 4, "num_image_clients must be in 0..3"),
    ],
)
def test_bad_arguments_raise(scenario: str, rate: float, num_image_clients: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        apply_modality_scenario(_clients(3, 2), scenario, rate, num_image_clients, seed=0)
