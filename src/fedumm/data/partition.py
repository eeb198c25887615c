"""Split sample indices across federated clients: IID or label-skewed (Dirichlet).

References:
    Hsu, Qi & Brown (2019), "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification", arXiv:1909.06335 — the Dirichlet label scheme,
    also used by Flower's ``DirichletPartitioner``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from fedumm.errors import DataError


def _check_feasible(num_samples: int, num_clients: int, min_samples: int) -> None:
    """Validate client counts and fail early when min_samples cannot possibly be met."""
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    if num_samples < num_clients * min_samples:
        raise DataError(
            f"cannot give each of {num_clients} clients at least {min_samples} samples "
            f"from only {num_samples} samples; lower data.partition.min_samples or use fewer clients"
        )


def _sorted_parts(parts: Sequence[np.ndarray]) -> list[list[int]]:
    """Plain, ascending Python int lists (stable to compare, JSON-friendly)."""
    return [sorted(int(i) for i in part) for part in parts]


def partition_iid(num_samples: int, num_clients: int, seed: int, min_samples: int = 1) -> list[list[int]]:
    """Shuffle ``range(num_samples)`` and cut it into ``num_clients`` near-equal parts.

    Part sizes differ by at most one; each part is sorted ascending.

    Raises:
        ValueError: if num_clients < 1 or min_samples < 0.
        DataError: if num_samples < num_clients * min_samples.
    """
    _check_feasible(num_samples, num_clients, min_samples)
    order = np.random.default_rng(seed).permutation(num_samples)
    return _sorted_parts(np.array_split(order, num_clients))


def _indices_by_label(labels: Sequence[Hashable]) -> list[np.ndarray]:
    """Indices of each label, labels in first-occurrence order (deterministic, no sorting of mixed types)."""
    groups: dict[Hashable, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, []).append(i)
    return [np.asarray(idx, dtype=np.int64) for idx in groups.values()]


def _dirichlet_draw(
    groups: list[np.ndarray], num_clients: int, alpha: float, rng: np.random.Generator
) -> list[list[int]]:
    """One draw: split each label's shuffled indices by Dir(alpha·1) client proportions."""
    parts: list[list[int]] = [[] for _ in range(num_clients)]
    for idx in groups:
        shuffled = rng.permutation(idx)
        proportions = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(proportions)[:-1] * len(shuffled)).astype(np.int64)
        for client, chunk in enumerate(np.split(shuffled, cuts)):
            parts[client].extend(chunk.tolist())
    return parts


def partition_dirichlet(
    labels: Sequence[Hashable],
    num_clients: int,
    alpha: float,
    seed: int,
    min_samples: int = 1,
    max_tries: int = 100,
) -> list[list[int]]:
    """Label-skewed partition of ``range(len(labels))`` (Hsu, Qi & Brown 2019).

    For each label, client proportions are drawn from Dir(alpha·1) and that label's
    shuffled indices are split by them. Small ``alpha`` concentrates each label on few
    clients; large ``alpha`` approaches IID. Draws are repeated (the generator continues)
    until every client has at least ``min_samples`` samples, at most ``max_tries`` times.

    Raises:
        ValueError: if alpha is not a positive finite number, num_clients < 1,
            min_samples < 0 or max_tries < 1.
        DataError: if the minimum is impossible or not reached in ``max_tries`` draws.
    """
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number for a Dirichlet partition, got {alpha}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    _check_feasible(len(labels), num_clients, min_samples)
    groups = _indices_by_label(labels)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        parts = _dirichlet_draw(groups, num_clients, alpha, rng)
        if min(len(p) for p in parts) >= min_samples:
            return [sorted(p) for p in parts]
    raise DataError(
        f"Dirichlet partition (alpha={alpha}) could not give each of {num_clients} clients "
        f"at least {min_samples} samples in {max_tries} tries ({len(labels)} samples, "
        f"{len(groups)} labels); raise data.partition.alpha, lower data.partition.min_samples, "
        f"or use fewer clients"
    )


def partition(
    labels: Sequence[Hashable], num_clients: int, alpha: float, seed: int, min_samples: int = 1
) -> list[list[int]]:
    """Partition ``range(len(labels))``: ``alpha == 0`` means IID (as in FedUMM), ``alpha > 0`` Dirichlet.

    Raises:
        ValueError: if alpha is negative or not finite (and see the two partitioners).
        DataError: if the clients cannot each get ``min_samples`` samples.
    """
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be 0 (IID) or a positive finite number (Dirichlet), got {alpha}")
    if alpha == 0:
        return partition_iid(len(labels), num_clients, seed, min_samples)
    return partition_dirichlet(labels, num_clients, alpha, seed, min_samples)


@dataclass(frozen=True)
class PartitionStats:
    """Per-client sizes and label counts of a partition.

    ``label_counts[c]`` maps every label in ``labels`` (zeros included) to its count on client c.
    """

    sizes: list[int]
    label_counts: list[dict[Hashable, int]]
    labels: list[Hashable]

    def skew(self) -> float:
        """Size-weighted mean total-variation distance of client vs global label distribution.

        0 for a perfectly IID partition; 1 - sum(label_share**2) when every client holds a
        single label. Empty clients carry no weight.
        """
        total = sum(self.sizes)
        if total == 0:
            return 0.0
        global_share = {lab: sum(c[lab] for c in self.label_counts) / total for lab in self.labels}
        weighted = 0.0
        for size, counts in zip(self.sizes, self.label_counts):
            if size == 0:
                continue
            tv = 0.5 * sum(abs(counts[lab] / size - global_share[lab]) for lab in self.labels)
            weighted += size * tv
        return weighted / total

    def table(self) -> str:
        """A fixed-width text table: one row per client (size, per-label counts), then totals."""
        header = ["client", "size", *(str(lab) for lab in self.labels)]
        rows = [
            [str(c), str(size), *(str(counts[lab]) for lab in self.labels)]
            for c, (size, counts) in enumerate(zip(self.sizes, self.label_counts))
        ]
        totals = [sum(c[lab] for c in self.label_counts) for lab in self.labels]
        rows.append(["total", str(sum(self.sizes)), *(str(t) for t in totals)])
        widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
        return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in [header, *rows])

    def to_dict(self) -> dict:
        """JSON-serialisable summary (labels as strings)."""
        return {
            "num_clients": len(self.sizes),
            "sizes": list(self.sizes),
            "labels": [str(lab) for lab in self.labels],
            "label_counts": [{str(lab): counts[lab] for lab in self.labels} for counts in self.label_counts],
            "skew": self.skew(),
        }


def partition_stats(labels: Sequence[Hashable], parts: list[list[int]]) -> PartitionStats:
    """Count each client's samples per label.

    Raises:
        ValueError: if a part holds an index outside ``range(len(labels))``.
    """
    all_labels = sorted(set(labels), key=str)
    label_counts: list[dict[Hashable, int]] = []
    for c, part in enumerate(parts):
        bad = [i for i in part if not 0 <= i < len(labels)]
        if bad:
            raise ValueError(f"client {c} has index {bad[0]} outside 0..{len(labels) - 1}")
        counted = Counter(labels[i] for i in part)
        label_counts.append({lab: counted.get(lab, 0) for lab in all_labels})
    return PartitionStats(sizes=[len(p) for p in parts], label_counts=label_counts, labels=all_labels)
