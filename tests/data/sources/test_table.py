"""Tests for the table source (fedumm.data.sources.table): JSONL/CSV tables, answer and image cells, broken
rows, Hateful Memes, and the source through DataConfig -> FederatedData (FedMLLM stand-ins)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from PIL import Image

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.modality import BOTH, IMAGE_ONLY, TEXT_ONLY, modality_of
from fedumm.data.rows import subsample_indices
from fedumm.data.sources.table import load_table
from fedumm.errors import DataError


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
    [
        (".jsonl", ["cat", "cat", "dog"]),
        (".csv", '["cat", "cat", "dog"]'),
        (".csv", "cat|cat|dog"),
        (".jsonl", "cat | cat | dog"),
    ],
)
def test_table_answers_formats(tmp_path: Path, write_image, suffix: str, answers_cell) -> None:
    # Prepare
    path = _write_table(
        tmp_path / f"t{suffix}",
        [
            {"image": write_image("a.png"), "question": "what animal?", "answers": answers_cell, "site": "north"},
        ],
    )
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
    path = _write_table(
        tmp_path / f"t{suffix}",
        [
            {
                "image": "",
                "question": "is this meme hateful?",
                "answer": "no",
                "label": "0",
                "task": "classification",
                "question_id": "7",
                "answer_type": "yes/no",
            },
        ],
    )
    # Execute
    row = load_table(path).rows[0]
    # Assert
    assert row["image"] is None
    assert (row["answers"], row["multiple_choice_answer"]) == (["no"], "no")
    assert (row["label"], row["task"], row["question_id"], row["answer_type"]) == ("0", "classification", 7, "yes/no")


@pytest.mark.parametrize(
    ("suffix", "bad", "unit", "fragment"),
    [
        (
            ".jsonl",
            {"image": "images/a.png", "question": 5, "answer": "x"},
            "line 2",
            "field 'question': expected a string",
        ),
        (".jsonl", {"image": "images/a.png", "question": "q"}, "line 2", "missing field 'answer' or 'answers'"),
        (".jsonl", {"question": "q", "answer": "x"}, "line 2", "missing field 'image'"),
        (".jsonl", {"image": "images/a.png", "question": "q", "answers": []}, "line 2", "answers': empty"),
        (".csv", {"image": "images/gone.png", "question": "q", "answer": "x"}, "row 2", "gone.png not found"),
        (
            ".csv",
            {"image": "images/a.png", "question": "q", "answer": "x", "question_id": "x1"},
            "row 2",
            "field 'question_id': expected an integer",
        ),
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


# ---------------------------------------------------------------------------------------------
# Multi-image rows, ragged CSV rows, Hateful Memes


@pytest.mark.parametrize(
    ("suffix", "record"),
    [
        (".jsonl", {"images": ["images/a.png", "images/b.png"], "question": "same?", "answer": "no"}),
        (".jsonl", {"image": ["images/a.png", "images/b.png"], "question": "same?", "answer": "no"}),
        (
            ".jsonl",
            {"image": "images/a.png", "images": ["images/a.png", "images/b.png"], "question": "same?", "answer": "no"},
        ),
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
    assert [im.load().getpixel((0, 0)) for im in row["images"]] == [(1, 1, 1), (2, 2, 2)]
    assert row["image"] is row["images"][0]
    assert "images" not in row["metadata"]


def test_table_image_must_be_the_first_of_images(tmp_path: Path, write_image) -> None:
    write_image("a.png")
    write_image("b.png")
    path = _write_table(
        tmp_path / "t.jsonl",
        [{"image": "images/b.png", "images": ["images/a.png", "images/b.png"], "question": "q", "answer": "x"}],
    )
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
    expected = f"{path}, row 2 (1-based): has 5 columns, the header has 4 (image, question, answer, site)"
    assert expected in str(info.value)
    # ... skip drops both, and no row carries a None key in its metadata.
    result = load_table(path, on_error="skip")
    assert result.skipped == 2 and "row 3 (1-based): has 2 columns" in result.problems[1]
    assert [r["metadata"]["site"] for r in result.rows] == ["s1", "s3"]
    assert all(None not in r["metadata"] for r in result.rows)


def test_hateful_memes_format(tmp_path: Path, write_image) -> None:
    # Prepare: the Hateful Memes jsonl columns (id, img, label, text); one bad label.
    write_image("42.png")
    write_image("43.png")
    lines = [
        {"id": 42, "img": "images/42.png", "label": 1, "text": "some meme text"},
        {"id": 43, "img": "images/43.png", "label": 0, "text": "another"},
        {"id": 44, "img": "images/43.png", "label": 3, "text": "bad label"},
    ]
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


# ---------------------------------------------------------------------------------------------
# The source through the config: FedMLLM stand-ins, natural sites, global hold-out


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_fedmllm_standin_hateful_memes_modality_mix(tmp_path: Path, rate: float, write_memes) -> None:
    # Prepare: 60 training memes, 12 test memes; 6 clients, Dirichlet over the label; mix rate 0 or 1.
    write_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    write_memes(tmp_path / "test.jsonl", tmp_path / "img", 12, offset=100)
    config = DataConfig.model_validate(
        {
            "source": "table",
            "table": {"path": str(tmp_path / "train.jsonl"), "test_path": str(tmp_path / "test.jsonl")},
            "partition": {"method": "dirichlet", "alpha": 1.0, "label_column": "label", "min_samples": 3},
            "modality": {"scenario": "mix", "rate": rate},
        }
    )
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


def test_table_natural_sites_and_global_holdout(tmp_path: Path, write_memes) -> None:
    # Prepare: 60 memes on sites s0/s1 (30 each), no test file -> hold out 10% = 6 rows.
    write_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    config = DataConfig.model_validate(
        {
            "source": "table",
            "table": {"path": str(tmp_path / "train.jsonl")},
            "partition": {"method": "natural", "column": "site", "min_samples": 5},
            "local_test_fraction": 0.0,
        }
    )
    # Execute
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert
    assert len(data.global_test) == 6 and sum(data.partition.sizes) == 54
    for site, client in zip(("s0", "s1"), data.clients):
        assert {r["metadata"]["site"] for r in client.train} == {site}
    held_out = {r["metadata"]["row"] for r in data.global_test}
    assert not held_out & {r["metadata"]["row"] for r in data.pooled_train}


def test_hateful_memes_table_format_through_the_config(tmp_path: Path) -> None:
    # Prepare: raw Hateful Memes lines (img, text, label).
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(12):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"id": i, "img": f"img/{i}.png", "text": f"meme {i}", "label": i % 2}))
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    config = DataConfig.model_validate(
        {
            "source": "table",
            "table": {"path": str(tmp_path / "train.jsonl"), "format": "hateful_memes"},
            "partition": {"method": "iid", "min_samples": 1},
            "global_test_fraction": 0.25,
        }
    )
    # Execute
    train, test = load_samples(config, seed=0)
    # Assert
    assert len(train) == 9 and len(test) == 3
    assert {r["multiple_choice_answer"] for r in train + test} == {"yes", "no"}
    assert all(r["task"] == "classification" and r["question"].startswith("meme ") for r in train)


def _write_raw_memes(path: Path, image_dir: Path, n: int, offset: int = 0) -> None:
    """Hateful Memes files as distributed: {"id", "img", "text", "label"}; every third meme hateful."""
    image_dir.mkdir(exist_ok=True)
    lines = []
    for i in range(offset, offset + n):
        Image.new("RGB", (8, 8), (i % 256, 0, 0)).save(image_dir / f"{i}.png")
        lines.append(json.dumps({"id": i, "img": f"img/{i}.png", "text": f"meme {i}", "label": int(i % 3 == 0)}))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_fedmllm_config_runs_on_standin_memes(tmp_path: Path, run_seed_config) -> None:
    from fedumm.report import format_summary

    _write_raw_memes(tmp_path / "train.jsonl", tmp_path / "img", 60)
    _write_raw_memes(tmp_path / "dev.jsonl", tmp_path / "img", 12, offset=100)
    with (tmp_path / "train.jsonl").open("a") as handle:  # two broken lines, skipped by the config
        handle.write('{"id": 900, "img": "img/none.png", "text": "x", "label": 0}\n{"id": 901, "text": "y"}\n')
    config, result = run_seed_config(
        "fedmllm_hateful_memes.yaml",
        tmp_path,
        "tiny-llava",
        f"data.table.path={tmp_path / 'train.jsonl'}",
        f"data.table.test_path={tmp_path / 'dev.jsonl'}",
        "federation.num_clients=4",
        "data.partition.min_samples=3",
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


# ----------------------------------------------------------------------------------------------------
# Untrusted files: image paths outside image_root, non-UTF-8 bytes


def _outside_reference(tmp_path: Path, kind: str) -> str:
    """An image path, as a row writes it, that resolves outside tmp_path/root (which holds the table)."""
    solid = Image.new("RGB", (8, 8), (3, 3, 3))
    solid.save(tmp_path / "x.png")
    if kind == "dotdot":
        return "../x.png"
    if kind == "absolute":
        return str(tmp_path / "x.png")
    (tmp_path / "root" / "link.png").symlink_to(tmp_path / "x.png")
    return "link.png"


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_table_image_outside_the_root_is_a_row_error(tmp_path: Path, kind: str) -> None:
    # Prepare: row 2 names an image outside root/ (the table's folder, the default image_root).
    (tmp_path / "root").mkdir()
    Image.new("RGB", (8, 8), (1, 1, 1)).save(tmp_path / "root" / "in.png")
    reference = _outside_reference(tmp_path, kind)
    records = [
        {"image": "in.png", "question": "q", "answer": "a"},
        {"image": reference, "question": "q", "answer": "a"},
    ]
    path = _write_table(tmp_path / "root" / "t.jsonl", records)
    root = (tmp_path / "root").resolve()
    # Execute
    skipped = load_table(path, on_error="skip")
    allowed = load_table(path, allow_outside_root=True)
    # Assert
    expected = (
        f"{path}, line 2 (1-based): image path {reference!r} resolves to {(tmp_path / 'x.png').resolve()}, "
        f"outside the image root {root}; set data.table.allow_outside_root: true to read images outside it"
    )
    assert skipped.skipped == 1 and skipped.problems == [expected] and len(skipped.rows) == 1
    with pytest.raises(DataError, match=re.escape(expected)):
        load_table(path)
    assert allowed.rows[1]["image"].load().getpixel((0, 0)) == (3, 3, 3)


def test_table_symlink_inside_the_root_and_subfolders_are_fine(tmp_path: Path, write_image) -> None:
    # Prepare: images/../images/a.png stays inside; a symlink to a file inside the root too.
    write_image("a.png", (4, 4, 4))
    (tmp_path / "alias.png").symlink_to(tmp_path / "images" / "a.png")
    records = [
        {"image": "images/../images/a.png", "question": "q", "answer": "a"},
        {"image": "alias.png", "question": "q", "answer": "a"},
    ]
    # Execute
    rows = load_table(_write_table(tmp_path / "t.jsonl", records)).rows
    # Assert
    assert [row["image"].load().getpixel((0, 0)) for row in rows] == [(4, 4, 4), (4, 4, 4)]


def test_table_allow_outside_root_through_the_config(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / "root").mkdir()
    records = [{"image": _outside_reference(tmp_path, "dotdot"), "question": "q", "answer": "a"}] * 10
    path = _write_table(tmp_path / "root" / "t.jsonl", records)
    # Execute
    train, test = load_samples(DataConfig(source="table", table={"path": str(path), "allow_outside_root": True}), 0)
    # Assert
    assert len(train) + len(test) == 10
    with pytest.raises(DataError, match=r"line 1 \(1-based\): image path '\.\./x\.png' resolves to .*allow_outside"):
        load_samples(DataConfig(source="table", table={"path": str(path)}), 0)


@pytest.mark.parametrize(("suffix", "unit_line"), [(".jsonl", 2), (".csv", 3)])
def test_table_non_utf8_bytes_name_the_file_and_the_byte_offset(tmp_path: Path, suffix: str, unit_line: int) -> None:
    # Prepare: a Latin-1 "é" (0xe9) in the second record's question.
    if suffix == ".jsonl":
        head = b'{"image": "", "question": "q", "answer": "a"}\n{"image": "", "question": "caf'
        data = head + b'\xe9", "answer": "a"}\n'
    else:
        head = b"image,question,answer\n,q,a\n,caf"
        data = head + b"\xe9,a\n"
    path = tmp_path / f"t{suffix}"
    path.write_bytes(data)
    # Execute / Assert
    expected = f"{path}: not UTF-8 text: byte 0xe9 at byte offset {len(head)} (0-based, line {unit_line})"
    with pytest.raises(DataError, match=re.escape(expected)):
        load_table(path, on_error="skip")


def test_table_unresolvable_image_paths_are_row_errors(tmp_path: Path) -> None:
    # Prepare: a symlink loop and a path with a NUL byte.
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    records = [{"image": name, "question": "q", "answer": "a"} for name in ("loop.png", "a\x00.png")]
    # Execute
    result = load_table(_write_table(tmp_path / "t.jsonl", records), on_error="skip")
    # Assert
    assert result.skipped == 2
    assert [p.split(": ", 1)[1].split(" (")[0] for p in result.problems] == [
        "image path 'loop.png' cannot be resolved",
        "image path 'a\\x00.png' cannot be resolved",
    ]


# ---------------------------------------------------------------- text-to-image tables

T2I_META = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "red"}]}


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_t2i_table_rows(tmp_path: Path, write_image, suffix: str) -> None:
    # Prepare: in CSV the geneval cell is a JSON string.
    meta = T2I_META if suffix == ".jsonl" else json.dumps(T2I_META)
    records = [
        {"prompt": "a red square", "image": write_image("a.png"), "geneval": meta, "site": "north"},
        {"prompt": "a blue circle", "image": write_image("b.png", (0, 0, 200)), "geneval": "", "site": "south"},
    ]
    path = _write_table(tmp_path / f"t{suffix}", records)
    # Execute
    rows = load_table(path, task="t2i").rows
    # Assert
    assert [r["prompt"] for r in rows] == ["a red square", "a blue circle"]
    assert all(r["task"] == "t2i" and r["question"] == "" and r["answers"] == [] for r in rows)
    assert rows[0]["geneval"] == {**T2I_META, "prompt": "a red square"} and rows[0]["tag"] == "colors"
    assert "geneval" not in rows[1]
    assert rows[1]["image"].load().getpixel((0, 0)) == (0, 0, 200)
    assert rows[0]["metadata"] == {"source": str(path), "row": 1, "site": "north"}


@pytest.mark.parametrize(
    ("record", "fragment"),
    [
        ({"image": "images/a.png", "prompt": ""}, "missing field 'prompt'"),
        ({"prompt": "a red square"}, "missing field 'image'"),
        ({"prompt": "a red square", "image": "images/none.png"}, "images/none.png"),
        ({"prompt": "a", "image": "images/a.png", "task": "vqa"}, "field 'task' is 'vqa' in a t2i table"),
        ({"prompt": "a", "image": "images/a.png", "geneval": {"tag": "x"}}, "'include' must be a non-empty list"),
        (
            {"prompt": "a", "image": "images/a.png", "geneval": {**T2I_META, "prompt": "b"}},
            "its prompt 'b' differs from the row's prompt 'a'",
        ),
    ],
)
def test_t2i_table_bad_rows_name_file_and_line(tmp_path: Path, write_image, record: dict, fragment: str) -> None:
    write_image("a.png")
    path = _write_table(tmp_path / "t.jsonl", [{"prompt": "ok", "image": "images/a.png"}, record])
    with pytest.raises(DataError) as info:
        load_table(path, task="t2i")
    message = str(info.value)
    assert message.startswith(f"{path}, line 2 (1-based): ") and fragment in message


def test_t2i_csv_needs_prompt_and_image_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("image,question\na.png,q\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['prompt'\]"):
        load_table(path, task="t2i")


def test_t2i_table_through_the_config(tmp_path: Path, write_image) -> None:
    # Prepare: 20 t2i rows, colour column for the partition.
    records = [
        {"prompt": f"a {c} square", "image": write_image(f"{i}.png"), "color": c}
        for i, c in enumerate(["red", "blue"] * 10)
    ]
    path = _write_table(tmp_path / "t.jsonl", records)
    config = DataConfig.model_validate(
        {
            "source": "table",
            "table": {"path": str(path), "task": "t2i"},
            "partition": {"label_column": "color", "min_samples": 2},
        }
    )
    # Execute
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert: the colour column reached the partition (from metadata) and the rows are t2i.
    assert all(r["task"] == "t2i" for r in data.pooled_train + data.global_test)
    assert len(data.global_test) == 2 and sum(data.partition.sizes) == 18


def test_t2i_table_refuses_the_hateful_memes_format() -> None:
    with pytest.raises(ValueError, match="data.table.task: t2i reads the fedumm format only"):
        DataConfig.model_validate({"table": {"path": "x.jsonl", "task": "t2i", "format": "hateful_memes"}})


# ---------------------------------------------------------------- configs/fedumm_geneval.yaml


def test_fedumm_geneval_config_follows_fedumm_and_fails_only_on_the_downloads(configs_dir: Path, tmp_path) -> None:
    from fedumm.federation.job import official_prompts
    from fedumm.validation import load_run_config

    # Execute: the shipped config validates without any of its files present.
    config = load_run_config(configs_dir / "fedumm_geneval.yaml", [f"output.dir={tmp_path}"])
    text = (configs_dir / "fedumm_geneval.yaml").read_text()
    # Assert: FedUMM's LoRA, rounds and local epochs; Janus-Pro; a user's t2i table; GenEval's prompts.
    assert (config.adapter.r, config.adapter.alpha, config.federation.rounds) == (16, 32, 100)
    assert (config.train.local_epochs, config.train.weight_decay) == (5, 0.05)
    assert config.federation.strategy.name == "fedavg"
    assert (config.model.backend, config.model.name_or_path) == ("janus", "models/Janus-Pro-1B")
    assert (config.data.source, config.data.table.task, config.eval.task) == ("table", "t2i", "t2i")
    assert config.eval.evaluation().primary_metric == "image_token_accuracy" and config.eval.geneval_samples == 4
    for download in ("NOT RUNNABLE OFFLINE", "deepseek-community/Janus-Pro-1B", "evaluation_metadata.jsonl"):
        assert download in text
    # The missing downloads fail where they are read, each in one line naming its file or key.
    with pytest.raises(DataError, match=r"data/t2i/train.jsonl"):
        build_federated_data(config.data, config.federation.num_clients, config.seed, task=config.eval.task)
    with pytest.raises(DataError, match=r"^eval.geneval_prompts: data/geneval/evaluation_metadata.jsonl: file not"):
        official_prompts(config)


@pytest.mark.slow
def test_fedumm_geneval_config_runs_on_a_standin(tmp_path: Path, run_seed_config) -> None:
    from fedumm.data.geneval import read_geneval_layout
    from fedumm.data.synthetic import make_synthetic_t2i

    # Prepare: a user's prompt/image tables (no GenEval metadata) and a 2-prompt GenEval file.
    folder = tmp_path / "t2i"
    (folder / "images").mkdir(parents=True)
    rows = make_synthetic_t2i(28, seed=3)
    for i, row in enumerate(rows):
        row["image"].save(folder / "images" / f"{i}.png")
    lines = [json.dumps({"prompt": r["prompt"], "image": f"images/{i}.png"}) for i, r in enumerate(rows)]
    (folder / "train.jsonl").write_text("\n".join(lines[:24]) + "\n")
    (folder / "test.jsonl").write_text("\n".join(lines[24:]) + "\n")
    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("\n".join(json.dumps(r["geneval"]) for r in rows[:2]) + "\n")
    # Execute: the shipped config, only paths and sizes redirected.
    _, result = run_seed_config(
        "fedumm_geneval.yaml",
        tmp_path,
        "tiny-janus",
        f"data.table.path={folder / 'train.jsonl'}",
        f"data.table.test_path={folder / 'test.jsonl'}",
        f"eval.geneval_prompts={prompts}",
        "eval.geneval_samples=2",
        "eval.batch_size=4",
        "federation.num_clients=2",
        "data.partition.min_samples=4",
    )
    # Assert: scored by image-token accuracy over the 4 test rows, none checkable; 2 x 2 official images.
    summary, final = result.summary, result.federated.records[-1]["global"]
    assert summary["metric"] == "image_token_accuracy" and 0 <= summary["federated_final_accuracy"] <= 1
    assert (final["n"], final["geneval_checked"]) == (4, 0) and "geneval_overall" not in final
    official = read_geneval_layout(summary["geneval_official"]["folder"])
    assert [len(f.samples) for f in official] == [2, 2] and official[1].metadata["prompt"] == rows[1]["prompt"]
    assert "GenEval prompts: 2 images for each of 2 prompts" in (Path(summary["run_dir"]) / "summary.txt").read_text()
