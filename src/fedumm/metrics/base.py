"""What every task shares: the ``Task`` type, the per-group breakdowns, record fields and the majority answer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedumm.metrics.vqa import normalize_answer

__all__ = ["Task", "majority_answer", "majority_from_counts"]

#: One group's metrics: ``(records, positive_label) -> {metric: value}``.
GroupMetrics = Callable[[Sequence[Mapping], str], dict[str, Any]]
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


@dataclass(frozen=True)
class Task:
    """An evaluation task: its metrics, the number runs report, and its majority-answer baseline.

    Attributes:
        name: the ``eval.task`` value.
        primary_metric: the metric a run reports, plots and compares.
        metrics: one group's metrics, ``(records, positive_label) -> dict``.
        baseline_score: the score of always giving one answer on the test rows; None: no baseline.
        bounded: False when the primary metric is not a fraction of 1 (CIDEr-D).
        scores_choices: True when the model host also scores the label choices (for ROC-AUC).
    """

    name: str
    primary_metric: str
    metrics: GroupMetrics
    baseline_score: BaselineScore | None = None
    bounded: bool = True
    scores_choices: bool = False

    def summarize(self, records: Iterable[Mapping], positive_label: str = "yes") -> dict[str, Any]:
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
        out: dict[str, Any] = {"task": self.name, "n": len(rows), **self.metrics(rows, positive_label)}
        for key, name in _BREAKDOWNS:
            if any(key in r for r in rows):
                groups: dict[Any, list[Mapping]] = {}
                for r in rows:
                    groups.setdefault(r.get(key, "unknown"), []).append(r)
                out[name] = {
                    group: {"n": len(members), **self.metrics(members, positive_label)}
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
