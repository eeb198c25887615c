"""Tests for the shard, quantity-skew and natural partitioners, the make_partition dispatcher and
the partition heatmap."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedumm.data.config import PartitionConfig
from fedumm.data.partition import (
    _largest_remainder,
    heatmap_matrix,
    make_partition,
    partition,
    partition_iid,
    partition_natural,
    partition_quantity_skew,
    partition_shards,
    partition_stats,
    save_partition_heatmap,
)
from fedumm.errors import DataError

# 4 labels x 25 samples, interleaved.
LABELS = [("a", "b", "c", "d")[i % 4] for i in range(100)]


def _assert_is_partition(parts: list[list[int]], num_samples: int) -> None:
    assert sorted(i for part in parts for i in part) == list(range(num_samples))
    assert all(part == sorted(part) and all(type(i) is int for i in part) for part in parts)


# ---------------------------------------------------------------------------------------------
# shards


@pytest.mark.parametrize(
    ("num_clients", "k", "expected_sizes"),
    [
        (4, 1, {25}),  # one whole label each
        (4, 2, {24, 25, 26}),  # each label in shards of 13 and 12; a client holds two
        (2, 2, {50}),  # 4 shards = the 4 labels
    ],
)
def test_shards_give_at_most_k_labels_per_client(num_clients: int, k: int, expected_sizes: set[int]) -> None:
    # Execute
    parts = partition_shards(LABELS, num_clients, k, seed=0)
    # Assert
    _assert_is_partition(parts, len(LABELS))
    assert len(parts) == num_clients
    for part in parts:
        assert len({LABELS[i] for i in part}) <= k
    assert {len(p) for p in parts} <= expected_sizes


def test_shards_split_labels_in_proportion_to_their_size() -> None:
    # Prepare: 90 "a" and 10 "b"; 10 clients x 1 shard -> "a" is cut into 9 shards of 10.
    labels = ["a"] * 90 + ["b"] * 10
    # Execute
    parts = partition_shards(labels, 10, 1, seed=0)
    # Assert
    assert [len(p) for p in parts] == [10] * 10
    assert sorted(labels[p[0]] for p in parts) == ["a"] * 9 + ["b"]
    assert all(len({labels[i] for i in p}) == 1 for p in parts)


def test_shards_are_deterministic_per_seed() -> None:
    assert partition_shards(LABELS, 5, 2, seed=1) == partition_shards(LABELS, 5, 2, seed=1)
    assert partition_shards(LABELS, 5, 2, seed=1) != partition_shards(LABELS, 5, 2, seed=2)


@pytest.mark.parametrize(
    ("labels", "num_clients", "k", "min_samples", "fragments"),
    [
        (LABELS, 1, 2, 1, ["4 distinct labels", "1 clients x 2 shards = 2", "answer_type"]),
        (["a", "b", "a"], 2, 2, 1, ["3 samples cannot fill 4 shards"]),
        (["a"] * 96 + ["b"] * 4, 2, 1, 10, ["at least 10 samples in 100 deals"]),
    ],
)
def test_shards_impossible_requests_raise(labels, num_clients, k, min_samples, fragments) -> None:
    with pytest.raises(DataError) as info:
        partition_shards(labels, num_clients, k, seed=0, min_samples=min_samples)
    for fragment in fragments:
        assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# quantity skew


@pytest.mark.parametrize(
    ("weights", "total", "floor", "expected"),
    [
        ([0.5, 0.3, 0.2], 10, [0, 0, 0], [5, 3, 2]),
        ([1.0, 1.0, 1.0], 10, [0, 0, 0], [4, 3, 3]),  # tie on the remainder: lowest index first
        ([0.9, 0.1], 10, [3, 3], [7, 3]),  # surplus 4 -> 3.6 / 0.4 -> 4 / 0
    ],
)
def test_largest_remainder_hand_computed(weights, total, floor, expected) -> None:
    result = _largest_remainder(np.array(weights), total, np.array(floor, dtype=np.int64))
    assert result.tolist() == expected


def test_quantity_skew_with_no_surplus_is_exactly_min_samples() -> None:
    # 100 samples, 10 clients, at least 10 each: nothing is left to skew.
    parts = partition_quantity_skew(100, 10, alpha=0.1, seed=0, min_samples=10)
    assert [len(p) for p in parts] == [10] * 10
    _assert_is_partition(parts, 100)


def test_quantity_skew_sizes_spread_more_for_small_alpha() -> None:
    # Execute: the mean (over seeds) largest client share for 10 clients and 1000 samples.
    def largest_share(alpha: float) -> float:
        return float(np.mean([max(map(len, partition_quantity_skew(1000, 10, alpha, s))) / 1000 for s in range(10)]))

    # Assert: IID would give 0.1; alpha 100 stays close to it, alpha 0.1 piles up on few clients.
    assert largest_share(100.0) < 0.15 < 0.4 < largest_share(0.1)


def test_quantity_skew_keeps_labels_iid_and_honours_minimum() -> None:
    # Execute
    labels = [("a", "b", "c", "d")[i % 4] for i in range(4000)]
    parts = partition_quantity_skew(4000, 4, alpha=0.5, seed=3, min_samples=100)
    # Assert: sizes differ, but every client's label mix mirrors the global 25% each.
    _assert_is_partition(parts, 4000)
    assert min(map(len, parts)) >= 100
    assert partition_stats(labels, parts).skew() < 0.05


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("nan")])
def test_quantity_skew_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        partition_quantity_skew(10, 2, alpha, seed=0)


# ---------------------------------------------------------------------------------------------
# natural


def test_natural_one_client_per_sorted_value() -> None:
    assert partition_natural(["b", "a", "b", "c", "a"]) == [[1, 4], [0, 2], [3]]
    assert partition_natural([10, 2, 10]) == [[1], [0, 2]]  # numeric order, not text order


@pytest.mark.parametrize(
    ("values", "min_samples", "fragment"),
    [
        (["a", None], 1, "row 1 (0-based) has no value"),
        (["a", 1], 1, "mixes value types ['int', 'str']"),
        (["a", "a", "b"], 2, "client 'b' has 1 samples, fewer than the minimum 2"),
    ],
)
def test_natural_bad_values_raise(values, min_samples: int, fragment: str) -> None:
    with pytest.raises(DataError, match=re.escape(fragment)):
        partition_natural(values, min_samples)


# ---------------------------------------------------------------------------------------------
# make_partition


ROWS = [{"multiple_choice_answer": LABELS[i], "metadata": {"site": f"s{i % 3}"}} for i in range(100)]


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"method": "iid"}, lambda: partition_iid(100, 4, 7, 8)),
        ({"method": "dirichlet", "alpha": 0.0}, lambda: partition_iid(100, 4, 7, 8)),
        ({"method": "dirichlet", "alpha": 0.3, "min_samples": 1}, lambda: partition(LABELS, 4, 0.3, 7, 1)),
        ({"method": "shards", "shards_per_client": 1}, lambda: partition_shards(LABELS, 4, 1, 7, 8)),
        ({"method": "quantity_skew", "alpha": 2.0}, lambda: partition_quantity_skew(100, 4, 2.0, 7, 8)),
    ],
)
def test_make_partition_dispatches_on_method(settings: dict, expected) -> None:
    # Execute
    parts = make_partition(PartitionConfig(**settings), ROWS, num_clients=4, seed=7)
    # Assert
    assert parts == expected()


def test_make_partition_natural_reads_the_column_from_metadata() -> None:
    # Execute
    parts = make_partition(PartitionConfig(method="natural", column="site", min_samples=1), ROWS, 3, seed=0)
    # Assert: s0 = rows 0, 3, 6, ...
    assert [len(p) for p in parts] == [34, 33, 33]
    assert parts[1][:3] == [1, 4, 7]


def test_make_partition_natural_needs_matching_client_count() -> None:
    config = PartitionConfig(method="natural", column="site", min_samples=1)
    with pytest.raises(DataError, match=r"3 distinct values \(s0, s1, s2\) but federation.num_clients is 4"):
        make_partition(config, ROWS, 4, seed=0)


@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        (
            [{"answer_type": "x"}],
            "data.partition.label_column: column 'multiple_choice_answer' not in the training rows",
        ),
        ([{"multiple_choice_answer": ["a"]}], "is a list, expected a single value"),
    ],
)
def test_make_partition_bad_label_column(rows: list[dict], fragment: str) -> None:
    with pytest.raises(DataError, match=re.escape(fragment)):
        make_partition(PartitionConfig(min_samples=1), rows * 4, 2, seed=0)


# ---------------------------------------------------------------------------------------------
# heatmap


def test_heatmap_matrix_counts_clients_by_labels() -> None:
    # Prepare
    stats = partition_stats(["x", "y", "y", "z"], [[0, 1], [2, 3]])
    # Execute
    names, matrix = heatmap_matrix(stats)
    # Assert
    assert names == ["x", "y", "z"]
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_heatmap_matrix_folds_rare_labels_into_other() -> None:
    # Prepare: totals a=3, b=2, c=1, d=1; keep the 2 most frequent, fold c and d.
    labels = ["a", "a", "a", "b", "b", "c", "d"]
    stats = partition_stats(labels, [[0, 3, 5], [1, 2, 4, 6]])
    # Execute
    names, matrix = heatmap_matrix(stats, max_labels=3)
    # Assert
    assert names == ["a", "b", "other"]
    assert matrix.tolist() == [[1, 1, 1], [2, 1, 1]]


def test_save_partition_heatmap_writes_a_png(tmp_path: Path) -> None:
    # Prepare
    stats = partition_stats(LABELS, partition_shards(LABELS, 4, 2, seed=0))
    # Execute
    path = save_partition_heatmap(stats, tmp_path / "partition.png")
    # Assert: a readable PNG of the requested figure size (4.0 x 2.9 inches at 100 dpi for 4 labels and 4 clients).
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (400, 290)
