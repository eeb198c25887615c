"""Tests for IID and Dirichlet client partitions and their statistics."""

from __future__ import annotations

import json

import pytest

from fedumm.data.partition import (
    PartitionStats,
    partition,
    partition_dirichlet,
    partition_iid,
    partition_stats,
)
from fedumm.errors import DataError

# 4 classes x 250 samples, interleaved so label order is not index order.
LABELS = [("a", "b", "c", "d")[i % 4] for i in range(1000)]


def _assert_is_partition(parts: list[list[int]], num_samples: int) -> None:
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(num_samples))
    for part in parts:
        assert part == sorted(part)
        assert all(type(i) is int for i in part)


def _mean_skew(alpha: float, seeds: range = range(5)) -> float:
    skews = [partition_stats(LABELS, partition_dirichlet(LABELS, 8, alpha, s)).skew() for s in seeds]
    return sum(skews) / len(skews)


@pytest.mark.parametrize(("num_samples", "num_clients"), [(10, 3), (1000, 8), (7, 7), (5, 1)])
def test_iid_sizes_near_equal_and_union_is_permutation(num_samples: int, num_clients: int) -> None:
    # Execute
    parts = partition_iid(num_samples, num_clients, seed=0)
    # Assert
    sizes = [len(p) for p in parts]
    assert len(parts) == num_clients
    assert max(sizes) - min(sizes) <= 1
    _assert_is_partition(parts, num_samples)


def test_iid_actually_shuffles() -> None:
    parts = partition_iid(100, 2, seed=0)
    assert parts[0] != list(range(50))


@pytest.mark.parametrize(
    ("alpha", "num_clients", "min_samples"),
    [(0.1, 8, 1), (0.5, 8, 20), (1.0, 4, 100), (100.0, 8, 100)],
)
def test_dirichlet_union_is_permutation_and_min_samples_honoured(
    alpha: float, num_clients: int, min_samples: int
) -> None:
    # Execute
    parts = partition_dirichlet(LABELS, num_clients, alpha, seed=1, min_samples=min_samples)
    # Assert
    assert len(parts) == num_clients
    assert min(len(p) for p in parts) >= min_samples
    _assert_is_partition(parts, len(LABELS))


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_partition_is_deterministic_per_seed(alpha: float) -> None:
    # Execute
    a = partition(LABELS, 8, alpha, seed=3)
    b = partition(LABELS, 8, alpha, seed=3)
    c = partition(LABELS, 8, alpha, seed=4)
    # Assert
    assert a == b
    assert a != c


def test_dirichlet_accepts_unorderable_mixed_labels() -> None:
    labels = [1, "1", (2,), None] * 25
    parts = partition_dirichlet(labels, 4, 1.0, seed=0)
    _assert_is_partition(parts, 100)
    assert parts == partition_dirichlet(labels, 4, 1.0, seed=0)


def test_skew_decreases_with_alpha() -> None:
    # Execute: averaged over seeds so one lucky draw cannot flip the order.
    # Measured (seeds 0-4): alpha 0.1 -> 0.511, 1.0 -> 0.283, 100 -> 0.035.
    skew_small, skew_mid, skew_large = _mean_skew(0.1), _mean_skew(1.0), _mean_skew(100.0)
    # Assert
    assert skew_small > skew_mid > skew_large
    assert skew_large < 0.15
    assert skew_small > 0.4


def test_iid_skew_is_small() -> None:
    stats = partition_stats(LABELS, partition_iid(len(LABELS), 8, seed=0))
    assert stats.skew() < 0.15


def test_alpha_zero_means_iid() -> None:
    assert partition(LABELS, 8, 0.0, seed=5) == partition_iid(len(LABELS), 8, seed=5)


def test_positive_alpha_means_dirichlet() -> None:
    assert partition(LABELS, 8, 0.5, seed=5) == partition_dirichlet(LABELS, 8, 0.5, seed=5)


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_bad_alpha_raises_value_error(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        partition(LABELS, 8, alpha, seed=0)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: partition_iid(10, 0, seed=0), "num_clients"),
        (lambda: partition_dirichlet(LABELS, 0, 1.0, seed=0), "num_clients"),
        (lambda: partition_dirichlet(LABELS, 4, 0.0, seed=0), "alpha"),
        (lambda: partition_dirichlet(LABELS, 4, 1.0, seed=0, max_tries=0), "max_tries"),
        (lambda: partition_iid(10, 2, seed=0, min_samples=-1), "min_samples"),
    ],
)
def test_bad_arguments_raise_value_error(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: partition_iid(50, 8, seed=0, min_samples=10),
        lambda: partition_dirichlet(LABELS[:50], 8, 1.0, seed=0, min_samples=10),
        lambda: partition(LABELS[:50], 8, 0.0, seed=0, min_samples=10),
    ],
)
def test_too_few_samples_raises_data_error_with_numbers(call) -> None:
    with pytest.raises(DataError, match="each of 8 clients at least 10 samples from only 50 samples"):
        call()


def test_unreachable_min_samples_raises_data_error_with_numbers() -> None:
    # Prepare: 500 samples could fill 8 x 50, but alpha=0.05 piles each label onto ~1 client.
    labels = LABELS[:500]
    # Execute / Assert
    with pytest.raises(DataError) as info:
        partition_dirichlet(labels, 8, 0.05, seed=0, min_samples=50)
    message = str(info.value)
    for fragment in ("alpha=0.05", "8 clients", "50 samples", "100 tries", "500 samples", "4 labels"):
        assert fragment in message


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([[0, 1], [2, 3]], 0.5),  # each client holds one label: TV 0.5 each
        ([[0, 2], [1, 3]], 0.0),  # each client mirrors the global 50/50
        ([[0, 1, 2], [3]], 0.25),  # (3 * 1/6 + 1 * 1/2) / 4
        ([[0, 1, 2, 3], []], 0.0),  # empty client carries no weight
    ],
)
def test_skew_hand_computed(parts: list[list[int]], expected: float) -> None:
    stats = partition_stats(["a", "a", "b", "b"], parts)
    assert stats.skew() == pytest.approx(expected)


def test_stats_counts_sizes_and_sorted_labels() -> None:
    # Execute
    stats = partition_stats(["b", "a", "b", 2], [[0, 1], [2, 3]])
    # Assert
    assert isinstance(stats, PartitionStats)
    assert stats.sizes == [2, 2]
    assert stats.labels == [2, "a", "b"]
    assert stats.label_counts == [{2: 0, "a": 1, "b": 1}, {2: 1, "a": 0, "b": 1}]


def test_stats_rejects_out_of_range_index() -> None:
    with pytest.raises(ValueError, match="index 4"):
        partition_stats(["a", "b"], [[0, 4]])


def test_table_has_a_row_per_client_with_its_size() -> None:
    # Prepare
    parts = partition_dirichlet(LABELS, 5, 0.5, seed=2)
    stats = partition_stats(LABELS, parts)
    # Execute
    lines = stats.table().splitlines()
    # Assert: header, 5 client rows, totals.
    assert len(lines) == 7
    assert lines[0].split() == ["client", "size", "a", "b", "c", "d"]
    for client, part in enumerate(parts):
        cells = lines[1 + client].split()
        assert cells[0] == str(client)
        assert cells[1] == str(len(part))
        assert sum(int(x) for x in cells[2:]) == len(part)
    assert lines[-1].split()[:2] == ["total", "1000"]


def test_to_dict_is_json_serialisable() -> None:
    # Prepare
    stats = partition_stats([1, 2, 2, 1], [[0, 1], [2, 3]])
    # Execute
    data = json.loads(json.dumps(stats.to_dict()))
    # Assert
    assert data["sizes"] == [2, 2]
    assert data["labels"] == ["1", "2"]
    assert data["label_counts"] == [{"1": 1, "2": 1}, {"1": 1, "2": 1}]
    assert data["skew"] == pytest.approx(0.0)
