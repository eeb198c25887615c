"""Tests for the client_files source (fedumm.data.sources.client_files): file naming and order, per-client
test files, skipped rows, and FedVLMBench-style client folders through DataConfig -> FederatedData."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data
from fedumm.data.sources.client_files import load_client_files
from fedumm.errors import DataError


@pytest.fixture()
def write_clients(conversation) -> Callable[..., None]:
    def write(root: Path, image: str, sizes: dict[int, int], test_size: int = 2) -> None:
        """client_{i}.json with sizes[i] one-turn records whose answer is f"c{i}"; one test file."""
        (root / "train").mkdir(parents=True)
        (root / "test").mkdir()
        for index, size in sizes.items():
            records = [
                {"id": k, "image": image, "conversations": conversation((f"q{k}", f"c{index}"))} for k in range(size)
            ]
            (root / "train" / f"client_{index}.json").write_text(json.dumps(records))
        test = [{"id": k, "image": image, "conversations": conversation(("q", "t"))} for k in range(test_size)]
        (root / "test" / "test.json").write_text(json.dumps(test))

    return write


@pytest.mark.parametrize("first", [0, 1])
def test_client_files_are_ordered_by_numeric_index(tmp_path: Path, write_image, first: int, write_clients) -> None:
    # Prepare: client i holds i + 1 records; 11 clients, so client_10 sorts after client_9, not client_1.
    sizes = {first + i: i + 1 for i in range(11)}
    write_clients(tmp_path, write_image("x.png"), sizes)
    # Execute
    result = load_client_files(tmp_path)
    # Assert
    assert [len(rows) for rows in result.clients] == list(range(1, 12))
    assert [rows[0]["multiple_choice_answer"] for rows in result.clients] == [f"c{first + i}" for i in range(11)]
    assert [p.name for p in result.train_files][-1] == f"client_{first + 10}.json"
    assert len(result.test) == 2 and result.skipped == 0


@pytest.mark.parametrize(
    ("names", "fragment"),
    [
        (["client_0.json", "client_2.json"], "client_1.json is missing (gap before client_2.json)"),
        (["client_0.json", "clientA.json"], "clientA.json: unexpected file name"),
        (["client_2.json", "client_3.json"], "must start at 0 or 1"),
        (["client_1.json", "client_01.json"], "both claim client index 1"),
    ],
)
def test_client_files_bad_names_are_errors(tmp_path: Path, names: list[str], fragment: str) -> None:
    # Prepare
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.json").write_text("[]")
    for name in names:
        (tmp_path / "train" / name).write_text("[]")
    # Execute / Assert
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_client_files(tmp_path)


def test_client_files_need_a_test_file(tmp_path: Path, write_image, write_clients) -> None:
    write_clients(tmp_path, write_image("x.png"), {0: 1})
    (tmp_path / "test" / "test.json").unlink()
    with pytest.raises(DataError, match="no test"):
        load_client_files(tmp_path)


def test_client_files_skip_counts_over_all_files(tmp_path: Path, write_image, write_clients) -> None:
    # Prepare: one broken record in client_1 and one in the test file.
    write_clients(tmp_path, write_image("x.png"), {0: 2, 1: 2})
    for path in (tmp_path / "train" / "client_1.json", tmp_path / "test" / "test.json"):
        records = json.loads(path.read_text())
        records[0]["image"] = "images/missing.png"
        path.write_text(json.dumps(records))
    # Execute
    result = load_client_files(tmp_path, on_error="skip")
    # Assert
    assert [len(rows) for rows in result.clients] == [2, 1]
    assert len(result.test) == 1 and result.skipped == 2
    assert "client_1.json, record 1 (1-based)" in result.problems[0]


# ---------------------------------------------------------------------------------------------
# Per-client test files


@pytest.fixture()
def write_client_tests(conversation) -> Callable[..., None]:
    def write(root: Path, image: str, sizes: dict[int, int]) -> None:
        for index, size in sizes.items():
            records = [
                {"id": k, "image": image, "conversations": conversation((f"t{k}", f"local{index}"))}
                for k in range(size)
            ]
            (root / "test" / f"client_{index}.json").write_text(json.dumps(records))

    return write


def test_client_test_files_are_local_splits_and_their_union_the_global_test(
    tmp_path: Path, write_image, write_clients, write_client_tests
) -> None:
    # Prepare: 2 clients (3 and 4 training records), test/client_{0,1}.json with 2 and 1 records, no other test file.
    write_clients(tmp_path, write_image("x.png"), {0: 3, 1: 4})
    (tmp_path / "test" / "test.json").unlink()
    write_client_tests(tmp_path, "images/x.png", {0: 2, 1: 1})
    # Execute
    result = load_client_files(tmp_path)
    # Assert: local test splits per client; the global test set is their union, tagged by client.
    assert result.client_tests is not None
    assert [[r["multiple_choice_answer"] for r in rows] for rows in result.client_tests] == [
        ["local0", "local0"],
        ["local1"],
    ]
    assert [(r["client_id"], r["multiple_choice_answer"]) for r in result.test] == [
        (0, "local0"),
        (0, "local0"),
        (1, "local1"),
    ]
    assert all("client_id" not in r for rows in result.client_tests for r in rows)


def test_client_test_files_next_to_a_global_test_file(
    tmp_path: Path, write_image, write_clients, write_client_tests
) -> None:
    # Prepare: per-client test files and test/test.json (2 records, answer "t").
    write_clients(tmp_path, write_image("x.png"), {1: 2, 2: 2})
    write_client_tests(tmp_path, "images/x.png", {1: 1, 2: 3})
    # Execute
    result = load_client_files(tmp_path)
    # Assert: the other file is the global test set; client files stay local.
    assert [len(rows) for rows in result.client_tests] == [1, 3]
    assert [r["multiple_choice_answer"] for r in result.test] == ["t", "t"]


def test_client_test_files_must_cover_every_client(
    tmp_path: Path, write_image, write_clients, write_client_tests
) -> None:
    write_clients(tmp_path, write_image("x.png"), {0: 2, 1: 2, 2: 2})
    write_client_tests(tmp_path, "images/x.png", {0: 1, 2: 1})
    with pytest.raises(DataError, match=re.escape("no test file for client(s) [1]")):
        load_client_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# The source through the config: FedVLMBench stand-ins


def _llava_record(k: int, image: str, answer: str, turns: int = 1) -> dict:
    conversations = []
    for t in range(turns):
        conversations += [{"from": "human", "value": f"<image>\nq{k}.{t}"}, {"from": "gpt", "value": answer}]
    return {"id": f"r{k}", "image": image, "conversations": conversations}


def test_fedvlmbench_standin_client_files(tmp_path: Path) -> None:
    # Prepare: client_0: 4 records, one with 2 turns -> 5 samples; client_1: 6; client_2: 8. Test: 3.
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "img" / "x.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    sizes = {0: 4, 1: 6, 2: 8}
    for c, n in sizes.items():
        records = [_llava_record(k, "img/x.png", f"answer{c}", turns=2 if (c, k) == (0, 0) else 1) for k in range(n)]
        (tmp_path / "train" / f"client_{c}.json").write_text(json.dumps(records))
    (tmp_path / "test" / "test.json").write_text(json.dumps([_llava_record(k, "img/x.png", "t") for k in range(3)]))
    config = DataConfig.model_validate(
        {"source": "client_files", "client_files": {"root": str(tmp_path)}, "partition": {"min_samples": 2}}
    )
    # Execute
    data = build_federated_data(config, num_clients=3, seed=0)
    # Assert: natural clients by file; local test = round(0.2 n) -> 1, 1, 2.
    assert data.partition.sizes == [5, 6, 8]
    assert [(len(c.train), len(c.test)) for c in data.clients] == [(4, 1), (5, 1), (6, 2)]
    for c, client in enumerate(data.clients):
        assert {r["multiple_choice_answer"] for r in client.train + client.test} == {f"answer{c}"}
    assert data.partition.label_counts[1]["answer1"] == 6
    assert len(data.global_test) == 3 and data.skipped_rows == 0


def _fedvlmbench_clients(tmp_path: Path, train_sizes: list[int], test_sizes: list[int]) -> None:
    """clients/train/client_{c}.json and clients/test/client_{c}.json, answers "c{c}" and "t{c}"."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "img" / "x.png")
    for folder, sizes, answer in (("train", train_sizes, "c"), ("test", test_sizes, "t")):
        (tmp_path / folder).mkdir()
        for c, n in enumerate(sizes):
            records = [_llava_record(k, "img/x.png", f"{answer}{c}") for k in range(n)]
            (tmp_path / folder / f"client_{c}.json").write_text(json.dumps(records))


def test_fedvlmbench_per_client_test_files_are_the_local_tests(tmp_path: Path) -> None:
    # Prepare: 3 clients with 4/5/6 training and 2/1/3 test records (FedVLMBench's clients/test/client_i.json).
    _fedvlmbench_clients(tmp_path, [4, 5, 6], [2, 1, 3])
    config = DataConfig.model_validate(
        {"source": "client_files", "client_files": {"root": str(tmp_path)}, "partition": {"min_samples": 4}}
    )
    # Execute
    data = build_federated_data(config, num_clients=3, seed=0)
    # Assert: nothing held out of the training files; each client tests on its own file.
    assert [(len(c.train), len(c.test)) for c in data.clients] == [(4, 2), (5, 1), (6, 3)]
    for c, client in enumerate(data.clients):
        assert {r["multiple_choice_answer"] for r in client.train} == {f"c{c}"}
        assert {r["multiple_choice_answer"] for r in client.test} == {f"t{c}"}
    # The global test set is the union, tagged by client; sizes and labels count test rows too.
    assert [r["client_id"] for r in data.global_test] == [0, 0, 1, 2, 2, 2]
    assert data.partition.sizes == [6, 6, 9]
    assert data.partition.label_counts[2]["t2"] == 3 and data.partition.label_counts[2]["c2"] == 6


def test_global_metrics_break_down_by_client_over_the_union_of_local_tests(tmp_path: Path) -> None:
    from fedumm.metrics import summarize_task

    # Prepare: the union of 2 clients' test files; a model right on client 0, wrong on client 1.
    _fedvlmbench_clients(tmp_path, [2, 2], [2, 3])
    config = DataConfig.model_validate(
        {"source": "client_files", "client_files": {"root": str(tmp_path)}, "partition": {"min_samples": 1}}
    )
    data = build_federated_data(config, num_clients=2, seed=0)
    records = [dict(row, prediction="t0") for row in data.global_test]  # as ModelHost.evaluate builds them
    # Execute
    summary = summarize_task(records, "vqa")
    # Assert: 2 of 5 right overall; by client 1.0 and 0.0.
    assert summary["vqa_accuracy"] == pytest.approx(0.4)
    assert {c: (g["n"], g["vqa_accuracy"]) for c, g in summary["by_client"].items()} == {0: (2, 1.0), 1: (3, 0.0)}


def test_fedvlmbench_standin_client_count_must_match(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "x.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for c in range(2):
        (tmp_path / "train" / f"client_{c}.json").write_text(json.dumps([_llava_record(0, "img/x.png", "a")] * 3))
    (tmp_path / "test" / "t.json").write_text(json.dumps([_llava_record(0, "img/x.png", "a")]))
    config = DataConfig.model_validate(
        {"source": "client_files", "client_files": {"root": str(tmp_path)}, "partition": {"min_samples": 1}}
    )
    with pytest.raises(DataError, match="2 client files but federation.num_clients is 3"):
        build_federated_data(config, num_clients=3, seed=0)
    strict = config.model_copy(update={"partition": config.partition.model_copy(update={"min_samples": 4})})
    # 3 rows minus round(0.2 x 3) = 1 local test row leave 2 to train.
    expected = (
        "client_0.json: 3 usable samples leave 2 for training (1 held out as its local test split), "
        "fewer than data.partition.min_samples=4"
    )
    with pytest.raises(DataError, match=re.escape(expected)):
        build_federated_data(strict, num_clients=2, seed=0)


@pytest.mark.slow
def test_fedvlmbench_config_runs_on_standin_client_files(tmp_path: Path, run_seed_config) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "img" / "x.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for c in range(3):
        (tmp_path / "train" / f"client_{c}.json").write_text(
            json.dumps([_llava_record(k, "img/x.png", "green") for k in range(5)])
        )
    (tmp_path / "test" / "test.json").write_text(json.dumps([_llava_record(k, "img/x.png", "green") for k in range(4)]))
    config, result = run_seed_config(
        "fedvlmbench_client_files.yaml",
        tmp_path,
        "tiny-llava",
        f"data.client_files.root={tmp_path}",
        "federation.num_clients=3",
    )
    assert config.finetune.strategy == "lora+connector"
    last = result.federated.records[-1]
    # F-CL: LoRA and connector tensors both travel.
    assert set(last["clients"]) == {0, 1, 2} and result.summary["partition_skew"] >= 0.0
    assert any("multi_modal_projector" in k for k in result.federated.final_state)
    assert any("lora_A" in k for k in result.federated.final_state)


def test_client_files_image_outside_the_root_names_the_key(tmp_path: Path, write_clients) -> None:
    # Prepare: every record names ../x.png, outside root/.
    Image.new("RGB", (8, 8), (5, 5, 5)).save(tmp_path / "x.png")
    write_clients(tmp_path / "root", "../x.png", {0: 2, 1: 2})
    # Execute
    allowed = load_client_files(tmp_path / "root", allow_outside_root=True)
    config = DataConfig(source="client_files", client_files={"root": str(tmp_path / "root"), "on_error": "skip"})
    # Assert
    assert [len(rows) for rows in allowed.clients] == [2, 2]
    with pytest.raises(DataError, match=r"client_0\.json, record 1 \(1-based\): image path '\.\./x\.png' resolves"):
        load_client_files(tmp_path / "root")
    with pytest.raises(DataError, match="set data.client_files.allow_outside_root: true"):
        load_client_files(tmp_path / "root")
    with pytest.raises(DataError, match="0 usable samples"):  # everything skipped: no client keeps a row
        build_federated_data(config, num_clients=2, seed=0)


@pytest.mark.slow
def test_fedvlmbench_multitask_config_scores_each_task(tmp_path: Path, run_seed_config) -> None:
    # Prepare: Fed-Med's layout (clients/{train,test}/client_{i}.json, images under image/) with
    # vqa, caption and grounding records; one vqa test record has no "task" (eval.default_task).
    (tmp_path / "image").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "image" / "x.png")
    answers = {"vqa": "yes", "caption": "a green square on a plain background", "grounding": "[0.1, 0.1, 0.6, 0.6]"}

    def record(k: int, task: str | None) -> dict:
        out = _llava_record(k, "image/x.png", answers[task or "vqa"])
        return out if task is None else {**out, "task": task}

    for folder, tasks in (
        ("train", ["vqa", "caption", "grounding"] * 2),
        ("test", ["vqa", "caption", "grounding", None]),
    ):
        (tmp_path / "clients" / folder).mkdir(parents=True)
        for c in range(2):
            records = [record(k, task) for k, task in enumerate(tasks)]
            (tmp_path / "clients" / folder / f"client_{c}.json").write_text(json.dumps(records))

    # Execute
    config, result = run_seed_config(
        "fedvlmbench_multitask.yaml",
        tmp_path,
        "tiny-llava",
        f"data.client_files.root={tmp_path / 'clients'}",
        f"data.client_files.image_root={tmp_path}",
        "federation.num_clients=2",
    )

    # Assert: every task reports its own metrics over its rows (vqa: 2 tagged + 2 default).
    final = result.federated.records[-1]["global"]
    assert final["task"] == "multitask" and final["n"] == 8
    by_task = final["by_task"]
    assert {name: part["n"] for name, part in by_task.items()} == {"vqa": 4, "caption": 2, "grounding": 2}
    assert {"vqa_accuracy", "exact_match"} <= set(by_task["vqa"])
    assert {"cider_d", "bleu4", "rouge_l"} <= set(by_task["caption"])
    assert {"grounding_accuracy", "mean_iou", "unparsable"} <= set(by_task["grounding"])
    # The primary metric is the equal-weight mean of the three primary metrics.
    mean = (
        by_task["vqa"]["vqa_accuracy"] + by_task["caption"]["cider_d"] + by_task["grounding"]["grounding_accuracy"]
    ) / 3
    assert final["multitask_score"] == pytest.approx(mean)
    assert set(final["by_client"]) == {0, 1} and all(g["n"] == 4 for g in final["by_client"].values())
    # Clients evaluate locally the same way; the summary names the metric and each task.
    assert all("local_multitask_score" in m for m in result.federated.records[-1]["client_metrics"].values())
    summary = result.summary
    assert (summary["metric"], summary["metric_bounded"]) == ("multitask_score", False)
    assert set(summary["federated_by_task"]) == {"vqa", "caption", "grounding"}
    assert summary["federated_by_task"]["caption"]["metric"] == "cider_d"
    # Majority baseline per task that has one: vqa's training answers are all "yes", as its test answers.
    assert summary["majority_baseline_accuracy"] is None
    assert summary["majority_baseline_by_task"] == {"vqa": {"answer": "yes", "score": 1.0}}
    text = (Path(result.run_dir) / "summary.txt").read_text()
    assert "grounding (2 rows) grounding_accuracy:" in text


def test_client_files_t2i(tmp_path: Path, write_image) -> None:
    # Prepare: two clients and a global test file of t2i records.
    def records(n: int, start: int) -> str:
        return json.dumps(
            [
                {
                    "image": write_image(f"{i}.png"),
                    "conversations": [{"from": "human", "value": f"prompt {i}"}, {"from": "gpt", "value": "<image>"}],
                }
                for i in range(start, start + n)
            ]
        )

    for folder, name, n, start in [("train", "client_0", 3, 0), ("train", "client_1", 2, 3), ("test", "all", 2, 5)]:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / f"{name}.json").write_text(records(n, start))
    config = DataConfig.model_validate(
        {
            "source": "client_files",
            "client_files": {"root": str(tmp_path), "task": "t2i"},
            "partition": {"min_samples": 2},
            "local_test_fraction": 0,
        }
    )
    # Execute
    result = load_client_files(tmp_path, task="t2i")
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert
    assert [[r["prompt"] for r in client] for client in result.clients] == [
        ["prompt 0", "prompt 1", "prompt 2"],
        ["prompt 3", "prompt 4"],
    ]
    assert [r["prompt"] for r in result.test] == ["prompt 5", "prompt 6"]
    assert all(r["task"] == "t2i" for c in data.clients for r in c.train)
