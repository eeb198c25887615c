"""What every task shares: the ``Task`` type, the per-group breakdowns, record fields and the majority answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from fedumm.metrics.vqa import normalize_answer

__all__ = ["EvalHost", "MetricOptions", "Task", "majority_answer", "majority_from_counts", "predict_records"]


@dataclass(frozen=True)
class MetricOptions:
    """The run's metric settings (from ``eval``) every task's metrics receive.

    Attributes:
        positive_label: classification: the positive class (ROC-AUC).
        box_format: grounding: how boxes are written, ``normalized`` or ``pixel``.
    """

    positive_label: str = "yes"
    box_format: str = "normalized"


class EvalHost(Protocol):
    """What a task's evaluation may ask of the model host (``federation.host.ModelHost``)."""

    def predict(self, rows: Sequence[dict], batch_size: int) -> list[str]:
        """The generated answer text of each row."""
        ...

    def positive_scores(self, rows: Sequence[dict], batch_size: int) -> list[float] | None:
        """P(positive label) per row from the label choices' likelihoods; None where undefined."""
        ...


#: One group's metrics: ``(records, options) -> {metric: value}``.
GroupMetrics = Callable[[Sequence[Mapping], MetricOptions], dict[str, Any]]
#: A task's records for its rows: ``(task, host, rows, batch_size) -> records`` (rows plus what
#: the task scores, e.g. "prediction").
MakeRecords = Callable[["Task", EvalHost, Sequence[dict], int], list[dict]]
#: The score of always giving ``answer`` on ``test_rows`` (never called with no rows).
BaselineScore = Callable[[str, Sequence[Mapping]], float]

# Record key -> summary key of the breakdowns ``Task.summarize`` adds when records carry the key.
_BREAKDOWNS: tuple[tuple[str, str], ...] = (("answer_type", "by_answer_type"), ("client_id", "by_client"))


def check_lengths(first: Sequence, second: Sequence, names: str) -> None:
    """Raise ValueError unless both sequences are equally long and not empty."""
    if len(first) != len(second):
        raise ValueError(f"{names}: lengths differ ({len(first)} vs {len(second)})")
    if not first:
        raise ValueError(f"{names}: empty; need at least one sample")


def field(records: Sequence[Mapping], key: str, fallback: str | None = None) -> list[Any]:
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


def majority_from_counts(answer_counts: Mapping[str, int]) -> str:
    """Most common normalised answer given a count per raw answer; ties go to the lexicographically smallest.

    Raw answers that normalise alike pool their counts ("Yes": 2 and "yes": 1 make "yes": 3);
    zero counts are ignored. O(number of distinct answers).

    Raises:
        ValueError: if a count is negative or no count is positive.
    """
    totals: dict[str, int] = {}
    for answer, n in answer_counts.items():
        n = int(n)
        if n < 0:
            raise ValueError(f"answer count of {answer!r} is {n}; counts must be >= 0")
        if n:
            key = normalize_answer(answer)
            totals[key] = totals.get(key, 0) + n
    if not totals:
        raise ValueError("majority_answer needs at least one answer; got none")
    # Highest count first, then the smallest string, so ties do not depend on input order.
    return min(totals.items(), key=lambda item: (-item[1], item[0]))[0]


def majority_answer(answers: Iterable[str]) -> str:
    """Most common normalised answer; ties go to the lexicographically smallest.

    Used for the "always predict the training-set majority answer" baseline.

    Raises:
        ValueError: if ``answers`` is empty.
    """
    return majority_from_counts(Counter(answers))


def _group_order(item: tuple[Any, Any]) -> tuple[bool, Any]:
    # Numbers in numeric order (client 2 before 10), then names.
    return isinstance(item[0], str), item[0]


def predict_records(task: Task, host: EvalHost, rows: Sequence[dict], batch_size: int) -> list[dict]:
    """The default records of a task: each row plus the host's generated ``prediction``, and
    ``score`` (P(positive label)) where the task scores choices and the rows allow it."""
    records = [dict(row, prediction=p) for row, p in zip(rows, host.predict(rows, batch_size), strict=True)]
    scores = host.positive_scores(rows, batch_size) if task.scores_choices else None
    if scores is not None:
        for record, score in zip(records, scores, strict=True):
            record["score"] = score
    return records


@dataclass(frozen=True)
class Task:
    """An evaluation task: its metrics, the number runs report, and its majority-answer baseline.

    Attributes:
        name: the ``eval.task`` value.
        primary_metric: the metric a run reports, plots and compares.
        metrics: one group's metrics, ``(records, options) -> dict``.
        baseline_score: the score of always giving one answer on the test rows; None: no baseline.
        bounded: False when the primary metric is not a fraction of 1 (CIDEr-D).
        scores_choices: True when the model host also scores the label choices (for ROC-AUC).
        make_records: how the host evaluates the task's rows into records; the default
            (``predict_records``) generates answer text. A task that is not text generation
            (a text-to-image task: generate images, score them) brings its own.
    """

    name: str
    primary_metric: str
    metrics: GroupMetrics
    baseline_score: BaselineScore | None = None
    bounded: bool = True
    scores_choices: bool = False
    make_records: MakeRecords = predict_records

    def evaluate(self, host: EvalHost, rows: Sequence[dict], batch_size: int, options: MetricOptions) -> dict[str, Any]:
        """``summarize`` of the records ``make_records`` gets from ``host`` for ``rows`` (not empty)."""
        return self.summarize(self.make_records(self, host, rows, batch_size), options)

    def summarize(self, records: Iterable[Mapping], options: MetricOptions | None = None) -> dict[str, Any]:
        """The task's metrics overall, and per answer type / per client where records carry them.

        Records without the grouping key go to group "unknown"; groups are sorted by name
        (numbers numerically). See the task's ``metrics`` for the fields records need.

        Returns:
            ``{"task", "n", <metrics>, "by_answer_type"?: {type: {"n", <metrics>}}, "by_client"?: {...}}``.

        Raises:
            ValueError: if there are no records or a record lacks a field.
        """
        rows = list(records)
        if not rows:
            raise ValueError(f"summarize_task({self.name!r}): no records")
        options = options or MetricOptions()
        out: dict[str, Any] = {"task": self.name, "n": len(rows), **self.metrics(rows, options)}
        for key, name in _BREAKDOWNS:
            if any(key in r for r in rows):
                groups: dict[Any, list[Mapping]] = {}
                for r in rows:
                    groups.setdefault(r.get(key, "unknown"), []).append(r)
                out[name] = {
                    group: {"n": len(members), **self.metrics(members, options)}
                    for group, members in sorted(groups.items(), key=_group_order)
                }
        return out

    def baseline(self, answer_counts: Mapping[str, int], test_rows: Sequence[Mapping]) -> tuple[str, float | None]:
        """The majority answer of the training answer counts and its score on ``test_rows``.

        Same answer and score as always answering the training rows' ``majority_answer``:
        no counts give ``""``, the score is None without a baseline (caption) and 0.0 with no test rows.
        """
        no_score = None if self.baseline_score is None else 0.0
        if not any(int(n) for n in answer_counts.values()):
            return "", no_score
        answer = majority_from_counts(answer_counts)
        if self.baseline_score is None or not test_rows:
            return answer, no_score
        return answer, self.baseline_score(answer, test_rows)
