"""End-to-end data stand-ins: a DataConfig pointing at files the test writes -> FederatedData.

One per seed setup: FedUMM on VQAv2 (hf source), FedVLMBench (client_files), FedMLLM
(Hateful-Memes-style classification with modality mix), plus the table source's natural
partition and global test hold-out, and the config checks of the new keys.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from fedumm.config import DataConfig, load_config
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.loaders import subsample_indices
from fedumm.data.modality import BOTH, IMAGE_ONLY, NEITHER, TEXT_ONLY, modality_of
from fedumm.errors import ConfigError, DataError


def _png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqav2_split(n: int, offset: int, broken: int | None = None) -> datasets.Dataset:
    """n VQAv2-schema rows (answers as HF VQAv2 stores them: list of dicts); row ``broken`` has bad bytes."""
    ids = range(offset, offset + n)
    images = [{"bytes": _png((i % 256, 0, 0)), "path": None} for i in ids]
    if broken is not None:
        images[broken] = {"bytes": b"\x89PNG broken", "path": None}
    types = ("yes/no", "number", "other")
    data = {
        "question_type": ["what" for _ in ids],
        "multiple_choice_answer": [("yes", "2", "red")[i % 3] for i in ids],
        "answers": [[{"answer": ("yes", "2", "red")[i % 3], "answer_confidence": "yes", "answer_id": k}
                     for k in range(1, 11)] for i in ids],
        "image_id": [10 * i for i in ids],
        "answer_type": [types[i % 3] for i in ids],
        "question_id": [10 * i + 1 for i in ids],
        "question": [f"question {i}?" for i in ids],
        "image": images,
    }
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def test_fedumm_vqav2_standin_hf_source(tmp_path: Path) -> None:
    # Prepare: a save_to_disk'd VQAv2-schema DatasetDict, 41 train rows (one broken) and 10 validation rows.
    datasets.DatasetDict(
        {"train": _vqav2_split(41, 0, broken=7), "validation": _vqav2_split(10, 1000)}
    ).save_to_disk(tmp_path / "vqav2")
    config = DataConfig.model_validate({
        "source": "hf",
        "hf": {"path": str(tmp_path / "vqav2"), "on_error": "skip"},
        "partition": {"method": "iid", "min_samples": 5},
    })
    # Execute
    data = build_federated_data(config, num_clients=4, seed=0)
    # Assert: 40 usable rows -> 4 IID clients of 10 -> 8 train + 2 local test each.
    assert data.skipped_rows == 1 and "row 8 (1-based)" in data.load_problems[0]
    assert data.partition.sizes == [10, 10, 10, 10]
    assert [(len(c.train), len(c.test)) for c in data.clients] == [(8, 2)] * 4
    assert [r["question_id"] for r in data.global_test] == [10 * i + 1 for i in range(1000, 1010)]
    row = data.clients[0].train[0]
    assert row["image"].mode == "RGB" and len(row["answers"]) == 10
    assert row["answer_type"] in ("yes/no", "number", "other")
    assert data.modality_counts() == [{BOTH: 10, IMAGE_ONLY: 0, TEXT_ONLY: 0, NEITHER: 0}] * 4


def test_fedumm_vqav2_standin_max_samples_and_raise(tmp_path: Path) -> None:
    # Prepare
    datasets.DatasetDict(
        {"train": _vqav2_split(41, 0, broken=7), "validation": _vqav2_split(10, 1000)}
    ).save_to_disk(tmp_path / "vqav2")
    base = {"source": "hf", "hf": {"path": str(tmp_path / "vqav2")}, "partition": {"alpha": 0, "min_samples": 1}}
    # Execute / Assert: by default the broken row stops loading, naming it.
    with pytest.raises(DataError, match=r"split 'train', row 8 \(1-based\)"):
        build_federated_data(DataConfig.model_validate(base), num_clients=2, seed=0)
    # max_samples caps both splits with the seeded subset; the broken row counts only if drawn.
    capped = {**base, "hf": {**base["hf"], "max_samples": 6, "max_test_samples": 4, "on_error": "skip"}}
    train, test = load_samples(DataConfig.model_validate(capped), seed=0)
    drawn = subsample_indices(41, 6, seed=0)
    assert [r["metadata"]["row"] for r in train] == [i + 1 for i in drawn if i != 7]
    assert [r["metadata"]["row"] for r in test] == [i + 1 for i in subsample_indices(10, 4, seed=0)]


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
    from fedumm.task_metrics import summarize_task

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
    config = DataConfig.model_validate({"source": "client_files", "client_files": {"root": str(tmp_path)},
                                        "partition": {"min_samples": 1}})
    with pytest.raises(DataError, match="2 client files but federation.num_clients is 3"):
        build_federated_data(config, num_clients=3, seed=0)
    strict = config.model_copy(update={"partition": config.partition.model_copy(update={"min_samples": 4})})
    # 3 rows minus round(0.2 x 3) = 1 local test row leave 2 to train.
    expected = ("client_0.json: 3 usable samples leave 2 for training (1 held out as its local test split), "
                "fewer than data.partition.min_samples=4")
    with pytest.raises(DataError, match=re.escape(expected)):
        build_federated_data(strict, num_clients=2, seed=0)


def _write_memes(path: Path, image_dir: Path, n: int, offset: int = 0) -> None:
    """Hateful-Memes-style rows: one image each, 'is this meme hateful?', yes for every third meme."""
    image_dir.mkdir(exist_ok=True)
    lines = []
    for i in range(offset, offset + n):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(image_dir / f"{i}.png")
        answer = "yes" if i % 3 == 0 else "no"
        lines.append(json.dumps({"image": f"img/{i}.png", "question": "is this meme hateful?", "answer": answer,
                                 "label": int(answer == "yes"), "task": "classification", "site": f"s{i % 2}"}))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_fedmllm_standin_hateful_memes_modality_mix(tmp_path: Path, rate: float) -> None:
    # Prepare: 60 training memes, 12 test memes; 6 clients, Dirichlet over the label; mix rate 0 or 1.
    _write_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    _write_memes(tmp_path / "test.jsonl", tmp_path / "img", 12, offset=100)
    config = DataConfig.model_validate({
        "source": "table",
        "table": {"path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")},
        "partition": {"method": "dirichlet", "alpha": 1.0, "label_column": "label", "min_samples": 3},
        "modality": {"scenario": "mix", "rate": rate},
    })
    # Execute
    data = build_federated_data(config, num_clients=6, seed=0)
    # Assert
    assert len(data.clients) == 6 and sum(data.partition.sizes) == 60 and min(data.partition.sizes) >= 3
    assert data.partition.labels == ["0", "1"] and sum(c["1"] for c in data.partition.label_counts) == 20
    kinds = [{modality_of(r) for r in c.train + c.test} for c in data.clients]
    if rate == 0.0:
        assert all(k == {BOTH} for k in kinds)
    else:  # with q = 1 every client draws neither modality: each sample keeps image or text
        assert all(k <= {IMAGE_ONLY, TEXT_ONLY} for k in kinds)
        for client in data.clients:
            for row in client.train:
                if modality_of(row) == IMAGE_ONLY:
                    assert row["question"] == "Classify the image. Answer with the class label."
                    assert row["image"] is not None
                else:
                    assert row["image"] is None and row["question"] == "is this meme hateful?"
    assert all(modality_of(r) == BOTH for r in data.global_test)  # the global test set stays complete


def test_table_natural_sites_and_global_holdout(tmp_path: Path) -> None:
    # Prepare: 60 memes on sites s0/s1 (30 each), no test file -> hold out 10% = 6 rows.
    _write_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    config = DataConfig.model_validate({
        "source": "table",
        "table": {"path": str(tmp_path / "train.jsonl")},
        "partition": {"method": "natural", "column": "site", "min_samples": 5},
        "local_test_fraction": 0.0,
    })
    # Execute
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert
    assert len(data.global_test) == 6 and sum(data.partition.sizes) == 54
    for site, client in zip(("s0", "s1"), data.clients):
        assert {r["metadata"]["site"] for r in client.train} == {site}
    held_out = {r["metadata"]["row"] for r in data.global_test}
    assert not held_out & {r["metadata"]["row"] for r in data.pooled_train}


def test_single_scenario_needs_enough_clients(tmp_path: Path) -> None:
    config = DataConfig.model_validate({
        "synthetic": {"train_samples": 40, "test_samples": 4},
        "partition": {"alpha": 0, "min_samples": 1},
        "modality": {"scenario": "single", "num_image_clients": 3},
    })
    expected = "data.modality.num_image_clients (3) exceeds federation.num_clients (2)"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_federated_data(config, num_clients=2, seed=0)


def test_synthetic_default_unchanged_by_new_sections() -> None:
    # Prepare / Execute
    config = DataConfig()
    data = build_federated_data(
        DataConfig.model_validate({"synthetic": {"train_samples": 80, "test_samples": 8}}), num_clients=2, seed=0
    )
    # Assert: the defaults stay the synthetic Dirichlet(0.5) job without modality changes.
    assert (config.source, config.partition.method, config.partition.alpha) == ("synthetic", "dirichlet", 0.5)
    assert (config.modality.scenario, config.hf.on_error) == ("none", "raise")
    assert data.skipped_rows == 0 and sum(data.partition.sizes) == 80
    assert all(modality_of(r) == BOTH for r in data.pooled_train)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.source=hf"], "data.hf.path: required when data.source is 'hf'"),
        (["data.source=client_files"], "data.client_files.root: required"),
        (["data.source=table"], "data.table.path: required"),
        (["data.source=llava_json"], "data.llava_json.path: required"),
        (["data.source=csv"], "data.source: must be one of"),
        (["data.partition.method=natural"], "data.partition.column: required when data.partition.method is 'natural'"),
        (["data.partition.method=quantity_skew", "data.partition.alpha=0"], "data.partition.alpha: must be > 0"),
        (["data.partition.shards_per_client=0"], "data.partition.shards_per_client"),
        (["data.modality.scenario=drop"], "data.modality.scenario: must be one of"),
        (["data.modality.rate=1.5"], "data.modality.rate"),
        (["data.table.on_error=ignore"], "data.table.on_error: must be one of"),
        (["data.global_test_fraction=0"], "data.global_test_fraction"),
    ],
)
def test_new_config_keys_fail_naming_the_key(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)


def test_new_config_keys_parse() -> None:
    config = load_config(None, [
        "data.source=table", "data.table.path=t.jsonl", "data.table.on_error=skip",
        "data.partition.method=shards", "data.partition.shards_per_client=3",
        "data.modality.scenario=missing", "data.modality.rate=0.3",
        "data.hf.data_files={train: [a.parquet], validation: [b.parquet]}",
    ])
    assert (config.data.table.path, config.data.table.on_error) == ("t.jsonl", "skip")
    assert (config.data.partition.method, config.data.partition.shards_per_client) == ("shards", 3)
    assert (config.data.modality.scenario, config.data.modality.rate) == ("missing", 0.3)
    assert config.data.hf.data_files == {"train": ["a.parquet"], "validation": ["b.parquet"]}


# -- the shipped seed-reproduction configs, run end to end on stand-in files -------------------

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
_TINY_RUN = ["model.device=cpu", "model.dtype=float32", "model.gradient_checkpointing=false",
             "federation.rounds=1", "train.local_steps=1", "train.batch_size=4", "train.precision=fp32",
             "eval.centralized_baseline=false", "eval.max_samples=null", "output.progress=false"]


def _run_seed_config(name: str, tmp_path: Path, tiny_model: str, *overrides: str):
    from fedumm.engines.simulation import simulate

    config = load_config(CONFIGS / name, [f"model.name_or_path={tiny_model}", *_TINY_RUN,
                                          f"output.dir={tmp_path / 'runs'}", *overrides])
    return config, simulate(config)


@pytest.mark.slow
def test_fedumm_vqav2_config_runs_on_a_standin(tmp_path: Path) -> None:
    datasets.DatasetDict(
        {"train": _vqav2_split(40, 0), "validation": _vqav2_split(8, 100)}
    ).save_to_disk(tmp_path / "vqav2")
    config, result = _run_seed_config(
        "fedumm_vqav2.yaml", tmp_path, "tiny-blip-vqa", f"data.hf.path={tmp_path / 'vqav2'}",
        "data.hf.max_samples=null", "data.hf.max_test_samples=null", "federation.num_clients=2",
        "data.partition.min_samples=4", "data.hf.split=train", "data.hf.test_split=validation",
    )
    assert config.model.backend == "blip_vqa" and config.adapter.preset == "qv_self"
    assert result.summary["num_clients"] == 2 and result.federated.records[-1]["global"]["n"] == 8


def test_fedumm_vqav2_config_points_at_a_parquet_dataset() -> None:
    # The shipped config must not name a loading-script dataset (datasets>=4 refuses those).
    config = load_config(CONFIGS / "fedumm_vqav2.yaml")
    assert (config.data.hf.path, config.data.hf.split, config.data.hf.test_split) == ("lmms-lab/VQAv2", "validation", None)
    assert config.data.hf.max_samples == 22000 and config.data.global_test_fraction == 0.1


@pytest.mark.slow
def test_fedvlmbench_config_runs_on_standin_client_files(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (0, 90, 0)).save(tmp_path / "img" / "x.png")
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    for c in range(3):
        (tmp_path / "train" / f"client_{c}.json").write_text(
            json.dumps([_llava_record(k, "img/x.png", "green") for k in range(5)]))
    (tmp_path / "test" / "test.json").write_text(json.dumps([_llava_record(k, "img/x.png", "green") for k in range(4)]))
    config, result = _run_seed_config("fedvlmbench_client_files.yaml", tmp_path, "tiny-llava",
                                      f"data.client_files.root={tmp_path}", "federation.num_clients=3")
    assert config.finetune.strategy == "lora+connector"
    last = result.federated.records[-1]
    # F-CL: LoRA and connector tensors both travel.
    assert set(last["clients"]) == {0, 1, 2} and result.summary["partition_skew"] >= 0.0
    assert any("multi_modal_projector" in k for k in result.federated.final_state)
    assert any("lora_A" in k for k in result.federated.final_state)


def _write_raw_memes(path: Path, image_dir: Path, n: int, offset: int = 0) -> None:
    """Hateful Memes files as distributed: {"id", "img", "text", "label"}; every third meme hateful."""
    image_dir.mkdir(exist_ok=True)
    lines = []
    for i in range(offset, offset + n):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(image_dir / f"{i}.png")
        lines.append(json.dumps({"id": i, "img": f"img/{i}.png", "text": f"meme {i}", "label": int(i % 3 == 0)}))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_fedmllm_config_runs_on_standin_memes(tmp_path: Path) -> None:
    from fedumm.report import format_summary

    _write_raw_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    _write_raw_memes(tmp_path / "dev.jsonl", tmp_path / "img", 12, offset=100)
    with (tmp_path / "train.jsonl").open("a") as handle:  # two broken lines, skipped by the config
        handle.write('{"id": 900, "img": "img/none.png", "text": "x", "label": 0}\n{"id": 901, "text": "y"}\n')
    config, result = _run_seed_config(
        "fedmllm_hateful_memes.yaml", tmp_path, "tiny-llava", f"data.table.path={tmp_path / 'train.jsonl'}",
        f"data.table.test_path={tmp_path / 'dev.jsonl'}", "federation.num_clients=4", "data.partition.min_samples=3",
    )
    assert config.eval.task == "classification" and config.data.modality.scenario == "mix"
    final = result.federated.records[-1]["global"]
    assert final["task"] == "classification" and 0.0 <= final["accuracy"] <= 1.0 and "macro_f1" in final
    # The majority baseline (2 in 3 memes are not hateful): accuracy of always 'no'.
    assert result.summary["majority_answer"] == "no"
    assert result.summary["majority_baseline_accuracy"] == pytest.approx(8 / 12)
    # The skipped lines reach summary.json, partition.json, load_problems.txt and the printed summary.
    run = Path(result.run_dir)
    saved = json.loads((run / "summary.json").read_text())
    assert saved["skipped_rows"] == 2 and saved["skipped_rows_by_file"] == {str(tmp_path / "train.jsonl"): 2}
    assert json.loads((run / "partition.json").read_text())["skipped_rows"] == 2
    problems = (run / "load_problems.txt").read_text().splitlines()
    assert ["line 61" in problems[0], "line 62" in problems[1]] == [True, True]
    assert "skipped broken rows (on_error: skip): 2" in format_summary(saved, [])


# -- min_samples counts training rows, after the local test split ------------------------------


def test_min_samples_holds_after_the_local_test_split() -> None:
    # Prepare: 120 synthetic rows, 4 clients, Dirichlet(0.1) (skewed sizes), at least 8 to train.
    config = DataConfig.model_validate({
        "synthetic": {"train_samples": 120, "test_samples": 8},
        "partition": {"alpha": 0.1, "min_samples": 8},
        "local_test_fraction": 0.2,
    })
    # Execute
    data = build_federated_data(config, num_clients=4, seed=3)
    # Assert: every client trains on >= 8 rows (a client of 8 would have ended with 6).
    assert min(len(c.train) for c in data.clients) >= 8
    assert sum(data.partition.sizes) == 120


def test_min_samples_error_explains_the_local_test_split() -> None:
    # Prepare: 30 rows over 3 IID clients = 10 each; 10 to train needs 12 once round(0.2 x 12) = 2 are held out.
    config = DataConfig.model_validate({
        "synthetic": {"train_samples": 30, "test_samples": 4},
        "partition": {"method": "iid", "min_samples": 10},
        "local_test_fraction": 0.2,
    })
    # Execute / Assert
    with pytest.raises(DataError) as info:
        build_federated_data(config, num_clients=3, seed=0)
    message = str(info.value)
    assert "at least 12 samples" in message
    assert "data.partition.min_samples=10 training samples per client needs 12" in message
    # Without a local test split 10 each is enough.
    none_held = config.model_copy(update={"local_test_fraction": 0.0})
    assert [len(c.train) for c in build_federated_data(none_held, num_clients=3, seed=0).clients] == [10, 10, 10]


@pytest.mark.parametrize(("min_train", "fraction", "rows"), [(8, 0.2, 10), (1, 0.2, 1), (2, 0.2, 3), (5, 0.0, 5),
                                                               (10, 0.5, 20)])
def test_rows_for_min_train(min_train: int, fraction: float, rows: int) -> None:
    from fedumm.data.federated import local_train_size, rows_for_min_train

    assert rows_for_min_train(min_train, fraction) == rows
    assert local_train_size(rows, fraction) >= min_train
    assert rows == min_train or local_train_size(rows - 1, fraction) < min_train  # the fewest


# -- skipped rows and modality counts reach the run folder --------------------------------------


def test_skipped_rows_per_file_reach_partition_json_and_load_problems(tmp_path: Path) -> None:
    # Prepare: 40 memes with 2 broken training lines and 1 broken test line.
    _write_memes(tmp_path / "train.jsonl", tmp_path / "img", 40)
    _write_memes(tmp_path / "test.jsonl", tmp_path / "img", 8, offset=100)
    for name, bad in (("train.jsonl", ["{oops", '{"image": "img/none.png", "question": "q", "answer": "no"}']),
                      ("test.jsonl", ['{"question": "q"}'])):
        with (tmp_path / name).open("a") as handle:
            handle.write("\n".join(bad) + "\n")
    config = DataConfig.model_validate({
        "source": "table",
        "table": {"path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl"), "on_error": "skip"},
        "partition": {"method": "iid", "min_samples": 3},
    })
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
        DataConfig.model_validate({"synthetic": {"train_samples": 40, "test_samples": 4}}), num_clients=2, seed=0)
    (tmp_path / "run").mkdir()
    assert data.load_report(tmp_path / "run") == {"skipped_rows": 0, "skipped_rows_by_file": {}}
    assert not (tmp_path / "run" / "load_problems.txt").exists()
    assert set(data.partition.to_dict()) == {"num_clients", "sizes", "labels", "label_counts", "skew"}


def test_partition_json_has_per_client_modality_counts_under_a_scenario() -> None:
    # Prepare: 200 rows, 2 clients, missing at 0.5.
    config = DataConfig.model_validate({
        "synthetic": {"train_samples": 200, "test_samples": 4},
        "partition": {"method": "iid"},
        "modality": {"scenario": "missing", "rate": 0.5},
    })
    # Execute
    data = build_federated_data(config, num_clients=2, seed=0)
    saved = data.partition.to_dict()["modality_counts"]
    # Assert: one count per client and modality, each client's summing to its size; ~25% each.
    assert saved == data.modality_counts()
    assert [sum(c.values()) for c in saved] == data.partition.sizes == [100, 100]
    for counts in saved:
        assert set(counts) == {BOTH, IMAGE_ONLY, TEXT_ONLY, NEITHER}
        assert all(10 <= n <= 40 for n in counts.values())  # 25 expected, sd 4.3


def test_hateful_memes_table_format_through_the_config(tmp_path: Path) -> None:
    # Prepare: raw Hateful Memes lines (img, text, label).
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(12):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"id": i, "img": f"img/{i}.png", "text": f"meme {i}", "label": i % 2}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = DataConfig.model_validate({
        "source": "table", "table": {"path": str(tmp_path / "train.jsonl"), "format": "hateful_memes"},
        "partition": {"method": "iid", "min_samples": 1}, "global_test_fraction": 0.25,
    })
    # Execute
    train, test = load_samples(config, seed=0)
    # Assert
    assert len(train) == 9 and len(test) == 3
    assert {r["multiple_choice_answer"] for r in train + test} == {"yes", "no"}
    assert all(r["task"] == "classification" and r["question"].startswith("meme ") for r in train)
