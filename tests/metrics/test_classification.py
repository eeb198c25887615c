"""Worked examples for fedumm.metrics.classification and the classification summary."""

from __future__ import annotations

import math

import pytest

from fedumm.metrics import summarize_task
from fedumm.metrics.classification import accuracy, macro_f1, roc_auc

LABELS = ["cat", "cat", "cat", "dog", "dog", "bird"]
PREDICTIONS = ["cat", "Cat.", "dog", "dog", "bird", "bird"]
# Per class: cat P=2/2 R=2/3 F1=0.8; dog P=1/2 R=1/2 F1=0.5; bird P=1/2 R=1/1 F1=2/3.
MACRO_F1 = (0.8 + 0.5 + 2 / 3) / 3


def test_accuracy_and_macro_f1_on_six_predictions() -> None:
    # Execute
    acc = accuracy(PREDICTIONS, LABELS)
    f1 = macro_f1(PREDICTIONS, LABELS)
    # Assert: "Cat." normalises to "cat"; 4 of 6 right.
    assert acc == pytest.approx(4 / 6)
    assert f1 == pytest.approx(MACRO_F1)  # 0.6556


def test_macro_f1_ignores_classes_only_predicted() -> None:
    # Prepare: "maybe" is no class; it is a miss for "yes" but adds no zero-F1 class.
    labels, predictions = ["yes", "yes", "no", "no"], ["yes", "maybe", "no", "no"]
    # Execute / Assert: yes P=1 R=1/2 F1=2/3; no P=1 R=1 F1=1.
    assert macro_f1(predictions, labels) == pytest.approx((2 / 3 + 1) / 2)


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([0.1, 0.4, 0.35, 0.8], ["no", "no", "yes", "yes"], 0.75),  # 3 of 4 positive/negative pairs ordered
        ([0.1, 0.2, 0.8, 0.9], ["no", "no", "yes", "yes"], 1.0),
        ([0.9, 0.8, 0.2, 0.1], ["no", "no", "yes", "yes"], 0.0),
        ([0.5, 0.5, 0.5, 0.5], ["no", "yes", "no", "yes"], 0.5),  # ties count half
    ],
)
def test_roc_auc_worked_examples(scores: list[float], labels: list[str], expected: float) -> None:
    assert roc_auc(scores, labels, positive_label="yes") == pytest.approx(expected)


@pytest.mark.parametrize(
    ("scores", "labels", "fragment"),
    [
        ([0.1, 0.2], ["no", "no"], "needs both classes"),
        ([0.1], ["no", "yes"], "lengths differ"),
        ([0.1, math.nan], ["no", "yes"], "score 1 is nan"),
    ],
)
def test_roc_auc_bad_inputs(scores, labels, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        roc_auc(scores, labels)


def test_summarize_classification_overall_and_by_client() -> None:
    # Prepare: the six predictions above; client 0 holds the cats, client 1 the rest.
    records = [
        {"prediction": p, "label": lab, "client_id": 0 if i < 3 else 1}
        for i, (p, lab) in enumerate(zip(PREDICTIONS, LABELS))
    ]
    # Execute
    summary = summarize_task(records, "classification")
    # Assert: client 0: acc 2/3, F1(cat) = 0.8; client 1: acc 2/3, F1 dog 2/3, bird 2/3.
    assert summary["task"] == "classification" and summary["n"] == 6
    assert summary["accuracy"] == pytest.approx(4 / 6) and summary["macro_f1"] == pytest.approx(MACRO_F1)
    assert list(summary["by_client"]) == [0, 1]
    assert summary["by_client"][0] == pytest.approx({"n": 3, "accuracy": 2 / 3, "macro_f1": 0.8})
    assert summary["by_client"][1] == pytest.approx({"n": 3, "accuracy": 2 / 3, "macro_f1": 2 / 3})
    assert "by_answer_type" not in summary and "roc_auc" not in summary


def test_summarize_binary_with_scores_gives_roc_auc_none_for_one_class_groups() -> None:
    # Prepare: Hateful-Memes-style yes/no; client 10 holds only negatives.
    records = [
        {"prediction": "no", "label": "no", "score": 0.1, "client_id": 2},
        {"prediction": "yes", "label": "no", "score": 0.4, "client_id": 2},
        {"prediction": "no", "label": "yes", "score": 0.35, "client_id": 2},
        {"prediction": "yes", "label": "yes", "score": 0.8, "client_id": 2},
        {"prediction": "no", "label": "no", "score": 0.2, "client_id": 10},
    ]
    # Execute
    summary = summarize_task(records, "classification", positive_label="yes")
    # Assert: overall pairs: positives 0.35, 0.8 vs negatives 0.1, 0.4, 0.2 -> 5 of 6 ordered.
    assert summary["roc_auc"] == pytest.approx(5 / 6)
    assert summary["accuracy"] == pytest.approx(3 / 5)
    assert list(summary["by_client"]) == [2, 10]  # numeric order
    assert summary["by_client"][2]["roc_auc"] == pytest.approx(0.75)
    assert summary["by_client"][10]["roc_auc"] is None


@pytest.mark.parametrize(
    ("records", "task", "fragment"),
    [
        ([], "classification", "no records"),
        (
            [{"prediction": "a", "label": "a"}, {"prediction": "b"}],
            "classification",
            "record 1 (0-based) has no 'multiple_choice_answer' or 'label'",
        ),
        (
            [{"prediction": "a", "label": "a", "score": 0.3}, {"prediction": "b", "label": "b"}],
            "classification",
            "record 1 (0-based) has no 'score'",
        ),
    ],
)
def test_summarize_bad_input(records: list[dict], task: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        summarize_task(records, task)
    assert fragment in str(info.value)
