"""Classification metrics: accuracy, macro-F1 and ROC-AUC (scikit-learn, imported on first use), and the summary.

Class answers are compared after the VQA answer normalisation ("Yes." == "yes"), since
generative models answer in free text. ROC-AUC is the primary metric of Hateful Memes
(Kiela et al. 2020, "The Hateful Memes Challenge", arXiv:2005.04790).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedumm.metrics.base import MetricOptions, check_lengths, field
from fedumm.metrics.vqa import normalize_answer

__all__ = ["accuracy", "baseline", "macro_f1", "metrics", "roc_auc"]


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions equal to the label after answer normalisation (sklearn accuracy_score)."""
    from sklearn.metrics import accuracy_score

    check_lengths(predictions, labels, "predictions and labels")
    return float(accuracy_score([normalize_answer(x) for x in labels], [normalize_answer(x) for x in predictions]))


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes in ``labels`` (sklearn f1_score, macro).

    Sokolova & Lapalme (2009), "A systematic analysis of performance measures for
    classification tasks". A prediction outside the label set counts as a miss of its true
    class but adds no class of its own, so free-text answers cannot dilute the average.
    A class never predicted has F1 0.
    """
    from sklearn.metrics import f1_score

    check_lengths(predictions, labels, "predictions and labels")
    truth = [normalize_answer(x) for x in labels]
    predicted = [normalize_answer(x) for x in predictions]
    return float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro", zero_division=0))


def roc_auc(scores: Sequence[float], labels: Sequence[str], positive_label: str = "yes") -> float:
    """Area under the ROC curve of positive-class ``scores`` (sklearn roc_auc_score).

    Hanley & McNeil (1982): the probability that a random positive scores higher than a
    random negative (ties count half). A label is positive when it normalises to
    ``positive_label``; everything else is negative.

    Raises:
        ValueError: if the lengths differ, a score is not finite, or only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    check_lengths(scores, labels, "scores and labels")
    bad = [i for i, s in enumerate(scores) if not math.isfinite(float(s))]
    if bad:
        raise ValueError(f"roc_auc: score {bad[0]} is {scores[bad[0]]!r}, expected a finite number")
    positive = normalize_answer(positive_label)
    truth = [int(normalize_answer(str(x)) == positive) for x in labels]
    if len(set(truth)) < 2:
        raise ValueError(
            f"roc_auc: needs both classes, but every label is {'positive' if truth[0] else 'negative'} "
            f"(positive_label={positive_label!r})"
        )
    return float(roc_auc_score(truth, [float(s) for s in scores]))


def metrics(records: Sequence[Mapping], options: MetricOptions | None = None) -> dict[str, Any]:
    """The classification task's metrics of one group: ``{"accuracy", "macro_f1", "roc_auc"?}``
    (``options.positive_label``: the positive class).

    Records hold "prediction", "multiple_choice_answer" (or "label") and optionally "score",
    a positive-class score; ``roc_auc`` is present when some record has one, None in a group
    with one class only.
    """
    positive_label = (options or MetricOptions()).positive_label
    predictions = [str(p) for p in field(records, "prediction")]
    # The model answers in words, so the answer text is the class; a numeric "label" column
    # (Hateful Memes' 0/1) is only the fallback for rows that carry no answer.
    labels = [str(x) for x in field(records, "multiple_choice_answer", "label")]
    out: dict[str, Any] = {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}
    if any("score" in r for r in records):
        scores = field(records, "score")
        truth = {normalize_answer(x) == normalize_answer(positive_label) for x in labels}
        # Undefined with one class (a small client or answer type may hold only one): None.
        out["roc_auc"] = roc_auc(scores, labels, positive_label) if len(truth) == 2 else None
    return out


def baseline(answer: str, test_rows: Sequence[Mapping]) -> float:
    """Baseline score: accuracy of always answering ``answer`` vs each test row's "multiple_choice_answer"."""
    # Same value as accuracy([answer] * n, labels) without building the list or importing sklearn.
    predicted = normalize_answer(answer)
    return sum(normalize_answer(row["multiple_choice_answer"]) == predicted for row in test_rows) / len(test_rows)
