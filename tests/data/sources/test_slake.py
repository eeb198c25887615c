"""Source ``slake``: a stand-in of the SLAKE 1.0 release (train/validate/test.json + imgs/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data
from fedumm.data.sources.slake import load_slake
from fedumm.errors import DataError
from fedumm.metrics import summarize_task


def _record(qid: int) -> dict:
    """Question qid about image xmlab<qid % 3>; even qids English and CLOSED, odd Chinese and OPEN."""
    english = qid % 2 == 0
    return {
        "img_id": qid % 3,
        "img_name": f"xmlab{qid % 3}/source.jpg",
        "question": f"Does image {qid} show the liver?" if english else f"图像{qid}显示什么器官?",
        "answer": "Yes" if english else "肝脏",
        "q_lang": "en" if english else "zh",
        "location": "Abdomen",
        "modality": "CT",
        "answer_type": "CLOSED" if english else "OPEN",
        "base_type": "vqa",
        "content_type": "Organ",
        "triple": ["vhead", "_", "_"],
        "qid": qid,
    }


def write_slake(root: Path, splits: dict[str, list]) -> Path:
    """``<root>/<split>.json`` for each split and imgs/xmlab{0,1,2}/source.jpg (grey 50 * k)."""
    for k in range(3):
        (root / "imgs" / f"xmlab{k}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (50 * k,) * 3).save(root / "imgs" / f"xmlab{k}" / "source.jpg")
    for split, records in splits.items():
        (root / f"{split}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1))
    return root


def test_slake_rows_language_and_answer_types(tmp_path: Path) -> None:
    # Prepare
    root = write_slake(tmp_path / "Slake1.0", {"train": [_record(q) for q in range(6)]})
    # Execute
    english = load_slake(root, "train").rows
    both = load_slake(root, "train", language="all").rows
    chinese = load_slake(root, "train", language="zh").rows
    # Assert: CLOSED/OPEN become answer_type closed/open; records numbered in the file.
    assert [r["question_id"] for r in english] == [0, 2, 4] and [r["question_id"] for r in chinese] == [1, 3, 5]
    assert len(both) == 6 and {r["answer_type"] for r in english} == {"closed"}
    assert (chinese[0]["answer_type"], chinese[0]["answers"], chinese[0]["metadata"]["q_lang"]) == (
        "open",
        ["肝脏"],
        "zh",
    )
    row = english[1]
    assert (row["question"], row["multiple_choice_answer"], row["task"]) == (
        "Does image 2 show the liver?",
        "Yes",
        "vqa",
    )
    assert row["metadata"]["row"] == 3 and row["metadata"]["modality"] == "CT"
    assert abs(row["image"].load().getpixel((0, 0))[0] - 100) <= 2  # xmlab2


def test_slake_answer_types_reach_the_vqa_breakdown(tmp_path: Path) -> None:
    # Prepare: predictions right on the closed questions, wrong on the open ones.
    root = write_slake(tmp_path, {"test": [_record(q) for q in range(4)]})
    rows = load_slake(root, "test", language="all").rows
    records = [dict(r, prediction="yes" if r["answer_type"] == "closed" else "肺") for r in rows]
    # Execute
    summary = summarize_task(records, "vqa")
    # Assert
    assert summary["vqa_accuracy"] == 0.5
    assert {k: v["vqa_accuracy"] for k, v in summary["by_answer_type"].items()} == {"closed": 1.0, "open": 0.0}


def test_slake_source_train_and_test_files(tmp_path: Path) -> None:
    root = write_slake(
        tmp_path, {"train": [_record(q) for q in range(20)], "test": [_record(q) for q in range(100, 106)]}
    )
    config = DataConfig.model_validate(
        {"source": "slake", "slake": {"root": str(root)}, "partition": {"method": "iid", "min_samples": 1}}
    )
    data = build_federated_data(config, num_clients=2, seed=0)
    assert data.partition.sizes == [5, 5] and [r["question_id"] for r in data.global_test] == [100, 102, 104]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"img_name": "xmlab7/source.jpg"}, "xmlab7/source.jpg not found"),
        ({"answer_type": "YESNO"}, "field 'answer_type' is 'YESNO', expected OPEN or CLOSED"),
        ({"question": 3}, "field 'question': expected a string, got int 3"),
    ],
)
def test_slake_broken_record_names_file_and_record(tmp_path: Path, change: dict, fragment: str) -> None:
    records = [_record(q) for q in range(0, 8, 2)]
    records[2].update(change)
    root = write_slake(tmp_path, {"train": records})
    with pytest.raises(DataError) as info:
        load_slake(root, "train")
    skipped = load_slake(root, "train", on_error="skip")
    assert "train.json, record 3 (1-based): " in str(info.value) and fragment in str(info.value)
    assert skipped.skipped == 1 and [r["question_id"] for r in skipped.rows] == [0, 2, 6]


def test_slake_missing_language_field_is_reported(tmp_path: Path) -> None:
    records = [_record(0)]
    del records[0]["q_lang"]
    root = write_slake(tmp_path, {"train": records})
    with pytest.raises(DataError, match=r"record 1 \(1-based\): missing field 'q_lang'"):
        load_slake(root, "train")


def test_fedmllm_slake_config_partitions_a_standin(tmp_path: Path, partition_seed_config) -> None:
    root = write_slake(
        tmp_path / "Slake1.0", {"train": [_record(q) for q in range(40)], "test": [_record(q) for q in range(9)]}
    )
    sizes, out = partition_seed_config("fedmllm_slake.yaml", tmp_path, f"data.slake.root={root}")
    # English questions only: 20 of the 40 train, 5 of the 9 test.
    assert len(sizes) == 10 and sum(sizes) == 20
    assert "5 global test rows" in out


@pytest.mark.slow
def test_fedmllm_slake_config_runs_on_a_standin(tmp_path: Path, run_seed_config) -> None:
    root = write_slake(
        tmp_path / "Slake1.0", {"train": [_record(q) for q in range(24)], "test": [_record(q) for q in range(8)]}
    )
    config, result = run_seed_config(
        "fedmllm_slake.yaml",
        tmp_path,
        "tiny-llava",
        f"data.slake.root={root}",
        "data.slake.language=all",
        "federation.num_clients=2",
        "data.partition.min_samples=2",
        "model.max_new_tokens=4",
    )
    # Both languages: 8 test questions, 4 closed (English) and 4 open (Chinese).
    final = result.federated.records[-1]["global"]
    assert final["n"] == 8 and {k: v["n"] for k, v in final["by_answer_type"].items()} == {"closed": 4, "open": 4}
