"""Tests for the dataset loaders: each writes its own tiny files and loads them through the real path."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from fedumm.data.loaders import (
    LoadResult,
    load_client_files,
    load_hf_vqa,
    load_llava_json,
    load_table,
    subsample_indices,
)
from fedumm.errors import DataError

VQA_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.List({"answer": datasets.Value("string"), "answer_id": datasets.Value("int32")}),
        "multiple_choice_answer": datasets.Value("string"),
        "answer_type": datasets.Value("string"),
        "question_id": datasets.Value("int64"),
        "image_id": datasets.Value("int64"),
    }
)


def _png_bytes(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa_columns(n: int, offset: int = 0) -> dict[str, list]:
    """n VQAv2-schema rows; row i's image is grey level i, its answers three votes for str(i)."""
    ids = range(offset, offset + n)
    return {
        "image": [{"bytes": _png_bytes((i, i, i)), "path": None} for i in ids],
        "question": [f"question {i}?" for i in ids],
        "answers": [[{"answer": str(i), "answer_id": k} for k in range(3)] for i in ids],
        "multiple_choice_answer": [str(i) for i in ids],
        "answer_type": ["number" if i % 2 else "other" for i in ids],
        "question_id": [1000 + i for i in ids],
        "image_id": [500 + i for i in ids],
    }


def _vqa_dataset(n: int, offset: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict(_vqa_columns(n, offset), features=VQA_FEATURES)


# ---------------------------------------------------------------------------------------------
# subsample_indices


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


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets


def _save_dataset_dict(path: Path) -> Path:
    datasets.DatasetDict({"train": _vqa_dataset(6), "validation": _vqa_dataset(2, offset=100)}).save_to_disk(path)
    return path


def _store(tmp_path: Path, layout: str) -> tuple[str, dict | None]:
    """The 6-row train split stored in ``layout``; returns (path_or_name, data_files)."""
    if layout == "save_to_disk DatasetDict":
        return str(_save_dataset_dict(tmp_path / "vqa")), None
    if layout == "save_to_disk Dataset":
        _vqa_dataset(6).save_to_disk(tmp_path / "vqa")
        return str(tmp_path / "vqa"), None
    if layout == "parquet file":
        _vqa_dataset(6).to_parquet(tmp_path / "train.parquet")
        return str(tmp_path / "train.parquet"), None
    if layout == "data_files":
        _vqa_dataset(6).to_parquet(tmp_path / "train.parquet")
        return "parquet", {"train": [str(tmp_path / "train.parquet")]}
    assert layout == "hub snapshot folder"
    (tmp_path / "snap" / "data").mkdir(parents=True)
    _vqa_dataset(6).to_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet")
    return str(tmp_path / "snap"), None


@pytest.mark.parametrize(
    "layout", ["save_to_disk DatasetDict", "save_to_disk Dataset", "parquet file", "data_files", "hub snapshot folder"]
)
def test_hf_vqa_loads_every_local_layout(tmp_path: Path, layout: str) -> None:
    # Prepare
    path, data_files = _store(tmp_path, layout)
    # Execute
    result = load_hf_vqa(path, "train", max_samples=None, seed=0, data_files=data_files)
    # Assert: row i has grey level i, three answers str(i), its type and ids.
    assert isinstance(result, LoadResult) and result.skipped == 0
    assert [r["question"] for r in result.rows] == [f"question {i}?" for i in range(6)]
    for i, row in enumerate(result.rows):
        assert row["image"].mode == "RGB" and row["image"].getpixel((0, 0)) == (i, i, i)
        assert row["answers"] == [str(i)] * 3
        assert row["multiple_choice_answer"] == str(i)
        assert row["answer_type"] == ("number" if i % 2 else "other")
        assert row["question_id"] == 1000 + i and type(row["question_id"]) is int
        assert row["metadata"]["row"] == i + 1 and row["metadata"]["image_id"] == 500 + i


def test_hf_vqa_picks_the_requested_split(tmp_path: Path) -> None:
    path = _save_dataset_dict(tmp_path / "vqa")
    rows = load_hf_vqa(str(path), "validation", None, 0).rows
    assert [r["question_id"] for r in rows] == [1100, 1101]


def test_hf_vqa_max_samples_is_a_seeded_subset(tmp_path: Path) -> None:
    # Prepare
    path = str(_save_dataset_dict(tmp_path / "vqa"))
    # Execute
    first = load_hf_vqa(path, "train", max_samples=3, seed=5).rows
    again = load_hf_vqa(path, "train", max_samples=3, seed=5).rows
    # Assert: same subset, rows numbered by their place in the full split.
    picked = [r["metadata"]["row"] for r in first]
    assert picked == [r["metadata"]["row"] for r in again]
    assert picked == [i + 1 for i in subsample_indices(6, 3, seed=5)]
    assert [r["question"] for r in first] == [f"question {n - 1}?" for n in picked]


@pytest.mark.parametrize(
    ("answers", "expected_answers", "expected_target"),
    [
        ([["a", "b", "b"]], ["a", "b", "b"], "b"),  # list of str, target = most frequent
        ([[{"answer": "x"}, {"answer": "y"}]], ["x", "y"], "x"),  # ties go to the first seen
    ],
)
def test_hf_vqa_answer_formats_and_derived_target(
    tmp_path: Path, answers: list, expected_answers: list[str], expected_target: str
) -> None:
    # Prepare: no multiple_choice_answer column.
    data = {"image": [{"bytes": _png_bytes((1, 2, 3)), "path": None}], "question": ["q?"], "answers": answers}
    datasets.Dataset.from_dict(data).cast_column("image", datasets.Image()).save_to_disk(tmp_path / "d")
    # Execute
    row = load_hf_vqa(str(tmp_path / "d"), "train", None, 0).rows[0]
    # Assert
    assert row["answers"] == expected_answers
    assert row["multiple_choice_answer"] == expected_target


def test_hf_vqa_sequence_of_dicts_answers(tmp_path: Path) -> None:
    # Prepare: a Sequence({...}) feature, which datasets returns as a dict of lists.
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"),
         "answers": datasets.Sequence({"answer": datasets.Value("string")})}
    )
    data = {"image": [{"bytes": _png_bytes((1, 2, 3)), "path": None}], "question": ["q?"],
            "answers": [{"answer": ["red", "red", "blue"]}]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(tmp_path / "d")
    # Execute
    row = load_hf_vqa(str(tmp_path / "d"), "train", None, 0).rows[0]
    # Assert
    assert row["answers"] == ["red", "red", "blue"] and row["multiple_choice_answer"] == "red"


def _dataset_with_broken_image(tmp_path: Path) -> str:
    columns = _vqa_columns(3)
    columns["image"][1] = {"bytes": b"not an image", "path": None}
    datasets.Dataset.from_dict(columns, features=VQA_FEATURES).save_to_disk(tmp_path / "broken")
    return str(tmp_path / "broken")


def test_hf_vqa_broken_image_names_the_row(tmp_path: Path) -> None:
    path = _dataset_with_broken_image(tmp_path)
    with pytest.raises(DataError, match=r"split 'train', row 2 \(1-based\): embedded image .*cannot be decoded"):
        load_hf_vqa(path, "train", None, 0)


def test_hf_vqa_skip_counts_broken_rows(tmp_path: Path) -> None:
    # Execute
    result = load_hf_vqa(_dataset_with_broken_image(tmp_path), "train", None, 0, on_error="skip")
    # Assert
    assert [r["question"] for r in result.rows] == ["question 0?", "question 2?"]
    assert result.skipped == 1 and len(result.problems) == 1 and "row 2 (1-based)" in result.problems[0]


@pytest.mark.parametrize(
    ("make", "split", "fragments"),
    [
        ("no_question", "train", ["missing column(s) ['question']"]),
        ("dict", "test", ["no split 'test'", "['train', 'validation']"]),
        ("single", "validation", ["single split ('train')", "not 'validation'", "test_split: null"]),
        ("missing", "train", ["cannot load", "nowhere"]),
    ],
)
def test_hf_vqa_dataset_level_errors(tmp_path: Path, make: str, split: str, fragments: list[str]) -> None:
    # Prepare
    path = tmp_path / "d"
    if make == "no_question":
        _vqa_dataset(2).remove_columns("question").save_to_disk(path)
    elif make == "dict":
        _save_dataset_dict(path)
    elif make == "single":
        _vqa_dataset(2).save_to_disk(path)
    else:
        path = tmp_path / "nowhere"
    # Execute
    with pytest.raises(DataError) as info:
        load_hf_vqa(str(path), split, None, 0)
    # Assert
    for fragment in fragments:
        assert fragment in str(info.value)


# ---------------------------------------------------------------------------------------------
# LLaVA JSON


def _conversation(*pairs: tuple[str, str]) -> list[dict]:
    turns = []
    for question, answer in pairs:
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def test_llava_multi_turn_gives_one_sample_per_pair(tmp_path: Path, write_image) -> None:
    # Prepare
    records = [
        {"id": "a", "image": write_image("a.png", (9, 9, 9)),
         "conversations": _conversation(("<image>\nWhat colour?", "grey"), ("Is it dark?", "yes"))},
        {"id": "b", "conversations": _conversation(("What is 2+2?", "4"))},
        {"id": "c", "image": [write_image("c1.png", (1, 1, 1)), write_image("c2.png", (2, 2, 2))],
         "conversations": _conversation(("Compare <image> and <image>.", "same"))},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records))
    # Execute
    result = load_llava_json(tmp_path / "train.json", tmp_path)
    rows = result.rows
    # Assert: 2 + 1 + 1 samples; placeholder removed; the image stays with every pair.
    assert [r["question"] for r in rows] == ["What colour?", "Is it dark?", "What is 2+2?", "Compare  and ."]
    assert [r["multiple_choice_answer"] for r in rows] == ["grey", "yes", "4", "same"]
    assert [r["answers"] for r in rows] == [["grey"], ["yes"], ["4"], ["same"]]
    assert rows[0]["image"] is rows[1]["image"] and rows[0]["image"].getpixel((0, 0)) == (9, 9, 9)
    assert rows[2]["image"] is None
    assert [im.getpixel((0, 0)) for im in rows[3]["images"]] == [(1, 1, 1), (2, 2, 2)]
    assert [(r["metadata"]["row"], r["metadata"]["turn"], r["metadata"]["id"]) for r in rows] == [
        (1, 1, "a"), (1, 2, "a"), (2, 1, "b"), (3, 1, "c")
    ]


def test_llava_image_root_defaults_to_the_json_folder(tmp_path: Path, write_image) -> None:
    records = [{"id": 1, "image": write_image("x.png"), "conversations": _conversation(("q", "a"))}]
    (tmp_path / "f.json").write_text(json.dumps(records))
    assert load_llava_json(tmp_path / "f.json").rows[0]["image"].size == (8, 8)


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"image": "images/none.png", "conversations": _conversation(("q", "a"))}, "none.png not found"),
        ({"conversations": [{"from": "human", "value": "q"}]}, "alternating human/gpt turns"),
        ({"conversations": []}, "non-empty list"),
        ({"conversations": [{"from": "gpt", "value": "a"}, {"from": "gpt", "value": "b"}]},
         "conversations[0]: 'from' is 'gpt'"),
        ({"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "b"}]}, "conversations[0]"),
        ({"label": [1], "conversations": _conversation(("q", "a"))}, "field 'label'"),
        (["not", "a", "record"], "expected a conversation object"),
    ],
)
def test_llava_broken_record_names_file_and_record(tmp_path: Path, write_image, record, fragment: str) -> None:
    # Prepare: record 2 is the broken one.
    good = {"image": write_image("ok.png"), "conversations": _conversation(("q", "a"))}
    path = tmp_path / "train.json"
    path.write_text(json.dumps([good, record, good]))
    # Execute / Assert: raise by default ...
    with pytest.raises(DataError) as info:
        load_llava_json(path, tmp_path)
    assert f"{path}, record 2 (1-based): " in str(info.value) and fragment in str(info.value)
    # ... or skip and count.
    skipped = load_llava_json(path, tmp_path, on_error="skip")
    assert (len(skipped.rows), skipped.skipped) == (2, 1)


@pytest.mark.parametrize(
    ("text", "fragment"), [("[1, 2", "not valid JSON (line 1"), ('{"a": 1}', "expected a JSON list")]
)
def test_llava_bad_file_raises(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "f.json").write_text(text)
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_llava_json(tmp_path / "f.json", tmp_path, on_error="skip")


# ---------------------------------------------------------------------------------------------
# Client files


def _write_clients(root: Path, image: str, sizes: dict[int, int], test_size: int = 2) -> None:
    """client_{i}.json with sizes[i] one-turn records whose answer is f"c{i}"; one test file."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for index, size in sizes.items():
        records = [
            {"id": k, "image": image, "conversations": _conversation((f"q{k}", f"c{index}"))} for k in range(size)
        ]
        (root / "train" / f"client_{index}.json").write_text(json.dumps(records))
    test = [{"id": k, "image": image, "conversations": _conversation(("q", "t"))} for k in range(test_size)]
    (root / "test" / "test.json").write_text(json.dumps(test))


@pytest.mark.parametrize("first", [0, 1])
def test_client_files_are_ordered_by_numeric_index(tmp_path: Path, write_image, first: int) -> None:
    # Prepare: client i holds i + 1 records; 11 clients, so client_10 sorts after client_9, not client_1.
    sizes = {first + i: i + 1 for i in range(11)}
    _write_clients(tmp_path, write_image("x.png"), sizes)
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


def test_client_files_need_a_test_file(tmp_path: Path, write_image) -> None:
    _write_clients(tmp_path, write_image("x.png"), {0: 1})
    (tmp_path / "test" / "test.json").unlink()
    with pytest.raises(DataError, match="no test"):
        load_client_files(tmp_path)


def test_client_files_skip_counts_over_all_files(tmp_path: Path, write_image) -> None:
    # Prepare: one broken record in client_1 and one in the test file.
    _write_clients(tmp_path, write_image("x.png"), {0: 2, 1: 2})
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
# Tables


def _write_table(path: Path, records: list[dict]) -> Path:
    if path.suffix == ".csv":
        columns = list(dict.fromkeys(k for r in records for k in r))
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(records)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("suffix", "answers_cell"),
    [(".jsonl", ["cat", "cat", "dog"]), (".csv", '["cat", "cat", "dog"]'), (".csv", "cat|cat|dog"),
     (".jsonl", "cat | cat | dog")],
)
def test_table_answers_formats(tmp_path: Path, write_image, suffix: str, answers_cell) -> None:
    # Prepare
    path = _write_table(tmp_path / f"t{suffix}", [
        {"image": write_image("a.png"), "question": "what animal?", "answers": answers_cell, "site": "north"},
    ])
    # Execute
    row = load_table(path).rows[0]
    # Assert
    assert row["answers"] == ["cat", "cat", "dog"]
    assert row["multiple_choice_answer"] == "cat"
    assert row["question"] == "what animal?" and row["image"].size == (8, 8)
    assert row["metadata"] == {"source": str(path), "row": 1, "site": "north"}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_table_single_answer_optional_columns_and_no_image(tmp_path: Path, write_image, suffix: str) -> None:
    # Prepare
    path = _write_table(tmp_path / f"t{suffix}", [
        {"image": "", "question": "is this meme hateful?", "answer": "no", "label": "0",
         "task": "classification", "question_id": "7", "answer_type": "yes/no"},
    ])
    # Execute
    row = load_table(path).rows[0]
    # Assert
    assert row["image"] is None
    assert (row["answers"], row["multiple_choice_answer"]) == (["no"], "no")
    assert (row["label"], row["task"], row["question_id"], row["answer_type"]) == ("0", "classification", 7, "yes/no")


@pytest.mark.parametrize(
    ("suffix", "bad", "unit", "fragment"),
    [
        (".jsonl", {"image": "images/a.png", "question": 5, "answer": "x"}, "line 2",
         "field 'question': expected a string"),
        (".jsonl", {"image": "images/a.png", "question": "q"}, "line 2", "missing field 'answer' or 'answers'"),
        (".jsonl", {"question": "q", "answer": "x"}, "line 2", "missing field 'image'"),
        (".jsonl", {"image": "images/a.png", "question": "q", "answers": []}, "line 2", "answers': empty"),
        (".csv", {"image": "images/gone.png", "question": "q", "answer": "x"}, "row 2", "gone.png not found"),
        (".csv", {"image": "images/a.png", "question": "q", "answer": "x", "question_id": "x1"}, "row 2",
         "field 'question_id': expected an integer"),
    ],
)
def test_table_broken_row_names_file_row_and_field(
    tmp_path: Path, write_image, suffix: str, bad: dict, unit: str, fragment: str
) -> None:
    # Prepare: the second record is broken.
    good = {"image": write_image("a.png"), "question": "q", "answer": "x"}
    path = _write_table(tmp_path / f"t{suffix}", [good, bad, good])
    # Execute / Assert
    with pytest.raises(DataError) as info:
        load_table(path)
    assert f"{path}, {unit} (1-based): " in str(info.value) and fragment in str(info.value)
    skipped = load_table(path, on_error="skip")
    assert (len(skipped.rows), skipped.skipped) == (2, 1)


def test_jsonl_unparsable_line_is_a_skippable_row(tmp_path: Path, write_image) -> None:
    # Prepare: line 2 is blank (ignored), line 3 is not JSON.
    good = json.dumps({"image": write_image("a.png"), "question": "q", "answer": "x"})
    path = tmp_path / "t.jsonl"
    path.write_text(f"{good}\n\n{{oops\n{good}\n")
    # Execute
    result = load_table(path, on_error="skip")
    # Assert
    assert len(result.rows) == 2 and result.skipped == 1
    assert "line 3 (1-based): not valid JSON" in result.problems[0]
    assert [r["metadata"]["row"] for r in result.rows] == [1, 4]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("t.csv", "image,text\nx,y\n", "missing column(s) ['question', 'answer or answers']"),
        ("t.txt", "x", "unsupported table type '.txt'"),
    ],
)
def test_table_file_level_errors(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=re.escape(fragment)):
        load_table(tmp_path / name, on_error="skip")


def test_table_max_samples_is_seeded(tmp_path: Path, write_image) -> None:
    image = write_image("a.png")
    path = _write_table(tmp_path / "t.jsonl", [{"image": image, "question": f"q{i}", "answer": "x"} for i in range(20)])
    first = [r["question"] for r in load_table(path, max_samples=5, seed=3).rows]
    assert first == [f"q{i}" for i in subsample_indices(20, 5, seed=3)]
    assert first == [r["question"] for r in load_table(path, max_samples=5, seed=3).rows]


def test_unknown_on_error_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "f.json").write_text("[]")
    with pytest.raises(ValueError, match="on_error"):
        load_llava_json(tmp_path / "f.json", on_error="ignore")


# ---------------------------------------------------------------------------------------------
# Hugging Face: loading scripts, hub arguments, data_files image base, null and multiple images


def test_hf_loading_script_dataset_says_how_to_load_parquet(tmp_path: Path) -> None:
    # Prepare: a folder that is only a loading script, as HuggingFaceM4/VQAv2 is on the Hub.
    (tmp_path / "VQAv2").mkdir()
    (tmp_path / "VQAv2" / "VQAv2.py").write_text("# a datasets loading script\n")
    # Execute
    with pytest.raises(DataError) as info:
        load_hf_vqa(str(tmp_path / "VQAv2"), "train")
    # Assert: a clear error naming the key to change, not datasets' RuntimeError.
    message = str(info.value)
    assert "loading script" in message and "data.hf.path" in message
    assert "data.hf.revision: refs/convert/parquet" in message and "VQAv2.py" in message


def test_hf_name_and_revision_reach_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: record what load_dataset is asked (nothing is downloaded in tests).
    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return _vqa_dataset(2)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    # Execute
    rows = load_hf_vqa("org/vqa", "train", name="default", revision="refs/convert/parquet").rows
    # Assert
    assert calls == [("org/vqa", {"split": "train", "name": "default", "revision": "refs/convert/parquet"})]
    assert [r["question"] for r in rows] == ["question 0?", "question 1?"]


def _paths_parquet(folder: Path) -> Path:
    """A parquet file in ``folder`` whose image column holds paths relative to that folder."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (7, 8, 9)).save(folder / "rel.png")
    data = {"image": ["rel.png"], "question": ["q?"], "answers": [["a"]]}
    datasets.Dataset.from_dict(data).to_parquet(folder / "paths.parquet")
    return folder / "paths.parquet"


@pytest.mark.parametrize("relative", [False, True])
def test_hf_data_files_image_paths_are_relative_to_the_data_files_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    # Prepare: data/paths.parquet names "rel.png" (= data/rel.png); run from another folder.
    parquet = _paths_parquet(tmp_path / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere" if not relative else tmp_path)
    files = "data/paths.parquet" if relative else str(parquet)
    # Execute
    row = load_hf_vqa("parquet", "train", data_files={"train": [files]}).rows[0]
    # Assert: the image next to the data file, not ./rel.png.
    assert row["image"].getpixel((0, 0)) == (7, 8, 9)


def _null_image_dataset(path: Path) -> str:
    columns = _vqa_columns(3)
    columns["image"][1] = None
    datasets.Dataset.from_dict(columns, features=VQA_FEATURES).save_to_disk(path)
    return str(path)


def test_hf_null_image_is_a_broken_row_unless_allowed(tmp_path: Path) -> None:
    path = _null_image_dataset(tmp_path / "d")
    # Execute / Assert: by default it names the row and the key that allows it ...
    with pytest.raises(DataError) as info:
        load_hf_vqa(path, "train")
    assert "split 'train', row 2 (1-based): field 'image' is null" in str(info.value)
    assert "data.hf.allow_missing_images: true" in str(info.value)
    skipped = load_hf_vqa(path, "train", on_error="skip")
    assert (len(skipped.rows), skipped.skipped) == (2, 1)
    # ... and with allow_missing_images it is a text-only row.
    rows = load_hf_vqa(path, "train", allow_missing_images=True).rows
    assert [r["image"] is None for r in rows] == [False, True, False]


def test_hf_images_column_gives_multi_image_rows(tmp_path: Path) -> None:
    # Prepare: a Sequence(Image) column with 2 images, then 1; no "image" column.
    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "question": datasets.Value("string"),
                                  "answers": datasets.Sequence(datasets.Value("string"))})
    data = {"images": [[{"bytes": _png_bytes((1, 1, 1)), "path": None}, {"bytes": _png_bytes((2, 2, 2)), "path": None}],
                       [{"bytes": _png_bytes((3, 3, 3)), "path": None}]],
            "question": ["same?", "one?"], "answers": [["yes"], ["no"]]}
    datasets.Dataset.from_dict(data, features=features).save_to_disk(tmp_path / "multi")
    # Execute
    rows = load_hf_vqa(str(tmp_path / "multi"), "train").rows
    # Assert: images = all, image = the first.
    assert [[im.getpixel((0, 0)) for im in r["images"]] for r in rows] == [[(1, 1, 1), (2, 2, 2)], [(3, 3, 3)]]
    assert [r["image"] is r["images"][0] for r in rows] == [True, True]


def test_hf_needs_an_image_or_images_column(tmp_path: Path) -> None:
    _vqa_dataset(2).remove_columns("image").save_to_disk(tmp_path / "d")
    with pytest.raises(DataError, match=re.escape("missing column(s) ['image (or images)']")):
        load_hf_vqa(str(tmp_path / "d"), "train")


# ---------------------------------------------------------------------------------------------
# LLaVA: chat-style turns (FedMLLM), empty answers, image lists


def test_llava_accepts_fedmllm_role_content_turns(tmp_path: Path, write_image) -> None:
    # Prepare: FedMLLM's generator output: "image": null for a text-less record, role/content turns;
    # and a chat-style content list with an image part.
    records = [
        {"id": 1, "image": None, "conversations": [
            {"role": "user", "content": "Is the content hateful?"},
            {"role": "assistant", "content": "(A) not-hateful"}]},
        {"id": 2, "image": write_image("m.png"), "conversations": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hateful?"}]},
            {"role": "assistant", "content": "(B) hateful"}]},
    ]
    (tmp_path / "client_0.json").write_text(json.dumps(records))
    # Execute
    rows = load_llava_json(tmp_path / "client_0.json", tmp_path).rows
    # Assert
    assert [(r["question"], r["multiple_choice_answer"]) for r in rows] == [
        ("Is the content hateful?", "(A) not-hateful"), ("Hateful?", "(B) hateful")]
    assert rows[0]["image"] is None and rows[1]["image"].size == (8, 8)


@pytest.mark.parametrize(
    ("turns", "fragment"),
    [
        ([{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}], "conversations[1]: empty answer"),
        ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], "conversations[1]: empty answer"),
        ([{"role": "system", "content": "q"}, {"role": "assistant", "content": "a"}],
         "conversations[0]: 'role' is 'system'"),
        ([{"role": "user", "content": 7}, {"role": "assistant", "content": "a"}],
         "conversations[0]: expected {'role': ..., 'content': str}"),
    ],
)
def test_llava_bad_turns_are_broken_records(tmp_path: Path, turns: list, fragment: str) -> None:
    path = tmp_path / "f.json"
    path.write_text(json.dumps([{"conversations": turns}]))
    with pytest.raises(DataError) as info:
        load_llava_json(path)
    assert f"{path}, record 1 (1-based): {fragment}" in str(info.value)


def test_llava_single_item_image_list_still_gives_images(tmp_path: Path, write_image) -> None:
    record = {"image": [write_image("a.png", (5, 5, 5))], "conversations": _conversation(("q", "a"))}
    (tmp_path / "f.json").write_text(json.dumps([record]))
    row = load_llava_json(tmp_path / "f.json", tmp_path).rows[0]
    assert len(row["images"]) == 1 and row["image"] is row["images"][0]


# ---------------------------------------------------------------------------------------------
# Client files: per-client test files


def _write_client_tests(root: Path, image: str, sizes: dict[int, int]) -> None:
    for index, size in sizes.items():
        records = [{"id": k, "image": image, "conversations": _conversation((f"t{k}", f"local{index}"))}
                   for k in range(size)]
        (root / "test" / f"client_{index}.json").write_text(json.dumps(records))


def test_client_test_files_are_local_splits_and_their_union_the_global_test(tmp_path: Path, write_image) -> None:
    # Prepare: 2 clients (3 and 4 training records), test/client_{0,1}.json with 2 and 1 records, no other test file.
    _write_clients(tmp_path, write_image("x.png"), {0: 3, 1: 4})
    (tmp_path / "test" / "test.json").unlink()
    _write_client_tests(tmp_path, "images/x.png", {0: 2, 1: 1})
    # Execute
    result = load_client_files(tmp_path)
    # Assert: local test splits per client; the global test set is their union, tagged by client.
    assert result.client_tests is not None
    assert [[r["multiple_choice_answer"] for r in rows] for rows in result.client_tests] == [
        ["local0", "local0"], ["local1"]]
    assert [(r["client_id"], r["multiple_choice_answer"]) for r in result.test] == [
        (0, "local0"), (0, "local0"), (1, "local1")]
    assert all("client_id" not in r for rows in result.client_tests for r in rows)


def test_client_test_files_next_to_a_global_test_file(tmp_path: Path, write_image) -> None:
    # Prepare: per-client test files and test/test.json (2 records, answer "t").
    _write_clients(tmp_path, write_image("x.png"), {1: 2, 2: 2})
    _write_client_tests(tmp_path, "images/x.png", {1: 1, 2: 3})
    # Execute
    result = load_client_files(tmp_path)
    # Assert: the other file is the global test set; client files stay local.
    assert [len(rows) for rows in result.client_tests] == [1, 3]
    assert [r["multiple_choice_answer"] for r in result.test] == ["t", "t"]


def test_client_test_files_must_cover_every_client(tmp_path: Path, write_image) -> None:
    _write_clients(tmp_path, write_image("x.png"), {0: 2, 1: 2, 2: 2})
    _write_client_tests(tmp_path, "images/x.png", {0: 1, 2: 1})
    with pytest.raises(DataError, match=re.escape("no test file for client(s) [1]")):
        load_client_files(tmp_path)


# ---------------------------------------------------------------------------------------------
# Tables: multi-image rows, ragged CSV rows, Hateful Memes


@pytest.mark.parametrize(
    ("suffix", "record"),
    [
        (".jsonl", {"images": ["images/a.png", "images/b.png"], "question": "same?", "answer": "no"}),
        (".jsonl", {"image": ["images/a.png", "images/b.png"], "question": "same?", "answer": "no"}),
        (".jsonl", {"image": "images/a.png", "images": ["images/a.png", "images/b.png"], "question": "same?",
                    "answer": "no"}),
        (".csv", {"images": '["images/a.png", "images/b.png"]', "question": "same?", "answer": "no"}),
        (".csv", {"image": "", "images": "images/a.png|images/b.png", "question": "same?", "answer": "no"}),
    ],
)
def test_table_images_list_gives_multi_image_rows(tmp_path: Path, write_image, suffix: str, record: dict) -> None:
    # Prepare
    write_image("a.png", (1, 1, 1))
    write_image("b.png", (2, 2, 2))
    path = _write_table(tmp_path / f"t{suffix}", [record])
    # Execute
    row = load_table(path).rows[0]
    # Assert: images = all, image = the first, and "images" is not copied into metadata.
    assert [im.getpixel((0, 0)) for im in row["images"]] == [(1, 1, 1), (2, 2, 2)]
    assert row["image"] is row["images"][0]
    assert "images" not in row["metadata"]


def test_table_image_must_be_the_first_of_images(tmp_path: Path, write_image) -> None:
    write_image("a.png")
    write_image("b.png")
    path = _write_table(tmp_path / "t.jsonl", [
        {"image": "images/b.png", "images": ["images/a.png", "images/b.png"], "question": "q", "answer": "x"}])
    with pytest.raises(DataError, match=re.escape("line 1 (1-based): field 'image' ('images/b.png') is not the first")):
        load_table(path)


def test_ragged_csv_rows_are_row_problems(tmp_path: Path, write_image) -> None:
    # Prepare: header of 4 columns; row 2 has 5 cells, row 3 has 2.
    image = write_image("a.png")
    path = tmp_path / "t.csv"
    path.write_text(f"image,question,answer,site\n{image},q,x,s1\n{image},q,x,s2,EXTRA\n{image},q\n{image},q,y,s3\n")
    # Execute / Assert: raise names file, row and the column counts ...
    with pytest.raises(DataError) as info:
        load_table(path)
    assert f"{path}, row 2 (1-based): has 5 columns, the header has 4 (image, question, answer, site)" in str(info.value)
    # ... skip drops both, and no row carries a None key in its metadata.
    result = load_table(path, on_error="skip")
    assert result.skipped == 2 and "row 3 (1-based): has 2 columns" in result.problems[1]
    assert [r["metadata"]["site"] for r in result.rows] == ["s1", "s3"]
    assert all(None not in r["metadata"] for r in result.rows)


def test_hateful_memes_format(tmp_path: Path, write_image) -> None:
    # Prepare: the Hateful Memes jsonl columns (id, img, label, text); one bad label.
    write_image("42.png")
    write_image("43.png")
    lines = [{"id": 42, "img": "images/42.png", "label": 1, "text": "some meme text"},
             {"id": 43, "img": "images/43.png", "label": 0, "text": "another"},
             {"id": 44, "img": "images/43.png", "label": 3, "text": "bad label"}]
    path = _write_table(tmp_path / "train.jsonl", lines)
    # Execute
    result = load_table(path, on_error="skip", table_format="hateful_memes")
    # Assert
    first, second = result.rows
    assert first["question"] == "some meme text\nIs the content hateful based on the text and image?"
    assert (first["multiple_choice_answer"], first["label"], first["task"]) == ("yes", "1", "classification")
    assert (second["answers"], second["label"]) == (["no"], "0")
    assert first["metadata"]["id"] == 42 and first["metadata"]["text"] == "some meme text"
    assert result.skipped == 1 and "line 3 (1-based): field 'label': expected 0 or 1, got 3" in result.problems[0]


def test_load_result_counts_skipped_rows_by_source(tmp_path: Path, write_image) -> None:
    good = {"image": write_image("a.png"), "question": "q", "answer": "x"}
    path = _write_table(tmp_path / "t.jsonl", [good, {"question": "q"}, good])
    result = load_table(path, on_error="skip")
    assert result.skipped_by_source == {str(path): 1}
    assert load_table(_write_table(tmp_path / "u.jsonl", [good])).skipped_by_source == {}
