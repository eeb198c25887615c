"""What a client tells the server about its data before round 1: counts, never rows.

``data_stats`` is computed on the client (a FLARE site, or any remote client); the server
rebuilds the partition summary with ``partition_from_stats`` and pools the answer counts for
the majority-answer baseline (``Task.baseline``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from fedumm.data.config import DataConfig
from fedumm.data.modality import BOTH, modality_counts
from fedumm.data.partition import PartitionStats, column_values


def data_stats(
    train: Sequence[Mapping],
    test: Sequence[Mapping],
    data: DataConfig,
    skipped_by_file: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """What a client tells the server about its data: counts only, never rows. Partition label
    counts and modality counts over all its rows (as ``partition.json`` counts them), the
    answer counts of its training rows (for the majority-answer baseline) and the broken rows
    its loader skipped, per file."""
    rows = list(train) + list(test)
    labels = column_values(rows, data.partition.label_column, "data.partition.label_column")
    return {
        "size": len(rows),
        "label_counts": [[_jsonable(k), v] for k, v in Counter(labels).items()],
        "answer_counts": dict(Counter(str(row["multiple_choice_answer"]) for row in train)),
        "modality_counts": modality_counts(rows),
        "skipped_rows_by_file": {str(k): int(v) for k, v in (skipped_by_file or {}).items()},
    }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def partition_from_stats(stats: Sequence[Mapping[str, Any]], sites: Sequence[str] | None = None):
    """``PartitionStats`` from the clients' reported counts (in client-id order), with the
    extras the in-process partition has: modality counts when some row lacks a modality, and
    skipped rows per file. With ``sites`` (site placement: each site loaded its own files) the
    sites' skipped rows are listed as ``"<site>: <file>"``; without (partition placement) every
    client loaded the same ``data.*`` and reports the same skips, counted once."""
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
    return PartitionStats(
        sizes=[int(s["size"]) for s in stats],
        label_counts=[{label: c.get(label, 0) for label in labels} for c in counts],
        labels=labels,
    ).with_extras(
        modality_counts=modalities if any(m.get(BOTH, 0) != sum(m.values()) for m in modalities) else None,
        skipped_rows_by_file=skipped,
    )


def pooled_answer_counts(stats: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The clients' training answer counts summed (= over the pooled training rows)."""
    pooled: Counter[str] = Counter()
    for s in stats:
        pooled.update({str(answer): int(n) for answer, n in s["answer_counts"].items()})
    return dict(pooled)
