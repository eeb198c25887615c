"""``fedumm data vqav2``: the official VQA v2 files (stand-ins in their layout) to parquet, read by the hf source."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from fedumm.cli import main
from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.sources.hf import load_hf_vqa
from fedumm.data.vqav2 import coco_image_name, write_vqav2
from fedumm.errors import DataError

_ANSWERS = ("yes", "2", "red")
_TYPES = ("yes/no", "number", "other")


def _official(root: Path, subtype: str, num_images: int, per_image: int = 3, first_image: int = 1) -> dict[str, Path]:
    """Official-layout stand-ins: Questions/..._questions.json, Annotations/..._annotations.json and
    <subtype>/COCO_<subtype>_<id:012d>.jpg; question k of image i has question_id i * 1000 + k and
    answer _ANSWERS[k % 3] (ten votes); image i is grey level i."""
    (root / "Questions").mkdir(parents=True, exist_ok=True)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / subtype).mkdir(parents=True, exist_ok=True)
    questions, annotations = [], []
    for image_id in range(first_image, first_image + num_images):
        Image.new("RGB", (8, 8), (image_id, image_id, image_id)).save(
            root / subtype / coco_image_name(subtype, image_id)
        )
        for k in range(per_image):
            qid = image_id * 1000 + k
            questions.append({"image_id": image_id, "question": f"q{qid}?", "question_id": qid})
            answers = [{"answer": _ANSWERS[k % 3], "answer_confidence": "yes", "answer_id": a} for a in range(1, 11)]
            annotations.append(
                {
                    "question_type": "what",
                    "multiple_choice_answer": _ANSWERS[k % 3],
                    "answers": answers,
                    "image_id": image_id,
                    "answer_type": _TYPES[k % 3],
                    "question_id": qid,
                }
            )
    head = {"info": {}, "license": {}, "data_type": "mscoco", "data_subtype": subtype}
    q_path = root / "Questions" / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
    a_path = root / "Annotations" / f"v2_mscoco_{subtype}_annotations.json"
    q_path.write_text(json.dumps({**head, "task_type": "Open-Ended", "questions": questions}))
    a_path.write_text(json.dumps({**head, "annotations": annotations}))
    return {"questions": q_path, "annotations": a_path, "images": root / subtype}


def _edit(path: Path, key: str, change) -> None:
    data = json.loads(path.read_text())
    change(data[key])
    path.write_text(json.dumps(data))


def test_vqav2_writes_the_hub_columns_in_question_order(tmp_path: Path) -> None:
    # Prepare: 5 images x 3 questions, row groups of 4 rows.
    files = _official(tmp_path / "vqa", "val2014", num_images=5)
    # Execute
    written = write_vqav2(**files, out=tmp_path / "out", row_group_rows=4)
    # Assert: split from the data_subtype, one shard of 15 rows in 4 row groups (4+4+4+3).
    assert written.split == "validation" and written.rows == 15 and written.skipped == 0
    assert [f.name for f in written.files] == ["validation-00000-of-00001.parquet"]
    meta = pq.ParquetFile(written.files[0]).metadata
    assert meta.num_rows == 15 and [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4, 4, 4, 3]
    table = pq.read_table(written.files[0]).to_pylist()
    assert [r["question_id"] for r in table] == [i * 1000 + k for i in range(1, 6) for k in range(3)]
    first = table[1]
    assert (first["question"], first["multiple_choice_answer"], first["answer_type"]) == ("q1001?", "2", "number")
    assert len(first["answers"]) == 10 and first["answers"][0] == {
        "answer": "2",
        "answer_confidence": "yes",
        "answer_id": 1,
    }
    assert first["image"] == {"bytes": None, "path": str((files["images"] / "COCO_val2014_000000000001.jpg").resolve())}


def test_vqav2_output_loads_through_the_hf_source(tmp_path: Path) -> None:
    # Prepare
    files = _official(tmp_path / "vqa", "val2014", num_images=4, per_image=2)
    write_vqav2(**files, out=tmp_path / "out")
    # Execute
    rows = load_hf_vqa(str(tmp_path / "out"), "validation").rows
    # Assert: image i is grey level i; ten answers; the VQAv2 target and type.
    assert len(rows) == 8
    for row in rows:
        image_id = row["question_id"] // 1000
        assert row["image"].load().getpixel((0, 0)) == (image_id, image_id, image_id)
        assert row["answers"] == [_ANSWERS[row["question_id"] % 1000]] * 10
        assert row["answer_type"] == _TYPES[row["question_id"] % 1000]
        assert row["metadata"]["image_id"] == image_id and row["metadata"]["question_type"] == "what"


def test_vqav2_embedded_images_travel_with_the_data_set(tmp_path: Path) -> None:
    # Prepare: embed, then delete the COCO folder.
    files = _official(tmp_path / "vqa", "val2014", num_images=2, per_image=1)
    write_vqav2(**files, out=tmp_path / "out", embed_images=True)
    for image in files["images"].iterdir():
        image.unlink()
    # Execute
    rows = load_hf_vqa(str(tmp_path / "out"), "validation").rows
    # Assert
    assert [r["image"].load().getpixel((0, 0)) for r in rows] == [(1, 1, 1), (2, 2, 2)]


def test_vqav2_fedumm_split_train_and_first_half_of_validation(tmp_path: Path) -> None:
    # Prepare: FedUMM's protocol from the two official splits written into one folder.
    train = _official(tmp_path / "vqa", "train2014", num_images=8, per_image=2)
    val = _official(tmp_path / "vqa", "val2014", num_images=5, per_image=2, first_image=100)
    write_vqav2(**train, out=tmp_path / "out", shard_rows=5)
    write_vqav2(**val, out=tmp_path / "out")
    config = DataConfig.model_validate(
        {
            "source": "hf",
            "hf": {"path": str(tmp_path / "out"), "split": "train", "test_split": "validation[:50%]"},
            "partition": {"method": "iid", "min_samples": 2},
            "local_test_fraction": 0,
        }
    )
    # Execute
    train_rows, test_rows = load_samples(config, seed=0)
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert: train is all 16 rows (4 shards of 5, 5, 5, 1); test is the first 5 of the 10 validation rows.
    assert len(list((tmp_path / "out" / "data").glob("train-*-of-00004.parquet"))) == 4
    assert [r["question_id"] for r in train_rows] == [i * 1000 + k for i in range(1, 9) for k in range(2)]
    assert [r["question_id"] for r in test_rows] == [100000, 100001, 101000, 101001, 102000]
    assert data.partition.sizes == [8, 8] and len(data.global_test) == 5


def test_vqav2_cli_writes_and_reports_progress(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Prepare
    files = _official(tmp_path / "vqa", "val2014", num_images=20, per_image=1)
    args = ["--questions", str(files["questions"]), "--annotations", str(files["annotations"])]
    args += ["--images", str(files["images"]), "--out", str(tmp_path / "out")]
    # Execute
    code = main(["data", "vqav2", *args])
    captured = capsys.readouterr()
    # Assert: a line once paired, then one per 5% (20 questions: one per question); the summary on stdout.
    assert code == 0
    progress = captured.err.splitlines()
    assert progress[0] == "vqav2 validation: 20 questions paired with their annotations (val2014)"
    assert len(progress) == 21 and progress[-1] == "vqav2 validation: 20/20 questions (100%), 0 skipped"
    assert "wrote 20 rows of split 'validation'" in captured.out
    # A second run without --overwrite refuses, in one line; with it, replaces the shard.
    assert main(["data", "vqav2", *args]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "already holds split 'validation'" in error and "--overwrite" in error
    assert main(["data", "vqav2", *args, "--overwrite"]) == 0


def test_vqav2_missing_image_raises_or_is_skipped(tmp_path: Path) -> None:
    # Prepare: image 2 (questions 2 and 3 of the file) is missing.
    files = _official(tmp_path / "vqa", "val2014", num_images=3, per_image=2)
    (files["images"] / coco_image_name("val2014", 2)).unlink()
    # Execute / Assert: raise names the file, the question and the image.
    with pytest.raises(DataError) as info:
        write_vqav2(**files, out=tmp_path / "a")
    message = str(info.value)
    assert "v2_OpenEnded_mscoco_val2014_questions.json, question 3 (1-based, question_id 2000)" in message
    assert "COCO_val2014_000000000002.jpg not found" in message
    assert not list((tmp_path / "a" / "data").glob("*")), "no partial shard is left behind"
    skipped = write_vqav2(**files, out=tmp_path / "b", on_error="skip")
    assert (skipped.rows, skipped.skipped) == (4, 2)
    assert skipped.problems_file.read_text().count("not found") == 2
    assert [r["question_id"] for r in load_hf_vqa(str(tmp_path / "b"), "validation").rows] == [1000, 1001, 3000, 3001]
    # Rewritten once the image is back: every question, and the old problem list is gone.
    Image.new("RGB", (8, 8), (2, 2, 2)).save(files["images"] / coco_image_name("val2014", 2))
    again = write_vqav2(**files, out=tmp_path / "b", on_error="skip", overwrite=True)
    assert (again.rows, again.problems_file) == (6, None) and not (tmp_path / "b" / "validation_problems.txt").exists()


@pytest.mark.parametrize(
    ("target", "change", "fragments"),
    [
        ("annotations", lambda anns: anns.pop(1), ["question 2 (1-based): question_id 1001 has no annotation in"]),
        (
            "questions",
            lambda qs: qs.pop(0),
            ["1 annotation(s) have no question in", "question_id 1000", "same split"],
        ),
        (
            "annotations",
            lambda anns: anns[0].update(image_id=7),
            ["question_id 1000 is about image_id 1", "gives image_id 7"],
        ),
        (
            "annotations",
            lambda anns: anns.append(dict(anns[0])),
            ["annotation 5 (1-based): question_id 1000 is annotated twice"],
        ),
    ],
)
def test_vqav2_mismatched_files_always_raise(tmp_path: Path, target: str, change, fragments: list[str]) -> None:
    # Prepare
    files = _official(tmp_path / "vqa", "val2014", num_images=2, per_image=2)
    _edit(files[target], target, change)
    # Execute
    with pytest.raises(DataError) as info:
        write_vqav2(**files, out=tmp_path / "out", on_error="skip")
    # Assert
    for fragment in fragments:
        assert fragment in str(info.value)


def test_vqav2_file_level_errors(tmp_path: Path) -> None:
    files = _official(tmp_path / "vqa", "val2014", num_images=1, per_image=1)
    train = _official(tmp_path / "vqa", "train2014", num_images=1, per_image=1)
    # Files of two splits.
    with pytest.raises(DataError, match="mismatched files: .* is data_subtype 'val2014', .* is 'train2014'"):
        write_vqav2(files["questions"], train["annotations"], files["images"], tmp_path / "out")
    # Not an official file, not JSON, missing.
    files["annotations"].write_text(json.dumps([{"question_id": 1}]))
    with pytest.raises(DataError, match="expected an official VQA v2 file, an object with a 'annotations' list"):
        write_vqav2(**files, out=tmp_path / "out")
    files["annotations"].write_text("{not json")
    with pytest.raises(DataError, match=r"not valid JSON \(line 1, column 2"):
        write_vqav2(**files, out=tmp_path / "out")
    with pytest.raises(DataError, match="nowhere.json: file not found"):
        write_vqav2(tmp_path / "nowhere.json", files["annotations"], files["images"], tmp_path / "out")


def test_vqav2_test_subtype_needs_a_split_name(tmp_path: Path) -> None:
    files = _official(tmp_path / "vqa", "test-dev2015", num_images=1, per_image=1)
    with pytest.raises(DataError, match="cannot tell the split of data_subtype 'test-dev2015'.*--split"):
        write_vqav2(**files, out=tmp_path / "out")
    assert write_vqav2(**files, out=tmp_path / "out", split="testdev").files[0].name == "testdev-00000-of-00001.parquet"
    # A split of any name is found in the folder by datasets' shard pattern.
    assert [r["question_id"] for r in load_hf_vqa(str(tmp_path / "out"), "testdev").rows] == [1000]


def test_vqav2_broken_annotation_field_names_the_question(tmp_path: Path) -> None:
    files = _official(tmp_path / "vqa", "val2014", num_images=1, per_image=2)
    _edit(files["annotations"], "annotations", lambda anns: anns[1].update(answers=[{"answer": 3}]))
    with pytest.raises(DataError, match=r"question 2 \(1-based, question_id 1001\): field 'answers': item 0 is"):
        write_vqav2(**files, out=tmp_path / "out")
