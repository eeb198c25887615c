"""Tests for the federated view (fedumm.data.federated): local splits, min_samples after the local split,
modality checks, and what reaches the run folder (skipped rows, modality counts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, local_train_size, rows_for_min_train, split_local_test
from fedumm.data.modality import BOTH, IMAGE_ONLY, NEITHER, TEXT_ONLY
from fedumm.errors import ConfigError, DataError


@pytest.mark.parametrize(("n", "fraction", "expected_test"), [(10, 0.2, 2), (10, 0.0, 0), (1, 0.5, 0), (3, 0.9, 2)])
def test_split_local_test_sizes(n, fraction, expected_test):
    rows = [{"i": i} for i in range(n)]
    train, test = split_local_test(rows, fraction, seed=0)
    assert len(test) == expected_test and len(train) == n - expected_test
    assert sorted(r["i"] for r in train + test) == list(range(n))


def test_build_federated_data_covers_all_rows_once():
    config = DataConfig.model_validate(
        {"synthetic": {"train_samples": 200, "test_samples": 20}, "partition": {"alpha": 0.5, "min_samples": 10}}
    )
    data = build_federated_data(config, num_clients=4, seed=0)
    ids = [r["question_id"] for c in data.clients for r in c.train + c.test]
    assert len(ids) == 200 and len(set(ids)) == 200
    assert sum(data.partition.sizes) == 200 and min(data.partition.sizes) >= 10
    for client in data.clients:
        total = len(client.train) + len(client.test)
        assert len(client.test) == round(0.2 * total)
    assert len(data.global_test) == 20 and len(data.pooled_train) == sum(len(c.train) for c in data.clients)


def test_unknown_label_column_names_it():
    config = DataConfig.model_validate({"synthetic": {"train_samples": 20}, "partition": {"label_column": "site"}})
    with pytest.raises(DataError, match="data.partition.label_column: column 'site'"):
        build_federated_data(config, num_clients=2, seed=0)


def test_single_scenario_needs_enough_clients(tmp_path: Path) -> None:
    config = DataConfig.model_validate(
        {
            "synthetic": {"train_samples": 40, "test_samples": 4},
            "partition": {"alpha": 0, "min_samples": 1},
            "modality": {"scenario": "single", "num_image_clients": 3},
        }
    )
    expected = "data.modality.num_image_clients (3) exceeds federation.num_clients (2)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_federated_data(config, num_clients=2, seed=0)


# ---------------------------------------------------------------------------------------------
# min_samples counts training rows, after the local test split


def test_min_samples_holds_after_the_local_test_split() -> None:
    # Prepare: 120 synthetic rows, 4 clients, Dirichlet(0.1) (skewed sizes), at least 8 to train.
    config = DataConfig.model_validate(
        {
            "synthetic": {"train_samples": 120, "test_samples": 8},
            "partition": {"alpha": 0.1, "min_samples": 8},
            "local_test_fraction": 0.2,
        }
    )
    # Execute
    data = build_federated_data(config, num_clients=4, seed=3)
    # Assert: every client trains on >= 8 rows (a client of 8 would have ended with 6).
    assert min(len(c.train) for c in data.clients) >= 8
    assert sum(data.partition.sizes) == 120


def test_min_samples_error_explains_the_local_test_split() -> None:
    # Prepare: 30 rows over 3 IID clients = 10 each; 10 to train needs 12 once round(0.2 x 12) = 2 are held out.
    config = DataConfig.model_validate(
        {
            "synthetic": {"train_samples": 30, "test_samples": 4},
            "partition": {"method": "iid", "min_samples": 10},
            "local_test_fraction": 0.2,
        }
    )
    # Execute / Assert
    with pytest.raises(DataError) as info:
        build_federated_data(config, num_clients=3, seed=0)
    message = str(info.value)
    assert "at least 12 samples" in message
    assert "data.partition.min_samples=10 training samples per client needs 12" in message
    # Without a local test split 10 each is enough.
    none_held = config.model_copy(update={"local_test_fraction": 0.0})
    assert [len(c.train) for c in build_federated_data(none_held, num_clients=3, seed=0).clients] == [10, 10, 10]


@pytest.mark.parametrize(
    ("min_train", "fraction", "rows"), [(8, 0.2, 10), (1, 0.2, 1), (2, 0.2, 3), (5, 0.0, 5), (10, 0.5, 20)]
)
def test_rows_for_min_train(min_train: int, fraction: float, rows: int) -> None:
    assert rows_for_min_train(min_train, fraction) == rows
    assert local_train_size(rows, fraction) >= min_train
    assert rows == min_train or local_train_size(rows - 1, fraction) < min_train  # the fewest


# ---------------------------------------------------------------------------------------------
# Skipped rows and modality counts reach the run folder


def test_skipped_rows_per_file_reach_partition_json_and_load_problems(tmp_path: Path, write_memes) -> None:
    # Prepare: 40 memes with 2 broken training lines and 1 broken test line.
    write_memes(tmp_path / "train.jsonl", tmp_path / "img", 40)
    write_memes(tmp_path / "test.jsonl", tmp_path / "img", 8, offset=100)
    for name, bad in (
        ("train.jsonl", ["{oops", '{"image": "img/none.png", "question": "q", "answer": "no"}']),
        ("test.jsonl", ['{"question": "q"}']),
    ):
        with (tmp_path / name).open("a") as handle:
            handle.write("\n".join(bad) + "\n")
    config = DataConfig.model_validate(
        {
            "source": "table",
            "table": {
                "path": str(tmp_path / "train.jsonl"),
                "test_path": str(tmp_path / "test.jsonl"),
                "on_error": "skip",
            },
            "partition": {"method": "iid", "min_samples": 3},
        }
    )
    data = build_federated_data(config, num_clients=2, seed=0)
    (tmp_path / "run").mkdir()
    # Execute
    summary_keys = data.load_report(tmp_path / "run")
    # Assert: counts per file in the summary keys and partition.json; messages in load_problems.txt.
    by_file = {str(tmp_path / "test.jsonl"): 1, str(tmp_path / "train.jsonl"): 2}
    assert summary_keys == {"skipped_rows": 3, "skipped_rows_by_file": by_file}
    saved = data.partition.to_dict()
    assert (saved["skipped_rows"], saved["skipped_rows_by_file"]) == (3, by_file)
    problems = (tmp_path / "run" / "load_problems.txt").read_text().splitlines()
    assert len(problems) == 3 and "train.jsonl, line 41 (1-based): not valid JSON" in problems[0]
    assert "img/none.png not found" in problems[1] and "test.jsonl, line 9 (1-based)" in problems[2]


def test_clean_runs_keep_partition_json_unchanged(tmp_path: Path) -> None:
    data = build_federated_data(
        DataConfig.model_validate({"synthetic": {"train_samples": 40, "test_samples": 4}}), num_clients=2, seed=0
    )
    (tmp_path / "run").mkdir()
    assert data.load_report(tmp_path / "run") == {"skipped_rows": 0, "skipped_rows_by_file": {}}
    assert not (tmp_path / "run" / "load_problems.txt").exists()
    assert set(data.partition.to_dict()) == {"num_clients", "sizes", "labels", "label_counts", "skew"}


def test_partition_json_has_per_client_modality_counts_under_a_scenario() -> None:
    # Prepare: 200 rows, 2 clients, missing at 0.5.
    config = DataConfig.model_validate(
        {
            "synthetic": {"train_samples": 200, "test_samples": 4},
            "partition": {"method": "iid"},
            "modality": {"scenario": "missing", "rate": 0.5},
        }
    )
    # Execute
    data = build_federated_data(config, num_clients=2, seed=0)
    saved = data.partition.to_dict()["modality_counts"]
    # Assert: one count per client and modality, each client's summing to its size; ~25% each.
    assert saved == data.modality_counts()
    assert [sum(c.values()) for c in saved] == data.partition.sizes == [100, 100]
    for counts in saved:
        assert set(counts) == {BOTH, IMAGE_ONLY, TEXT_ONLY, NEITHER}
        assert all(10 <= n <= 40 for n in counts.values())  # 25 expected, sd 4.3


def _mixed_config(tasks, train=100, mix=0.4, **partition):
    return DataConfig.model_validate(
        {
            "synthetic": {"train_samples": train, "test_samples": 10, "task_mix": mix},
            "partition": {"method": "iid", "min_samples": 4, **partition},
            "local_test_fraction": 0.0,
            "tasks": tasks,
        }
    )


def test_data_tasks_give_each_task_rows_to_its_holders_only():
    # Prepare: 60 vqa and 40 t2i rows; clients 0, 1 hold vqa, client 2 t2i, client 3 both.
    config = _mixed_config([["vqa"], ["vqa"], ["t2i"], ["vqa", "t2i"]])
    # Execute
    data = build_federated_data(config, num_clients=4, seed=0)
    # Assert: each client holds only its tasks; every row is placed once; an IID split of
    # 60 vqa rows over 3 holders gives 20 each, of 40 t2i rows over 2 holders 20 each.
    tasks = [sorted({r["task"] for r in c.train}) for c in data.clients]
    assert tasks == [["vqa"], ["vqa"], ["t2i"], ["t2i", "vqa"]]
    counts = [sum(r["task"] == "t2i" for r in c.train) for c in data.clients]
    assert counts == [0, 0, 20, 20]
    assert [len(c.train) for c in data.clients] == [20, 20, 20, 40]
    assert sum(data.partition.sizes) == 100


@pytest.mark.parametrize(
    ("tasks", "mix", "fragment"),
    [
        ([["vqa"], ["vqa"]], 0.4, "data.tasks: the training data has 40 t2i rows but no client holds t2i"),
        ([["vqa"], ["t2i"]], 0.0, "data.tasks: clients [1] hold 't2i', but the training data has no t2i rows"),
        ([["vqa"], ["vqa"], ["t2i"]], 0.4, "data.tasks: 3 lists for federation.num_clients=2"),
    ],
)
def test_data_tasks_problems_name_the_key(tasks, mix, fragment):
    with pytest.raises((DataError, ConfigError)) as info:
        build_federated_data(_mixed_config(tasks, mix=mix), num_clients=2, seed=0)
    assert fragment in str(info.value)


def test_data_tasks_too_few_rows_for_a_task_names_it():
    with pytest.raises(DataError, match=r"data.tasks: the 8 t2i rows among clients \[1, 2\]"):
        build_federated_data(_mixed_config([["vqa"], ["t2i"], ["t2i"]], train=20, mix=0.4, min_samples=5), 3, 0)
