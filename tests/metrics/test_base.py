"""Tests for fedumm.metrics.base: the majority answer, from rows and from counts, and ``Task.baseline``."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from fedumm.metrics import get_task
from fedumm.metrics.base import majority_answer, majority_from_counts
from fedumm.metrics.classification import accuracy
from fedumm.metrics.vqa import normalize_answer, vqa_accuracy


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        (["yes", "no", "yes"], "yes"),
        # "two" and "2" count as the same answer: "2" x3 beats "yes" x2.
        (["yes", "two", "2", "yes", "2"], "2"),
        # Tie (2 each): lexicographically smallest wins.
        (["yes", "no", "no", "yes"], "no"),
        (["zebra", "apple", "mango"], "apple"),
        (["The Dog."], "dog"),
    ],
)
def test_majority_answer(answers: list[str], expected: str) -> None:
    # Prepare / Execute
    result = majority_answer(answers)

    # Assert
    assert result == expected


def test_majority_answer_accepts_generator() -> None:
    # Prepare
    answers = (a for a in ["cat", "dog", "dog"])

    # Execute
    result = majority_answer(answers)

    # Assert
    assert result == "dog"


def test_majority_answer_empty_raises() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match="at least one"):
        majority_answer([])


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ({"yes": 2, "no": 1}, "yes"),
        # Raw answers pool their counts after normalisation: "2" x3 beats "yes" x2.
        ({"yes": 2, "two": 1, "2": 2}, "2"),
        # Tie (2 each): lexicographically smallest wins, as majority_answer does on rows.
        ({"yes": 2, "no": 2}, "no"),
        # Tie after pooling ("D." + "d" = 2 vs "c" = 2); zero counts are no answers.
        ({"D.": 1, "d": 1, "c": 2, "aardvark": 0}, "c"),
    ],
)
def test_majority_from_counts(counts: dict[str, int], expected: str) -> None:
    # Prepare: the same answers as rows, one entry per sample.
    rows = [answer for answer, n in counts.items() for _ in range(n)]
    # Execute / Assert
    assert majority_from_counts(counts) == expected
    assert majority_answer(rows) == expected


@pytest.mark.parametrize("counts", [{}, {"yes": 0}])
def test_majority_from_counts_empty_raises(counts: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        majority_from_counts(counts)


def test_majority_from_counts_negative_raises() -> None:
    with pytest.raises(ValueError, match="counts must be >= 0"):
        majority_from_counts({"yes": 3, "no": -1})


def test_vqa_baseline_from_counts() -> None:
    # Prepare: "yes" 3 + "Yes." 1 = 4 beats "no" 2.
    counts = {"yes": 3, "Yes.": 1, "no": 2, "2": 1}
    test = [{"answers": ["yes"] * 10}, {"answers": ["yes"] + ["no"] * 9}, {"answers": ["no"] * 10}]
    # Execute
    answer, score = get_task("vqa").baseline(counts, test)
    # Assert: VQA accuracy 1.0, 0.3 (one annotator), 0.0.
    assert answer == "yes"
    assert score == pytest.approx((1.0 + 0.3 + 0.0) / 3)


def test_classification_baseline_from_counts() -> None:
    # Prepare: "dog" 5 beats "cat" 2; "Dog." is "dog" after normalisation.
    test = [{"multiple_choice_answer": x} for x in ["dog", "Dog.", "cat", "bird"]]
    # Execute / Assert
    assert get_task("classification").baseline({"cat": 2, "dog": 5}, test) == ("dog", 0.5)


def test_caption_baseline_has_no_score() -> None:
    # The answer is still the normalised majority, as today; a caption has no majority score.
    assert get_task("caption").baseline({"a dog": 3, "a cat": 1}, [{"answers": ["a dog"]}]) == ("dog", None)


def test_baseline_tie_is_broken_like_majority_answer() -> None:
    # Prepare: "no" and "yes" 2 each; majority_answer on the rows picks "no" (smaller string).
    counts = {"yes": 2, "no": 2}
    test = [
        {"multiple_choice_answer": "no", "answers": ["no"] * 10},
        {"multiple_choice_answer": "yes", "answers": ["yes"] * 10},
    ]
    # Execute / Assert
    assert majority_answer(["yes", "no", "no", "yes"]) == "no"
    assert get_task("vqa").baseline(counts, test) == ("no", 0.5)
    assert get_task("classification").baseline(counts, test) == ("no", 0.5)


@pytest.mark.parametrize(("task", "score"), [("vqa", 0.0), ("classification", 0.0), ("caption", None)])
@pytest.mark.parametrize("counts", [{}, {"yes": 0}])
def test_baseline_of_empty_counts(task: str, score: float | None, counts: dict[str, int]) -> None:
    test = [{"multiple_choice_answer": "yes", "answers": ["yes"]}]
    assert get_task(task).baseline(counts, test) == ("", score)


@pytest.mark.parametrize(("task", "score"), [("vqa", 0.0), ("classification", 0.0), ("caption", None)])
def test_baseline_without_test_rows(task: str, score: float | None) -> None:
    assert get_task(task).baseline({"yes": 1}, []) == ("yes", score)


def _row_based_baseline(train: list[dict], test: list[dict], task: str) -> tuple[str, float | None]:
    """The pre-registry formula on one row per training sample (engines.simulation.majority_baseline_accuracy)."""
    counts = Counter(normalize_answer(row["multiple_choice_answer"]) for row in train)
    answer = min(counts.items(), key=lambda item: (-item[1], item[0]))[0]
    if not test or task == "caption":
        return answer, None if task == "caption" else 0.0
    if task == "classification":
        labels = [row["multiple_choice_answer"] for row in test]
        return answer, accuracy([answer] * len(labels), labels)
    return answer, sum(vqa_accuracy(answer, row["answers"]) for row in test) / len(test)


# Raw spellings that normalise alike, so counts pool and ties are frequent.
_VOCAB = ["yes", "Yes.", "no", "No!", "2", "two", "the dog", "dog", "a cat", "cat", "red ball", "Red Ball"]


@pytest.mark.parametrize("task", ["vqa", "classification", "caption"])
@pytest.mark.parametrize("seed", range(10))
def test_baseline_from_counts_equals_row_based_formula(task: str, seed: int) -> None:
    # Prepare: random small counts (ties likely) and random test rows.
    rng = random.Random(seed)
    counts = {answer: rng.randint(0, 4) for answer in rng.sample(_VOCAB, rng.randint(1, len(_VOCAB)))}
    if not any(counts.values()):
        counts[_VOCAB[0]] = 1
    train = [{"multiple_choice_answer": answer} for answer, n in counts.items() for _ in range(n)]
    rng.shuffle(train)
    test = [
        {"multiple_choice_answer": rng.choice(_VOCAB), "answers": [rng.choice(_VOCAB) for _ in range(10)]}
        for _ in range(rng.randint(1, 30))
    ]
    # Execute / Assert: identical answer and score, not merely close.
    assert get_task(task).baseline(counts, test) == _row_based_baseline(train, test, task)
