"""Tests for the modality-heterogeneity scenarios (FedMLLM): realised rates, prompts, no mutation."""

from __future__ import annotations

import copy

import pytest
from PIL import Image

from fedumm.data.modality import (
    BOTH,
    IMAGE_ONLY,
    TEXT_ONLY,
    apply_modality_scenario,
    missing_text_prompt,
    modality_counts,
    modality_of,
    with_modality,
)

IMAGE = Image.new("RGB", (4, 4), (1, 2, 3))


def _row(i: int, task: str | None = None) -> dict:
    row = {"image": IMAGE, "question": f"q{i}?", "answers": ["a"], "multiple_choice_answer": "a",
           "metadata": {"row": i}}
    return row if task is None else {**row, "task": task}


def _clients(num_clients: int, per_client: int) -> list[list[dict]]:
    return [[_row(c * per_client + k) for k in range(per_client)] for c in range(num_clients)]


def _shares(client_rows: list[list[dict]]) -> dict[str, float]:
    counts = modality_counts([r for rows in client_rows for r in rows])
    total = sum(counts.values())
    return {m: n / total for m, n in counts.items()}


@pytest.mark.parametrize("rate", [0.0, 0.4, 1.0])
def test_missing_realises_half_the_rate_per_modality(rate: float) -> None:
    # Prepare: 2,000 rows over 4 clients.
    clients = _clients(4, 500)
    # Execute
    shares = _shares(apply_modality_scenario(clients, "missing", rate, 0, seed=0))
    # Assert: image missing ~ rate/2, text missing ~ rate/2 (binomial sd <= 0.012 on 2,000), never both.
    assert shares[TEXT_ONLY] == pytest.approx(rate / 2, abs=0.035)
    assert shares[IMAGE_ONLY] == pytest.approx(rate / 2, abs=0.035)
    assert shares[BOTH] == pytest.approx(1 - rate, abs=0.035)
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_mix_draws_once_per_client(rate: float) -> None:
    # Prepare: 2,000 rows over 200 clients.
    clients = _clients(200, 10)
    # Execute
    out = apply_modality_scenario(clients, "mix", rate, 0, seed=1)
    # Assert: every client is one modality kind; kinds ~ rate/2, rate/2, 1 - rate over 200 clients (sd <= 0.035).
    kinds = []
    for rows in out:
        assert len({modality_of(r) for r in rows}) == 1
        kinds.append(modality_of(rows[0]))
    assert kinds.count(TEXT_ONLY) / 200 == pytest.approx(rate / 2, abs=0.1)
    assert kinds.count(IMAGE_ONLY) / 200 == pytest.approx(rate / 2, abs=0.1)
    assert kinds.count(BOTH) / 200 == pytest.approx(1 - rate, abs=0.1)


def test_single_splits_image_clients_from_text_clients() -> None:
    # Execute
    out = apply_modality_scenario(_clients(5, 3), "single", rate=0.0, num_image_clients=2, seed=0)
    # Assert: clients 0-1 keep the image and get the generic prompt; 2-4 keep the question only.
    for rows in out[:2]:
        assert all(r["image"] is IMAGE and r["question"] == "Answer the question about the image." for r in rows)
        assert modality_counts(rows) == {BOTH: 0, IMAGE_ONLY: 3, TEXT_ONLY: 0}
    for rows in out[2:]:
        assert all(r["image"] is None and r["question"].startswith("q") for r in rows)
        assert modality_counts(rows) == {BOTH: 0, IMAGE_ONLY: 0, TEXT_ONLY: 3}


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


def test_dropping_the_image_also_empties_images() -> None:
    row = with_modality({**_row(0), "images": [IMAGE, IMAGE]}, TEXT_ONLY)
    assert row["image"] is None and row["images"] == []
    assert row["question"] == "q0?" and row["metadata"]["modality"] == TEXT_ONLY


def test_a_row_without_image_keeps_its_text_even_when_image_only() -> None:
    row = with_modality({**_row(0), "image": None}, IMAGE_ONLY)
    assert row["question"] == "q0?" and row["metadata"]["modality"] == TEXT_ONLY


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"image": IMAGE, "question": "q"}, BOTH),
        ({"image": IMAGE, "question": ""}, IMAGE_ONLY),
        ({"image": None, "question": "q"}, TEXT_ONLY),
        ({"image": None, "images": [IMAGE], "question": "q"}, BOTH),
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
