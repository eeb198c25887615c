"""Split sample indices across federated clients: IID, label skew, shards, quantity skew, natural.

The partitioners follow the names and behaviour of Flower Datasets' partitioners
(``IidPartitioner``, ``DirichletPartitioner``, ``ShardPartitioner``, ``NaturalIdPartitioner``)
without depending on flwr. Every partitioner returns one ascending list of indices per client.

References:
    Hsu, Qi & Brown (2019), "Measuring the Effects of Non-Identical Data Distribution
    for Federated Visual Classification", arXiv:1909.06335 — the Dirichlet label scheme,
    also used by Flower's ``DirichletPartitioner``.
    McMahan et al. (2017), arXiv:1602.05629 — pathological shards (``partition_shards``).
    Li, Diao, Chen & He (2022), arXiv:2102.02079 — quantity skew (``partition_quantity_skew``).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fedumm.data.config import PartitionConfig
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
    Optional extras for ``partition.json``: ``modality_counts[c]`` (client c's rows per
    modality, after the modality scenario) and ``skipped_rows_by_file`` (broken rows skipped
    while loading, per file; {} = none skipped, None = not known, e.g. statistics rebuilt
    from FLARE clients that do not report them).
    """

    sizes: list[int]
    label_counts: list[dict[Hashable, int]]
    labels: list[Hashable]
    modality_counts: list[dict[str, int]] | None = None
    skipped_rows_by_file: dict[str, int] | None = None

    def with_extras(
        self, modality_counts: list[dict[str, int]] | None = None, skipped_rows_by_file: dict[str, int] | None = None
    ) -> PartitionStats:
        """A copy carrying the optional extras (None = left out of ``to_dict``)."""
        return replace(self, modality_counts=modality_counts, skipped_rows_by_file=skipped_rows_by_file)

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
        """JSON-serialisable summary (labels as strings); extras only when set."""
        out = {
            "num_clients": len(self.sizes),
            "sizes": list(self.sizes),
            "labels": [str(lab) for lab in self.labels],
            "label_counts": [{str(lab): counts[lab] for lab in self.labels} for counts in self.label_counts],
            "skew": self.skew(),
        }
        if self.modality_counts is not None:
            out["modality_counts"] = [dict(c) for c in self.modality_counts]
        if self.skipped_rows_by_file:  # left out when none were skipped: plain runs keep their file
            out.update(self.skipped_summary())
        return out

    def skipped_summary(self) -> dict:
        """``{"skipped_rows": total, "skipped_rows_by_file": {file: n}}`` for the run summary;
        both None when not known."""
        if self.skipped_rows_by_file is None:
            return {"skipped_rows": None, "skipped_rows_by_file": None}
        by_file = {str(k): int(v) for k, v in sorted(self.skipped_rows_by_file.items()) if v}
        return {"skipped_rows": sum(by_file.values()), "skipped_rows_by_file": by_file}


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


def _largest_remainder(weights: np.ndarray, total: int, floor: np.ndarray) -> np.ndarray:
    """Integers >= ``floor`` summing to ``total``, the surplus split in proportion to ``weights``.

    Hamilton's largest-remainder rounding: floors of the ideal shares first, then one more
    to the largest fractional parts, so the counts sum exactly to ``total``.
    """
    surplus = total - int(floor.sum())
    ideal = weights / weights.sum() * surplus
    counts = np.floor(ideal).astype(np.int64)
    # Stable argsort: ties go to the lower index, so the result is deterministic.
    order = np.argsort(-(ideal - counts), kind="stable")
    counts[order[: surplus - int(counts.sum())]] += 1
    return floor + counts


def _label_shards(groups: list[np.ndarray], num_shards: int) -> list[np.ndarray]:
    """Cut each label's indices into shards that never cross a label boundary.

    Every label starts with one shard; each further shard goes to the label whose shards
    are currently largest (ties: first label), which keeps shard sizes as equal as the
    labels allow, as McMahan et al.'s equal shards of the label-sorted data are. Needs
    ``len(groups) <= num_shards <= total samples``; then no shard is empty.
    """
    per_label = [1] * len(groups)
    heap = [(-len(idx), j) for j, idx in enumerate(groups)]
    heapq.heapify(heap)
    for _ in range(num_shards - len(groups)):
        _, j = heapq.heappop(heap)
        per_label[j] += 1
        heapq.heappush(heap, (-len(groups[j]) / per_label[j], j))
    return [shard for idx, k in zip(groups, per_label) for shard in np.array_split(idx, k)]


def partition_shards(
    labels: Sequence[Hashable],
    num_clients: int,
    shards_per_client: int,
    seed: int,
    min_samples: int = 1,
    max_tries: int = 100,
) -> list[list[int]]:
    """Pathological label skew: every client holds ``shards_per_client`` single-label shards.

    McMahan et al. (2017), "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (AISTATS; arXiv:1602.05629): sort by label, cut into
    ``num_clients * k`` shards, deal ``k`` shards to each client (Flower Datasets'
    ``ShardPartitioner``). Here each label is cut into its own shards (their number in
    proportion to the label's size, at least one), so no shard straddles two labels and
    every client sees at most ``k`` distinct labels. Shards are dealt by a seeded shuffle,
    re-dealt (the generator continues) until every client has ``min_samples`` samples.

    Raises:
        ValueError: if num_clients < 1, shards_per_client < 1, min_samples < 0 or max_tries < 1.
        DataError: if there are more labels than shards, fewer samples than shards, or the
            minimum is not reached in ``max_tries`` deals.
    """
    if shards_per_client < 1:
        raise ValueError(f"shards_per_client must be >= 1, got {shards_per_client}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    _check_feasible(len(labels), num_clients, min_samples)
    groups = _indices_by_label(labels)
    num_shards = num_clients * shards_per_client
    if len(groups) > num_shards:
        raise DataError(
            f"shards partition: {len(groups)} distinct labels do not fit in {num_clients} clients x "
            f"{shards_per_client} shards = {num_shards} single-label shards; raise "
            f"data.partition.shards_per_client or pick a coarser data.partition.label_column (e.g. answer_type)"
        )
    if len(labels) < num_shards:
        raise DataError(
            f"shards partition: {len(labels)} samples cannot fill {num_shards} shards "
            f"({num_clients} clients x {shards_per_client}); lower data.partition.shards_per_client"
        )
    shards = _label_shards(groups, num_shards)
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        order = rng.permutation(num_shards)
        parts = [
            np.concatenate([shards[s] for s in order[c * shards_per_client : (c + 1) * shards_per_client]])
            for c in range(num_clients)
        ]
        if min(len(p) for p in parts) >= min_samples:
            return _sorted_parts(parts)
    raise DataError(
        f"shards partition ({shards_per_client} shards per client) could not give each of {num_clients} "
        f"clients at least {min_samples} samples in {max_tries} deals ({len(labels)} samples, "
        f"{len(groups)} labels); lower data.partition.min_samples or use fewer clients"
    )


def partition_quantity_skew(
    num_samples: int, num_clients: int, alpha: float, seed: int, min_samples: int = 1
) -> list[list[int]]:
    """Quantity skew: client sizes from Dir(alpha·1), labels IID within each client.

    Li, Diao, Chen & He (2022), "Federated Learning on Non-IID Data Silos: An Experimental
    Study" (ICDE; arXiv:2102.02079), quantity-based skew: proportions q ~ Dir_N(alpha) and
    client j gets q_j of a random permutation of the samples. To honour ``min_samples``
    without re-drawing (which can loop forever for tiny alpha), every client first gets
    ``min_samples`` and the remaining samples are shared by q (largest-remainder rounding).

    Raises:
        ValueError: if alpha is not a positive finite number, num_clients < 1 or min_samples < 0.
        DataError: if num_samples < num_clients * min_samples.
    """
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha must be a positive finite number for a quantity-skew partition, got {alpha}")
    _check_feasible(num_samples, num_clients, min_samples)
    rng = np.random.default_rng(seed)
    proportions = rng.dirichlet(np.full(num_clients, alpha))
    sizes = _largest_remainder(proportions, num_samples, np.full(num_clients, min_samples, dtype=np.int64))
    order = rng.permutation(num_samples)
    return _sorted_parts(np.split(order, np.cumsum(sizes)[:-1]))


def partition_natural(values: Sequence[Hashable], min_samples: int = 1) -> list[list[int]]:
    """One client per distinct value (e.g. hospital site or source dataset), in sorted value order.

    The natural-id split of Flower Datasets' ``NaturalIdPartitioner``: client c holds every
    index whose value is the c-th smallest distinct value.

    Raises:
        ValueError: if min_samples < 0.
        DataError: if a value is None, the values cannot be sorted (mixed types), or a
            client would get fewer than ``min_samples`` samples.
    """
    if min_samples < 0:
        raise ValueError(f"min_samples must be >= 0, got {min_samples}")
    groups: dict[Hashable, list[int]] = {}
    for i, value in enumerate(values):
        if value is None:
            raise DataError(f"natural partition: row {i} (0-based) has no value (None) for the client column")
        groups.setdefault(value, []).append(i)
    try:
        keys = sorted(groups)
    except TypeError:
        kinds = sorted({type(v).__name__ for v in groups})
        raise DataError(
            f"natural partition: client column mixes value types {kinds}; use one type (e.g. all strings)"
        ) from None
    small = [(k, len(groups[k])) for k in keys if len(groups[k]) < min_samples]
    if small:
        raise DataError(
            f"natural partition: client {small[0][0]!r} has {small[0][1]} samples, fewer than the minimum "
            f"{min_samples}; lower data.partition.min_samples"
        )
    return [groups[k] for k in keys]


def heatmap_matrix(stats: PartitionStats, max_labels: int = 30) -> tuple[list[str], np.ndarray]:
    """Column names and the clients x labels count matrix a partition heatmap shows.

    With more than ``max_labels`` labels (real VQA has thousands of answers) the most
    frequent ``max_labels - 1`` are kept, by total count then name, and the rest summed
    into a final "other" column, so the figure stays readable.
    """
    if max_labels < 2:
        raise ValueError(f"max_labels must be >= 2, got {max_labels}")
    counts = np.array([[c[lab] for lab in stats.labels] for c in stats.label_counts], dtype=np.int64)
    counts = counts.reshape(len(stats.sizes), len(stats.labels))
    names = [str(lab) for lab in stats.labels]
    if len(names) <= max_labels:
        return names, counts
    totals = counts.sum(axis=0)
    keep = sorted(range(len(names)), key=lambda j: (-totals[j], names[j]))[: max_labels - 1]
    rest = [j for j in range(len(names)) if j not in set(keep)]
    matrix = np.column_stack([counts[:, keep], counts[:, rest].sum(axis=1)])
    return [names[j] for j in keep] + ["other"], matrix


def save_partition_heatmap(stats: PartitionStats, path: str | Path, max_labels: int = 30) -> Path:
    """Write a clients x labels heatmap of sample counts as a PNG; returns the path.

    Counts are written in the cells when there are at most 20 x 20 of them.
    """
    # Imported here: matplotlib costs about a second to import and only this figure needs it.
    # Figure() with savefig uses the Agg canvas directly, so no global pyplot state or display.
    from matplotlib.figure import Figure

    names, matrix = heatmap_matrix(stats, max_labels)
    num_clients = matrix.shape[0]
    fig = Figure(figsize=(max(4.0, 0.45 * len(names) + 2), max(2.5, 0.35 * num_clients + 1.5)))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(num_clients), [str(c) for c in range(num_clients)], fontsize=7)
    ax.set_xlabel("label")
    ax.set_ylabel("client")
    ax.set_title(f"samples per client and label (skew {stats.skew():.2f})", fontsize=9)
    if matrix.size and matrix.shape[0] <= 20 and matrix.shape[1] <= 20:
        threshold = matrix.max() / 2
        for (row, col), value in np.ndenumerate(matrix):
            colour = "black" if value > threshold else "white"
            ax.text(col, row, str(value), ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, format="png", dpi=100)
    return path


def column_values(rows: Sequence[Mapping], column: str, config_key: str) -> list[Hashable]:
    """Each row's value of ``column``, looked up in the row and then in its ``metadata`` dict.

    Raises:
        DataError: naming ``config_key``, the first row (0-based) without the column, and the
            keys it does have; or the first row whose value is unhashable (a list, a dict).
    """
    values: list[Hashable] = []
    for i, row in enumerate(rows):
        metadata = row.get("metadata") or {}
        if column in row:
            value = row[column]
        elif column in metadata:
            value = metadata[column]
        else:
            raise DataError(
                f"{config_key}: column {column!r} not in the training rows "
                f"(row {i} (0-based) has {sorted(row)}; metadata {sorted(metadata)})"
            )
        if not isinstance(value, Hashable):
            raise DataError(
                f"{config_key}: column {column!r} of row {i} (0-based) is a {type(value).__name__}, "
                f"expected a single value such as a string"
            )
        values.append(value)
    return values


def make_partition(config: PartitionConfig, rows: Sequence[Mapping], num_clients: int, seed: int) -> list[list[int]]:
    """Partition ``range(len(rows))`` with the method ``config.method`` names.

    ``dirichlet`` with ``alpha == 0`` is IID, as ``partition`` has always done. ``natural``
    makes one client per distinct value of ``config.column`` and needs exactly
    ``num_clients`` of them.

    Raises:
        DataError: if a needed column is missing, the natural clients do not number
            ``num_clients``, or a partitioner cannot meet ``config.min_samples``.
    """
    method = config.method
    if method == "natural":
        values = column_values(rows, str(config.column), "data.partition.column")
        parts = partition_natural(values, config.min_samples)
        if len(parts) != num_clients:
            names = sorted({str(v) for v in values})
            raise DataError(
                f"data.partition.column: column {config.column!r} has {len(parts)} distinct values "
                f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) but federation.num_clients is "
                f"{num_clients}; set federation.num_clients={len(parts)}"
            )
        return parts
    if method == "iid":
        return partition_iid(len(rows), num_clients, seed, config.min_samples)
    if method == "quantity_skew":
        return partition_quantity_skew(len(rows), num_clients, config.alpha, seed, config.min_samples)
    labels = column_values(rows, config.label_column, "data.partition.label_column")
    if method == "shards":
        return partition_shards(labels, num_clients, config.shards_per_client, seed, config.min_samples)
    return partition(labels, num_clients, config.alpha, seed, config.min_samples)
