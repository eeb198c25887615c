"""What a client tells the server about its data before round 1: k-anonymous counts, never rows.

``data_stats`` runs on the client (a FLARE site, or any remote client). It names a label or an
answer only when at least ``min_label_count`` (k, ``engine.min_label_count``) of its rows share
it; rarer ones are only counted, pooled into ``other_label_count`` / ``other_answer_count``.
The server checks each reply (``check_stats``: shape, types, bounds, totals; O(distinct
labels)), rebuilds the partition summary (``partition_from_stats``) and pools the answer
counts for the majority-answer baseline (``pooled_answer_counts``; the pooled rest is not an
answer, so the baseline is the majority over the answers shared by >= k rows of a site).

The reply (JSON, in ``FLModel.meta``)::

    size                 int        rows of the client (train + test)
    train_size           int        its training rows
    min_label_count      int        the k it applied
    label_counts         [[label, n]]  partition labels (data.partition.label_column) held by >= k rows
    other_label_count    int        rows whose label fewer than k rows share
    answer_counts        {answer: n}   normalised training answers held by >= k training rows
    other_answer_count   int        training rows whose answer fewer than k rows share
    task_answer_counts   {task: {answer: n}}  the same per the rows' task column ("": rows
                                    without one), each answer held by >= k training rows of its task
    modality_counts      {modality: n} rows per "image+text" / "image" / "text" / "none"
    skipped_rows_by_file {file: n}  broken rows skipped while loading, by file *basename*
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedumm.data.config import DataConfig
from fedumm.data.modality import BOTH, MODALITIES, modality_counts
from fedumm.data.partition import PartitionStats, column_values
from fedumm.errors import DataError
from fedumm.federation.transport import SetupInfo
from fedumm.metrics import normalize_answer

# What the server accepts from one client.
MAX_LABELS = 10_000  # distinct labels (and distinct answers)
MAX_ROWS = 1_000_000_000  # rows of one client
MAX_FILES = 1_000  # files with skipped rows
MAX_TEXT = 1_000  # characters of one label, answer or file name
MAX_TASKS = 100  # tasks of one client's rows

FIELDS = (
    "size",
    "train_size",
    "min_label_count",
    "label_counts",
    "other_label_count",
    "answer_counts",
    "other_answer_count",
    "task_answer_counts",
    "modality_counts",
    "skipped_rows_by_file",
)


def data_stats(
    train: Sequence[Mapping],
    test: Sequence[Mapping],
    data: DataConfig,
    skipped_by_file: Mapping[str, int] | None = None,
    *,
    min_label_count: int,
) -> dict[str, Any]:
    """The client's setup reply (module docstring): sizes, the partition label counts over all
    its rows and the normalised answer counts of its training rows, each naming only values
    shared by >= ``min_label_count`` rows; modality counts; skipped rows per file basename
    (the folders stay at the site)."""
    if min_label_count < 1:
        raise ValueError(f"min_label_count must be >= 1, got {min_label_count}")
    rows = list(train) + list(test)
    labels, other_labels = _k_anonymous(
        Counter(column_values(rows, data.partition.label_column, "data.partition.label_column")), min_label_count
    )
    answers, other_answers = _k_anonymous(
        Counter(normalize_answer(str(row["multiple_choice_answer"])) for row in train), min_label_count
    )
    by_task: dict[str, Counter[str]] = {}
    for row in train:
        by_task.setdefault(str(row.get("task") or ""), Counter())[
            normalize_answer(str(row["multiple_choice_answer"]))
        ] += 1
    task_answers = {task: _k_anonymous(counts, min_label_count)[0] for task, counts in by_task.items()}
    skipped: Counter[str] = Counter()
    for name, n in (skipped_by_file or {}).items():
        skipped[_file_name(name)] += int(n)
    return {
        "size": len(rows),
        "train_size": len(train),
        "min_label_count": min_label_count,
        "label_counts": [[_jsonable(k), v] for k, v in labels.items()],
        "other_label_count": other_labels,
        "answer_counts": answers,
        "other_answer_count": other_answers,
        "task_answer_counts": {task: counts for task, counts in task_answers.items() if counts},
        "modality_counts": modality_counts(rows),
        "skipped_rows_by_file": dict(skipped),
    }


def _file_name(source: Any) -> str:
    """A source's last path component ("/data/site/train.jsonl" -> "train.jsonl"; an ``org/set:split``
    dataset -> "set:split"): its folders stay at the site."""
    return str(source).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "?"


def _k_anonymous(counts: Counter, k: int) -> tuple[dict, int]:
    """(the values at least ``k`` rows share with their counts, the rows of all the others)."""
    shared = {value: n for value, n in counts.items() if n >= k}
    return shared, sum(counts.values()) - sum(shared.values())


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def check_stats(stats: Any, site: str, min_label_count: int) -> None:
    """Raise ``DataError`` naming ``site`` and the field unless ``stats`` is a well-formed setup
    reply made with ``min_label_count``: the fields of ``FIELDS`` only, non-negative integer
    counts, at most ``MAX_LABELS`` labels (answers) each held by >= k rows, counts adding up to
    ``size`` / ``train_size``. O(distinct labels): the count lists' lengths are checked first."""

    # The messages never repeat a reply's texts (a leaked label stays out of the server's logs).
    def fail(name: str, problem: str) -> DataError:
        return DataError(f"site {site}: setup reply field {name!r}: {problem}")

    if not isinstance(stats, Mapping):
        raise DataError(f"site {site}: setup reply is a {type(stats).__name__}, expected a mapping of {FIELDS}")
    missing, extra = [f for f in FIELDS if f not in stats], sorted(map(str, set(stats) - set(FIELDS)))
    if missing:
        raise fail(missing[0], "missing")
    if extra:
        name = extra[0] if re.fullmatch(r"\w{1,40}", extra[0]) else "?"  # an identifier, else unnamed
        raise fail(name, f"not a setup field (expected {', '.join(FIELDS)})")

    def count(name: str, value: Any, upper: int = MAX_ROWS) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(name, f"a {type(value).__name__} where an integer count belongs")
        if not 0 <= value <= upper:
            raise fail(name, f"{value} is outside [0, {upper}]")
        return value

    def text(name: str, value: Any) -> str:
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise fail(name, f"a name is not a text of at most {MAX_TEXT} characters")
        return value

    size = count("size", stats["size"])
    train_size = count("train_size", stats["train_size"], size)
    if stats["min_label_count"] != min_label_count or isinstance(stats["min_label_count"], bool):
        raise fail(
            "min_label_count",
            f"not the job's engine.min_label_count {min_label_count}",
        )

    def histogram(name: str, pairs: Any, other_name: str, total: int, total_name: str) -> None:
        if not isinstance(pairs, Sequence) or isinstance(pairs, (str, bytes)) or len(pairs) > MAX_LABELS:
            raise fail(name, f"expected at most {MAX_LABELS} [value, count] entries")
        seen: set = set()
        summed = count(other_name, stats[other_name])
        for i, pair in enumerate(pairs):
            if not isinstance(pair, Sequence) or isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise fail(name, f"entry {i} is not a [value, count] pair")
            value, n = pair
            if isinstance(value, str):
                text(name, value)
            elif value is not None and not isinstance(value, (int, float)):
                raise fail(name, f"entry {i}: a {type(value).__name__} is not a text, a number or null")
            elif isinstance(value, float) and not math.isfinite(value):
                raise fail(name, f"entry {i}: {value} is not a finite number")
            if value in seen:
                raise fail(name, f"entry {i} repeats an earlier value")
            seen.add(value)
            if count(name, n) < min_label_count:
                raise fail(name, f"entry {i} is held by {n} rows, fewer than engine.min_label_count {min_label_count}")
            summed += n
        if summed != total:
            raise fail(name, f"counts plus {other_name} add up to {summed}, not {total_name} {total}")

    histogram("label_counts", stats["label_counts"], "other_label_count", size, "size")
    answers = stats["answer_counts"]
    if not isinstance(answers, Mapping):
        raise fail("answer_counts", f"is a {type(answers).__name__}, expected {{answer: count}}")
    if len(answers) > MAX_LABELS:
        raise fail("answer_counts", f"{len(answers)} answers, more than {MAX_LABELS}")
    for answer in answers:
        text("answer_counts", answer)
    histogram("answer_counts", list(answers.items()), "other_answer_count", train_size, "train_size")
    by_task = stats["task_answer_counts"]
    if not isinstance(by_task, Mapping) or len(by_task) > MAX_TASKS:
        raise fail("task_answer_counts", f"expected at most {MAX_TASKS} {{task: {{answer: count}}}} entries")
    entries = 0
    tagged = 0
    for task, counts in by_task.items():
        text("task_answer_counts", task)
        if not isinstance(counts, Mapping):
            raise fail(
                "task_answer_counts", f"a task's counts are a {type(counts).__name__}, expected {{answer: count}}"
            )
        entries += len(counts)
        if entries > MAX_LABELS:
            raise fail("task_answer_counts", f"more than {MAX_LABELS} answers")
        for answer, n in counts.items():
            text("task_answer_counts", answer)
            if count("task_answer_counts", n) < min_label_count:
                raise fail(
                    "task_answer_counts",
                    f"an answer held by {n} rows, fewer than engine.min_label_count {min_label_count}",
                )
            tagged += n
    if tagged > train_size:
        raise fail("task_answer_counts", f"counts add up to {tagged}, more than train_size {train_size}")

    modalities = stats["modality_counts"]
    if not isinstance(modalities, Mapping) or set(modalities) != set(MODALITIES):
        raise fail("modality_counts", f"expected counts of exactly {', '.join(MODALITIES)}")
    if sum(count("modality_counts", n) for n in modalities.values()) != size:
        raise fail("modality_counts", f"counts add up to {sum(modalities.values())}, not size {size}")

    skipped = stats["skipped_rows_by_file"]
    if not isinstance(skipped, Mapping) or len(skipped) > MAX_FILES:
        raise fail("skipped_rows_by_file", f"expected at most {MAX_FILES} {{file name: count}} entries")
    for name, n in skipped.items():
        if "/" in text("skipped_rows_by_file", name) or "\\" in name:
            raise fail("skipped_rows_by_file", "a path among the names; sites send file names only")
        count("skipped_rows_by_file", n)


_OTHER = object()  # the pooled rare labels, as one category of the skew (never a real label)


@dataclass(frozen=True)
class PooledPartitionStats(PartitionStats):
    """``PartitionStats`` rebuilt from k-anonymous counts: ``other_label_counts[c]`` rows of
    client c hold a label fewer than ``min_label_count`` of its rows share (counted, not named;
    a label's count is 0 at a client that pooled it). The skew counts them as one label."""

    other_label_counts: list[int] = field(default_factory=list)
    min_label_count: int = 1

    def skew(self) -> float:
        counts = [{**c, _OTHER: o} for c, o in zip(self.label_counts, self.other_label_counts)]
        return PartitionStats(self.sizes, counts, [*self.labels, _OTHER]).skew()

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["min_label_count"] = self.min_label_count
        out["other_label_counts"] = list(self.other_label_counts)
        return out


def partition_from_stats(stats: Sequence[Mapping[str, Any]], sites: Sequence[str] | None = None) -> PartitionStats:
    """``PartitionStats`` from the clients' (checked) replies, in client-id order, with the
    extras the in-process partition has: modality counts when some row lacks a modality, and
    skipped rows per file. With ``sites`` (site placement: each site loaded its own files) the
    sites' skipped rows are listed as ``"<site>: <file>"``; without (partition placement) every
    client loaded the same ``data.*`` and reports the same skips, counted once. Where a client
    pooled rare labels, a ``PooledPartitionStats`` (``partition.json`` adds ``min_label_count``
    and ``other_label_counts``); else the plain summary, as the in-process engine writes it."""
    counts = [{label: n for label, n in s["label_counts"]} for s in stats]
    labels = sorted({label for c in counts for label in c}, key=str)
    modalities = [dict(s.get("modality_counts", {})) for s in stats]
    if sites is None:
        skipped = dict(stats[0].get("skipped_rows_by_file", {})) if stats else {}
    else:
        skipped = {
            f"{site}: {name}": n
            for site, s in zip(sites, stats)
            for name, n in s.get("skipped_rows_by_file", {}).items()
        }
    fields = {
        "sizes": [int(s["size"]) for s in stats],
        "label_counts": [{label: c.get(label, 0) for label in labels} for c in counts],
        "labels": labels,
    }
    others = [int(s.get("other_label_count", 0)) for s in stats]
    if any(others):
        partition = PooledPartitionStats(
            **fields, other_label_counts=others, min_label_count=int(stats[0]["min_label_count"])
        )
    else:
        partition = PartitionStats(**fields)
    return partition.with_extras(
        modality_counts=modalities if any(m.get(BOTH, 0) != sum(m.values()) for m in modalities) else None,
        skipped_rows_by_file=skipped,
    )


def pooled_answer_counts(stats: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The clients' named training answer counts summed; the pooled ``other_answer_count`` is
    left out (not an answer). With every answer held by >= k rows of each client, these are
    the counts over the pooled training rows."""
    pooled: Counter[str] = Counter()
    for s in stats:
        pooled.update({str(answer): int(n) for answer, n in s["answer_counts"].items()})
    return dict(pooled)


def pooled_task_answer_counts(stats: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """The clients' named training answer counts per task, summed (``pooled_answer_counts`` per task)."""
    pooled: dict[str, Counter[str]] = {}
    for s in stats:
        for task, counts in s["task_answer_counts"].items():
            pooled.setdefault(str(task), Counter()).update({str(a): int(n) for a, n in counts.items()})
    return {task: dict(counts) for task, counts in pooled.items()}


@dataclass
class SiteSetupInfo(SetupInfo):
    """``SetupInfo`` from the clients' replies: ``train_rows`` counts the pooled answers too."""

    train_size: int = 0

    @property
    def train_rows(self) -> int:
        return self.train_size


def setup_from_replies(
    replies: Mapping[str, Any], sites: Sequence[str], min_label_count: int, by_site: bool
) -> SiteSetupInfo:
    """Check every site's reply (``check_stats``), then the partition summary (skipped rows
    named by site when ``by_site``) and the pooled answer counts; ``sites`` in client-id order."""
    for site in sites:
        if site not in replies:
            raise DataError(f"site {site}: no setup reply")
        check_stats(replies[site], site, min_label_count)
    stats = [replies[site] for site in sites]
    return SiteSetupInfo(
        partition_from_stats(stats, list(sites) if by_site else None),
        pooled_answer_counts(stats),
        pooled_task_answer_counts(stats),
        train_size=sum(int(s["train_size"]) for s in stats),
    )
