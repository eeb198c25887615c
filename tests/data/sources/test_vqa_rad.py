"""Source ``vqa_rad``: a stand-in of the VQA-RAD release (``VQA_RAD Dataset Public.json`` + image folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.rows import subsample_indices
from fedumm.data.sources.vqa_rad import IMAGE_FOLDER, load_vqa_rad
from fedumm.errors import DataError

_PHRASES = ("freeform", "para", "freeform", "test_freeform", "test_para")


def _record(qid: int) -> dict:
    """Question qid: phrase type cycles through _PHRASES; every third answer is a JSON number."""
    answer: object = qid if qid % 3 == 0 else ("Yes" if qid % 2 else "left lung")
    return {
        "qid": qid,
        "phrase_type": _PHRASES[qid % 5],
        "qid_linked_id": f"link{qid}",
        "image_case_url": "https://medpix.example/case",
        "image_name": f"synpic{qid % 4}.jpg",
        "image_organ": "CHEST",
        "evaluation": "given",
        "question": f" Is there finding {qid}? ",
        "question_rephrase": "NULL",
        "question_relation": "NULL",
        "question_frame": "NULL",
        "question_type": "PRES",
        "answer": answer,
        "answer_type": "CLOSED " if qid % 2 else "OPEN",
    }


def write_vqa_rad(folder: Path, records: list) -> Path:
    """``VQA_RAD Dataset Public.json`` with ``records`` and the four images synpic0..3.jpg (grey 40 * k)."""
    (folder / IMAGE_FOLDER).mkdir(parents=True, exist_ok=True)
    for k in range(4):
        Image.new("RGB", (8, 8), (40 * k,) * 3).save(folder / IMAGE_FOLDER / f"synpic{k}.jpg")
    path = folder / "VQA_RAD Dataset Public.json"
    path.write_text(json.dumps(records, indent=4))
    return path


def test_vqa_rad_splits_by_phrase_type(tmp_path: Path) -> None:
    # Prepare: qids 0..9: phrase types freeform, para, freeform, test_freeform, test_para, ...
    path = write_vqa_rad(tmp_path, [_record(q) for q in range(10)])
    # Execute
    train, test = load_vqa_rad(path)
    # Assert
    assert [r["question_id"] for r in train.rows] == [0, 1, 2, 5, 6, 7]
    assert [r["question_id"] for r in test.rows] == [3, 4, 8, 9]
    by_id = {r["question_id"]: r for r in train.rows + test.rows}
    assert by_id[3]["answers"] == ["3"] and by_id[1]["multiple_choice_answer"] == "Yes"
    assert by_id[2]["answers"] == ["left lung"] and by_id[2]["question"] == "Is there finding 2?"
    assert (by_id[1]["answer_type"], by_id[2]["answer_type"]) == ("closed", "open")
    assert by_id[6]["task"] == "vqa" and by_id[6]["metadata"]["image_organ"] == "CHEST"
    assert by_id[6]["metadata"]["row"] == 7 and by_id[6]["metadata"]["phrase_type"] == "para"
    assert abs(by_id[6]["image"].load().getpixel((0, 0))[0] - 80) <= 2  # synpic2.jpg


def test_vqa_rad_source_caps_only_the_train_questions(tmp_path: Path) -> None:
    # Prepare: 20 questions, 12 train and 8 test.
    path = write_vqa_rad(tmp_path, [_record(q) for q in range(20)])
    config = DataConfig.model_validate(
        {"source": "vqa_rad", "vqa_rad": {"path": str(path), "max_samples": 5}, "partition": {"min_samples": 1}}
    )
    # Execute
    train, test = load_samples(config, seed=3)
    data = build_federated_data(config, num_clients=2, seed=3)
    # Assert: a seeded draw of 5 of the 12 train questions; all 8 test questions.
    train_ids = [q for q in range(20) if q % 5 < 3]
    assert [r["question_id"] for r in train] == [train_ids[k] for k in subsample_indices(12, 5, seed=3)]
    assert len(test) == 8 and sum(data.partition.sizes) == 5 and len(data.global_test) == 8


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"image_name": "synpic9.jpg"}, "synpic9.jpg not found"),
        ({"phrase_type": "other"}, "field 'phrase_type' is 'other', expected one of ['freeform', 'para',"),
        ({"answer_type": "MAYBE"}, "field 'answer_type' is 'MAYBE', expected OPEN or CLOSED"),
        ({"answer": None}, "field 'answer': expected a string or number, got NoneType None"),
        ({"qid": "x"}, "field 'qid': expected an integer, got 'x'"),
    ],
)
def test_vqa_rad_broken_record_names_file_and_record(tmp_path: Path, change: dict, fragment: str) -> None:
    # Prepare: record 2 (qid 1, a train question) is broken.
    records = [_record(q) for q in range(5)]
    records[1].update(change)
    path = write_vqa_rad(tmp_path, records)
    # Execute
    with pytest.raises(DataError) as info:
        load_vqa_rad(path)
    train, test = load_vqa_rad(path, on_error="skip")
    # Assert
    assert "VQA_RAD Dataset Public.json, record 2 (1-based): " in str(info.value) and fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert (train.skipped, test.skipped, len(train.rows), len(test.rows)) == (1, 0, 2, 2)


def test_vqa_rad_skips_are_summed_per_file_over_both_splits(tmp_path: Path) -> None:
    # Prepare: one broken train question (record 1) and one broken test question (record 4).
    records = [_record(q) for q in range(5)]
    records[0]["question"] = None
    records[3]["image_name"] = "missing.jpg"
    path = write_vqa_rad(tmp_path, records)
    config = DataConfig.model_validate(
        {"source": "vqa_rad", "vqa_rad": {"path": str(path), "on_error": "skip"}, "partition": {"min_samples": 1}}
    )
    # Execute
    data = build_federated_data(config, num_clients=1, seed=0)
    # Assert
    assert data.skipped_rows == 2 and data.skipped_by_file == {str(path): 2}


def test_vqa_rad_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "VQA_RAD Dataset Public.json"
    path.write_text('[{"qid": 0,\n "answer": }]')
    with pytest.raises(DataError, match=r"Public.json: not valid JSON \(line 2, column 12"):
        load_vqa_rad(path)
    path.write_text('{"qid": 0}')
    with pytest.raises(DataError, match="expected a JSON list of VQA-RAD questions, got dict"):
        load_vqa_rad(path)


def test_fedmllm_vqa_rad_config_partitions_a_standin(tmp_path: Path, partition_seed_config) -> None:
    # Prepare: 50 questions: 30 train, 20 test.
    path = write_vqa_rad(tmp_path / "vqa_rad", [_record(q) for q in range(50)])
    # Execute
    sizes, out = partition_seed_config("fedmllm_vqa_rad.yaml", tmp_path, f"data.vqa_rad.path={json.dumps(str(path))}")
    # Assert
    assert len(sizes) == 10 and sum(sizes) == 30
    assert "20 global test rows" in out


@pytest.mark.slow
def test_fedmllm_vqa_rad_config_runs_on_a_standin(tmp_path: Path, run_seed_config) -> None:
    # Prepare: 30 questions: 18 train, 12 test.
    path = write_vqa_rad(tmp_path / "vqa_rad", [_record(q) for q in range(30)])
    # Execute
    config, result = run_seed_config(
        "fedmllm_vqa_rad.yaml",
        tmp_path,
        "tiny-llava",
        f"data.vqa_rad.path={json.dumps(str(path))}",
        "federation.num_clients=2",
        "data.partition.min_samples=2",
        "model.max_new_tokens=4",
    )
    # Assert: the 12 test questions scored, broken down by open / closed.
    final = result.federated.records[-1]["global"]
    assert final["n"] == 12 and set(final["by_answer_type"]) == {"closed", "open"}
    assert sum(v["n"] for v in final["by_answer_type"].values()) == 12
