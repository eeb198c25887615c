"""Tests for GenEval's files (fedumm.data.geneval): the prompt file, the output layout and its round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedumm.data.geneval import load_geneval_prompts, read_geneval_layout, write_geneval_layout
from fedumm.data.synthetic import make_synthetic_t2i
from fedumm.errors import DataError

# Lines in the form of GenEval's prompts/evaluation_metadata.jsonl.
PROMPTS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {
        "tag": "counting",
        "include": [{"class": "dog", "count": 3}],
        "exclude": [{"class": "dog", "count": 4}],
        "prompt": "a photo of three dogs",
    },
    {
        "tag": "position",
        "include": [{"class": "cup", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}],
        "prompt": "a photo of a cat left of a cup",
    },
    {
        "tag": "color_attr",
        "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "bird", "count": 1, "color": "blue"}],
        "prompt": "a photo of a red car and a blue bird",
    },
]


def _write_prompts(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_prompt_file_gives_t2i_rows_without_images(tmp_path: Path) -> None:
    # Prepare: a blank line between prompts is skipped and not counted.
    path = _write_prompts(tmp_path / "evaluation_metadata.jsonl", [PROMPTS[0], "", *PROMPTS[1:]])
    # Execute
    rows = load_geneval_prompts(path).rows
    # Assert
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PROMPTS]
    assert [r["geneval"] for r in rows] == PROMPTS
    assert [r["tag"] for r in rows] == ["single_object", "counting", "position", "color_attr"]
    assert all(r["task"] == "t2i" and r["image"] is None and r["answers"] == [] for r in rows)
    assert [r["metadata"]["prompt_index"] for r in rows] == [0, 1, 2, 3]
    assert [r["metadata"]["row"] for r in rows] == [1, 3, 4, 5]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "line 2 (1-based): not valid JSON"),
        (["a list"], "line 2 (1-based): expected a JSON object"),
        ({"tag": "counting", "include": [{"class": "dog", "count": 2}]}, "field 'prompt': expected a non-empty string"),
        ({"prompt": "a dog", "include": [{"class": "dog", "count": 1}]}, "'tag' must be a non-empty string"),
        ({"prompt": "a dog", "tag": "single_object", "include": []}, "'include' must be a non-empty list"),
        ({"prompt": "a dog", "tag": "x", "include": [{"class": "dog", "count": 0}]}, "include[0]: 'count' must be"),
        ({"prompt": "a dog", "tag": "x", "include": [{"class": "", "count": 1}]}, "include[0]: 'class' must be"),
        (
            {"prompt": "a", "tag": "position", "include": [{"class": "dog", "count": 1, "position": ["left of", 0]}]},
            "include[0]: 'position' must be [relation, index of an earlier include clause]",
        ),
        (
            {"prompt": "a", "tag": "x", "include": [{"class": "dog", "count": 1}], "exclude": [{"class": "dog"}]},
            "exclude[0]: 'count' must be an integer >= 1",
        ),
        ({"prompt": "a", "tag": "x", "include": [{"class": "dog", "count": 1, "size": 2}]}, "unknown key(s) ['size']"),
    ],
)
def test_bad_prompt_lines_name_file_and_line(tmp_path: Path, line, fragment: str) -> None:
    path = _write_prompts(tmp_path / "evaluation_metadata.jsonl", [PROMPTS[0], line])
    with pytest.raises(DataError) as info:
        load_geneval_prompts(path)
    message = str(info.value)
    assert message.startswith(f"{path}, line 2 (1-based): ") and fragment in message and "\n" not in message


def test_bad_lines_can_be_skipped_and_keep_later_indices(tmp_path: Path) -> None:
    path = _write_prompts(tmp_path / "m.jsonl", [PROMPTS[0], "{bad", PROMPTS[1]])
    result = load_geneval_prompts(path, on_error="skip")
    assert result.skipped == 1 and [r["metadata"]["prompt_index"] for r in result.rows] == [0, 2]


def test_missing_prompt_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        load_geneval_prompts(tmp_path / "missing.jsonl")


def test_layout_round_trip_matches_genevals_folders(tmp_path: Path) -> None:
    # Prepare: the prompt rows and two generated images per prompt.
    rows = load_geneval_prompts(_write_prompts(tmp_path / "evaluation_metadata.jsonl", PROMPTS)).rows
    images = [[Image.new("RGB", (16, 16), (i * 40, k * 100, 7)) for k in range(2)] for i in range(len(rows))]
    out = tmp_path / "geneval"
    # Execute
    folders = write_geneval_layout(out, rows, images)
    back = read_geneval_layout(out)
    # Assert: GenEval's names, one JSON line per metadata file, the metadata and pixels unchanged.
    assert [f.name for f in folders] == ["00000", "00001", "00002", "00003"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())[:3] == [
        "00000/metadata.jsonl",
        "00000/samples/0000.png",
        "00000/samples/0001.png",
    ]
    assert (out / "00001" / "metadata.jsonl").read_text().count("\n") == 1
    assert [f.metadata for f in back] == PROMPTS and [f.index for f in back] == [0, 1, 2, 3]
    assert [[p.name for p in f.samples] for f in back] == [["0000.png", "0001.png"]] * 4
    assert np.asarray(Image.open(back[2].samples[1])).tolist()[0][0] == [80, 100, 7]


def test_layout_of_synthetic_rows_uses_their_position_and_metadata(tmp_path: Path) -> None:
    rows = make_synthetic_t2i(3, seed=0)
    write_geneval_layout(tmp_path, rows, [[r["image"]] for r in rows])
    back = read_geneval_layout(tmp_path)
    assert [f.metadata for f in back] == [r["geneval"] for r in rows]
    assert np.array_equal(np.asarray(Image.open(back[1].samples[0])), np.asarray(rows[1]["image"]))


def test_rows_without_metadata_write_their_prompt(tmp_path: Path) -> None:
    write_geneval_layout(tmp_path, [{"prompt": "a cat"}], [[Image.new("RGB", (4, 4))]])
    assert read_geneval_layout(tmp_path)[0].metadata == {"prompt": "a cat"}


@pytest.mark.parametrize(
    ("rows", "images", "fragment"),
    [
        ([{"prompt": "a"}], [], "1 rows but 0 image lists"),
        ([{"prompt": "a"}], [[]], "row 0 (0-based) has no images"),
        ([{"question": "a"}], [[Image.new("RGB", (4, 4))]], "row 0 (0-based) has no prompt"),
        (
            [{"prompt": "a", "metadata": {"prompt_index": 3}}, {"prompt": "b", "metadata": {"prompt_index": 3}}],
            [[Image.new("RGB", (4, 4))]] * 2,
            "rows 0 and 1 (0-based) both have index 3",
        ),
    ],
)
def test_layout_writer_errors(tmp_path: Path, rows: list, images: list, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        write_geneval_layout(tmp_path, rows, images)


def test_layout_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        read_geneval_layout(tmp_path / "none")
    (tmp_path / "00000").mkdir()
    with pytest.raises(DataError, match="00000: a GenEval prompt folder needs metadata.jsonl and samples/"):
        read_geneval_layout(tmp_path)
    (tmp_path / "00000" / "samples").mkdir()
    (tmp_path / "00000" / "metadata.jsonl").write_text("[1]\n")
    with pytest.raises(DataError, match="metadata.jsonl: expected a JSON object, got list"):
        read_geneval_layout(tmp_path)
