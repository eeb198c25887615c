"""Tests for the shared row helpers (fedumm.data.rows); the helpers' row checks are tested through the
sources that use them (tests/data/sources)."""

from __future__ import annotations

import pytest

from fedumm.data.rows import subsample_indices


@pytest.mark.parametrize(
    ("num_rows", "max_samples", "expected_len"), [(10, None, 10), (10, 20, 10), (10, 10, 10), (10, 3, 3)]
)
def test_subsample_indices_sizes(num_rows: int, max_samples: int | None, expected_len: int) -> None:
    # Execute
    indices = subsample_indices(num_rows, max_samples, seed=0)
    # Assert
    assert len(indices) == expected_len
    assert indices == sorted(set(indices)) and all(0 <= i < num_rows for i in indices)


def test_subsample_indices_depend_on_seed_only() -> None:
    assert subsample_indices(100, 5, seed=1) == subsample_indices(100, 5, seed=1)
    assert subsample_indices(100, 5, seed=1) != subsample_indices(100, 5, seed=2)
