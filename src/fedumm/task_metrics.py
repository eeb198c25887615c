"""Task metrics beyond VQA accuracy: classification and captioning, plus per-group summaries.

- classification: accuracy and macro-F1 (scikit-learn) over normalised answers; ROC-AUC
  (scikit-learn) from a positive-class score, the primary metric of Hateful Memes
  (Kiela et al. 2020, "The Hateful Memes Challenge", arXiv:2005.04790);
- captioning: BLEU-4 and CIDEr-D from pycocoevalcap (the COCO caption evaluation, Chen et
  al. 2015, arXiv:1504.00325), ROUGE-L from Google's rouge-score;
- ``summarize_task``: the task's metrics overall and broken down by answer type and by
  client where the records carry ``answer_type`` / ``client_id``.

Class answers are compared after the VQA answer normalisation of ``fedumm.evaluate``
("Yes." == "yes"), since generative models answer in free text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from rouge_score.rouge_scorer import RougeScorer
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from fedumm.evaluate import normalize_answer, summarize

__all__ = [
    "PRIMARY_METRIC",
    "TASKS",
    "accuracy",
    "bleu4",
    "caption_tokens",
    "cider_d",
    "macro_f1",
    "roc_auc",
    "rouge_l",
    "summarize_task",
]

Task = Literal["vqa", "classification", "caption"]
TASKS: tuple[str, ...] = ("vqa", "classification", "caption")
#: The number a run reports, plots and compares for each task.
PRIMARY_METRIC: dict[str, str] = {"vqa": "vqa_accuracy", "classification": "accuracy", "caption": "cider_d"}

# Words with an inner apostrophe stay whole ("don't"); all other punctuation separates and
# is dropped, as the COCO evaluation's PTB tokenizer does, but without its Java dependency.
_CAPTION_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def _check_lengths(first: Sequence, second: Sequence, names: str) -> None:
    if len(first) != len(second):
        raise ValueError(f"{names}: lengths differ ({len(first)} vs {len(second)})")
    if not first:
        raise ValueError(f"{names}: empty; need at least one sample")


def accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Share of predictions equal to the label after answer normalisation (sklearn accuracy_score)."""
    _check_lengths(predictions, labels, "predictions and labels")
    return float(accuracy_score([normalize_answer(x) for x in labels], [normalize_answer(x) for x in predictions]))


def macro_f1(predictions: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-class F1 over the classes in ``labels`` (sklearn f1_score, macro).

    Sokolova & Lapalme (2009), "A systematic analysis of performance measures for
    classification tasks". A prediction outside the label set counts as a miss of its true
    class but adds no class of its own, so free-text answers cannot dilute the average.
    A class never predicted has F1 0.
    """
    _check_lengths(predictions, labels, "predictions and labels")
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
    _check_lengths(scores, labels, "scores and labels")
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


def caption_tokens(text: str) -> str:
    """Lowercased words joined by single spaces, punctuation dropped ("A dog, running." -> "a dog running")."""
    return " ".join(_CAPTION_TOKEN.findall(text.lower()))


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's {id: [references]} and {id: [prediction]}, tokenised."""
    _check_lengths(predictions, references, "predictions and references")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"references[{empty[0]}] is empty; every caption needs at least one reference")
    gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [caption_tokens(p)] for i, p in enumerate(predictions)}
    return gts, res


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002, ACL), as in the COCO caption evaluation (pycocoevalcap).

    Clipped 1- to 4-gram precisions pooled over the corpus, geometric mean, brevity penalty
    against the closest reference length. 1.0 for captions identical to a reference.
    """
    gts, res = _coco_inputs(predictions, references)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), rouge-score.

    Per caption: longest common subsequence of tokens, P = LCS/|prediction|,
    R = LCS/|reference|, F1 = 2PR/(P+R); the best reference counts. rouge-score's tokenizer
    keeps only ASCII letters and digits.
    """
    _check_lengths(predictions, references, "predictions and references")
    scorer = RougeScorer(["rougeL"])
    total = 0.0
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"references[{i}] is empty; every caption needs at least one reference")
        total += scorer.score_multi(list(refs), prediction)["rougeL"].fmeasure
    return total / len(predictions)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"), pycocoevalcap.

    TF-IDF weighted 1- to 4-gram cosine similarity with the references, with clipped
    counts and a Gaussian length penalty (sigma 6), times 10, averaged over captions. The
    IDF comes from the references of the captions scored together, so a single caption
    (one image) scores 0: score a corpus.
    """
    gts, res = _coco_inputs(predictions, references)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def _field(records: Sequence[Mapping], key: str, fallback: str | None = None) -> list[Any]:
    """Each record's ``key`` (or ``fallback``); a missing one is an error naming the record."""
    values = []
    for i, record in enumerate(records):
        if key in record:
            values.append(record[key])
        elif fallback is not None and fallback in record:
            values.append(record[fallback])
        else:
            also = f" or {fallback!r}" if fallback else ""
            raise ValueError(f"record {i} (0-based) has no {key!r}{also} (has {sorted(record)})")
    return values


def _vqa_metrics(records: Sequence[Mapping], positive_label: str) -> dict[str, Any]:
    summary = summarize(records)
    return {"vqa_accuracy": summary["vqa_accuracy"], "exact_match": summary["exact_match"]}


def _classification_metrics(records: Sequence[Mapping], positive_label: str) -> dict[str, Any]:
    predictions = [str(p) for p in _field(records, "prediction")]
    # The model answers in words, so the answer text is the class; a numeric "label" column
    # (Hateful Memes' 0/1) is only the fallback for rows that carry no answer.
    labels = [str(x) for x in _field(records, "multiple_choice_answer", "label")]
    out: dict[str, Any] = {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels)}
    if any("score" in r for r in records):
        scores = _field(records, "score")
        truth = {normalize_answer(x) == normalize_answer(positive_label) for x in labels}
        # Undefined with one class (a small client or answer type may hold only one): None.
        out["roc_auc"] = roc_auc(scores, labels, positive_label) if len(truth) == 2 else None
    return out


def _caption_metrics(records: Sequence[Mapping], positive_label: str) -> dict[str, Any]:
    predictions = [str(p) for p in _field(records, "prediction")]
    references = [list(refs) for refs in _field(records, "references", "answers")]
    return {
        "bleu4": bleu4(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "cider_d": cider_d(predictions, references),
    }


_METRICS: dict[str, Callable[[Sequence[Mapping], str], dict[str, Any]]] = {
    "vqa": _vqa_metrics,
    "classification": _classification_metrics,
    "caption": _caption_metrics,
}
_BREAKDOWNS: tuple[tuple[str, str], ...] = (("answer_type", "by_answer_type"), ("client_id", "by_client"))


def summarize_task(records: Iterable[Mapping], task: Task, positive_label: str = "yes") -> dict[str, Any]:
    """The task's metrics overall, and per answer type / per client where records carry them.

    Records hold "prediction" and, by task: vqa "answers" and "multiple_choice_answer"
    (VQA v2 accuracy and exact match, ``fedumm.evaluate``); classification
    "multiple_choice_answer" (or "label") and optionally "score", a positive-class score for ROC-AUC;
    caption "references" (or "answers"). Records without the grouping key go to group
    "unknown". Groups are sorted by name; ROC-AUC is None in a group with one class only.

    Returns:
        ``{"task", "n", <metrics>, "by_answer_type"?: {type: {"n", <metrics>}}, "by_client"?: {...}}``.

    Raises:
        ValueError: if the task is unknown, there are no records, or a record lacks a field.
    """
    if task not in _METRICS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    rows = list(records)
    if not rows:
        raise ValueError(f"summarize_task({task!r}): no records")
    compute = _METRICS[task]
    out: dict[str, Any] = {"task": task, "n": len(rows), **compute(rows, positive_label)}
    for key, name in _BREAKDOWNS:
        if any(key in r for r in rows):
            groups: dict[Any, list[Mapping]] = {}
            for r in rows:
                groups.setdefault(r.get(key, "unknown"), []).append(r)
            out[name] = {
                group: {"n": len(members), **compute(members, positive_label)}
                # Numbers in numeric order (client 2 before 10), then names.
                for group, members in sorted(groups.items(), key=lambda item: (isinstance(item[0], str), item[0]))
            }
    return out
