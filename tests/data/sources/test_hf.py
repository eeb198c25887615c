"""Tests for the hf source (fedumm.data.sources.hf): VQAv2-schema Hugging Face datasets in every local
layout, broken rows, hub arguments, and the source through DataConfig -> FederatedData."""

from __future__ import annotations

import io
import re
from pathlib import Path

import datasets
import pytest
from PIL import Image

from fedumm.config import load_config
from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.modality import BOTH, IMAGE_ONLY, NEITHER, TEXT_ONLY
from fedumm.data.rows import LoadResult, subsample_indices
from fedumm.data.sources.hf import load_hf_vqa
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


def _png(rgb: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _vqa_columns(n: int, offset: int = 0) -> dict[str, list]:
    """n VQAv2-schema rows; row i's image is grey level i, its answers three votes for str(i)."""
    ids = range(offset, offset + n)
    return {
        "image": [{"bytes": _png((i, i, i)), "path": None} for i in ids],
        "question": [f"question {i}?" for i in ids],
        "answers": [[{"answer": str(i), "answer_id": k} for k in range(3)] for i in ids],
        "multiple_choice_answer": [str(i) for i in ids],
        "answer_type": ["number" if i % 2 else "other" for i in ids],
        "question_id": [1000 + i for i in ids],
        "image_id": [500 + i for i in ids],
    }


def _vqa_dataset(n: int, offset: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict(_vqa_columns(n, offset), features=VQA_FEATURES)


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
        assert row["image"].load().mode == "RGB" and row["image"].load().getpixel((0, 0)) == (i, i, i)
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
    data = {"image": [{"bytes": _png((1, 2, 3)), "path": None}], "question": ["q?"], "answers": answers}
    datasets.Dataset.from_dict(data).cast_column("image", datasets.Image()).save_to_disk(tmp_path / "d")
    # Execute
    row = load_hf_vqa(str(tmp_path / "d"), "train", None, 0).rows[0]
    # Assert
    assert row["answers"] == expected_answers
    assert row["multiple_choice_answer"] == expected_target


def test_hf_vqa_sequence_of_dicts_answers(tmp_path: Path) -> None:
    # Prepare: a Sequence({...}) feature, which datasets returns as a dict of lists.
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence({"answer": datasets.Value("string")}),
        }
    )
    data = {
        "image": [{"bytes": _png((1, 2, 3)), "path": None}],
        "question": ["q?"],
        "answers": [{"answer": ["red", "red", "blue"]}],
    }
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
# Loading scripts, hub arguments, data_files image base, null and multiple images


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
    assert row["image"].load().getpixel((0, 0)) == (7, 8, 9)


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
    features = datasets.Features(
        {
            "images": datasets.Sequence(datasets.Image()),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
        }
    )
    data = {
        "images": [
            [{"bytes": _png((1, 1, 1)), "path": None}, {"bytes": _png((2, 2, 2)), "path": None}],
            [{"bytes": _png((3, 3, 3)), "path": None}],
        ],
        "question": ["same?", "one?"],
        "answers": [["yes"], ["no"]],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(tmp_path / "multi")
    # Execute
    rows = load_hf_vqa(str(tmp_path / "multi"), "train").rows
    # Assert: images = all, image = the first.
    assert [[im.load().getpixel((0, 0)) for im in r["images"]] for r in rows] == [[(1, 1, 1), (2, 2, 2)], [(3, 3, 3)]]
    assert [r["image"] is r["images"][0] for r in rows] == [True, True]


def test_hf_needs_an_image_or_images_column(tmp_path: Path) -> None:
    _vqa_dataset(2).remove_columns("image").save_to_disk(tmp_path / "d")
    with pytest.raises(DataError, match=re.escape("missing column(s) ['image (or images)']")):
        load_hf_vqa(str(tmp_path / "d"), "train")


# ---------------------------------------------------------------------------------------------
# The source through the config: FedUMM on VQAv2 stand-ins


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
        "answers": [
            [{"answer": ("yes", "2", "red")[i % 3], "answer_confidence": "yes", "answer_id": k} for k in range(1, 11)]
            for i in ids
        ],
        "image_id": [10 * i for i in ids],
        "answer_type": [types[i % 3] for i in ids],
        "question_id": [10 * i + 1 for i in ids],
        "question": [f"question {i}?" for i in ids],
        "image": images,
    }
    return datasets.Dataset.from_dict(data).cast_column("image", datasets.Image())


def test_fedumm_vqav2_standin_hf_source(tmp_path: Path) -> None:
    # Prepare: a save_to_disk'd VQAv2-schema DatasetDict, 41 train rows (one broken) and 10 validation rows.
    datasets.DatasetDict({"train": _vqav2_split(41, 0, broken=7), "validation": _vqav2_split(10, 1000)}).save_to_disk(
        tmp_path / "vqav2"
    )
    config = DataConfig.model_validate(
        {
            "source": "hf",
            "hf": {"path": str(tmp_path / "vqav2"), "on_error": "skip"},
            "partition": {"method": "iid", "min_samples": 5},
        }
    )
    # Execute
    data = build_federated_data(config, num_clients=4, seed=0)
    # Assert: 40 usable rows -> 4 IID clients of 10 -> 8 train + 2 local test each.
    assert data.skipped_rows == 1 and "row 8 (1-based)" in data.load_problems[0]
    assert data.partition.sizes == [10, 10, 10, 10]
    assert [(len(c.train), len(c.test)) for c in data.clients] == [(8, 2)] * 4
    assert [r["question_id"] for r in data.global_test] == [10 * i + 1 for i in range(1000, 1010)]
    row = data.clients[0].train[0]
    assert row["image"].load().mode == "RGB" and len(row["answers"]) == 10
    assert row["answer_type"] in ("yes/no", "number", "other")
    assert data.modality_counts() == [{BOTH: 10, IMAGE_ONLY: 0, TEXT_ONLY: 0, NEITHER: 0}] * 4


def test_fedumm_vqav2_standin_max_samples_and_raise(tmp_path: Path) -> None:
    # Prepare
    datasets.DatasetDict({"train": _vqav2_split(41, 0, broken=7), "validation": _vqav2_split(10, 1000)}).save_to_disk(
        tmp_path / "vqav2"
    )
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


@pytest.mark.slow
def test_fedumm_vqav2_config_runs_on_a_standin(tmp_path: Path, run_seed_config) -> None:
    # Prepare: the layout `fedumm data vqav2` writes (data/train-*.parquet, data/validation-*.parquet).
    (tmp_path / "vqav2" / "data").mkdir(parents=True)
    _vqav2_split(40, 0).to_parquet(tmp_path / "vqav2" / "data" / "train-00000-of-00001.parquet")
    _vqav2_split(16, 100).to_parquet(tmp_path / "vqav2" / "data" / "validation-00000-of-00001.parquet")
    # Execute: the shipped config as it is, only the path redirected.
    config, result = run_seed_config(
        "fedumm_vqav2.yaml",
        tmp_path,
        "tiny-blip-vqa",
        f"data.hf.path={tmp_path / 'vqav2'}",
        "federation.num_clients=2",
        "data.partition.min_samples=4",
    )
    # Assert: the global test set is validation[:50%] = 8 of the 16 rows.
    assert config.model.backend == "blip_vqa" and config.adapter.preset == "qv_self"
    assert result.summary["num_clients"] == 2 and result.federated.records[-1]["global"]["n"] == 8


def test_fedumm_vqav2_config_follows_fedumms_splits(configs_dir) -> None:
    # FedUMM: train on train, evaluate on the first half of validation; the data set is built by
    # `fedumm data vqav2` from the official files (no loading-script dataset, which datasets>=4 refuses).
    config = load_config(configs_dir / "fedumm_vqav2.yaml")
    hf = config.data.hf
    assert (hf.path, hf.split, hf.test_split) == ("data/vqav2", "train", "validation[:50%]")
    assert hf.max_samples is None and hf.max_test_samples is None and config.eval.max_samples is None
    assert "fedumm data vqav2" in (configs_dir / "fedumm_vqav2.yaml").read_text()


def test_hf_relative_image_path_outside_the_data_folder_is_a_row_error(tmp_path: Path) -> None:
    # Prepare: data/paths.parquet names "../x.png" (outside data/).
    (tmp_path / "data").mkdir()
    Image.new("RGB", (8, 8), (6, 6, 6)).save(tmp_path / "x.png")
    data = {"image": ["../x.png"], "question": ["q?"], "answers": [["a"]]}
    datasets.Dataset.from_dict(data).to_parquet(tmp_path / "data" / "paths.parquet")
    files = {"train": [str(tmp_path / "data" / "paths.parquet")]}
    # Execute
    skipped = load_hf_vqa("parquet", "train", data_files=files, on_error="skip")
    allowed = load_hf_vqa("parquet", "train", data_files=files, allow_outside_root=True)
    # Assert
    assert skipped.skipped == 1 and "row 1 (1-based): image path '../x.png' resolves to" in skipped.problems[0]
    assert "set data.hf.allow_outside_root: true" in skipped.problems[0]
    assert allowed.rows[0]["image"].load().getpixel((0, 0)) == (6, 6, 6)


# ---------------------------------------------------------------- text-to-image datasets


def _t2i_dataset(n: int, text_column: str = "caption") -> datasets.Dataset:
    data = {
        "picture": [{"bytes": _png((i, 0, 0)), "path": None} for i in range(n)],
        text_column: [f"a red square number {i}" for i in range(n)],
        "site": ["a", "b"] * (n // 2) + ["a"] * (n % 2),
    }
    return datasets.Dataset.from_dict(data).cast_column("picture", datasets.Image())


def test_hf_t2i_rows_from_configured_columns(tmp_path: Path) -> None:
    # Prepare
    datasets.DatasetDict({"train": _t2i_dataset(4), "validation": _t2i_dataset(2)}).save_to_disk(tmp_path / "d")
    config = DataConfig.model_validate(
        {
            "source": "hf",
            "hf": {"path": str(tmp_path / "d"), "task": "t2i", "image_column": "picture", "text_column": "caption"},
            "partition": {"min_samples": 1},
            "local_test_fraction": 0,
        }
    )
    # Execute
    result = load_hf_vqa(str(tmp_path / "d"), "train", task="t2i", image_column="picture", text_column="caption")
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert
    rows = result.rows
    assert [r["prompt"] for r in rows] == [f"a red square number {i}" for i in range(4)]
    assert all(r["task"] == "t2i" and r["answers"] == [] for r in rows)
    assert rows[3]["image"].load().getpixel((0, 0)) == (3, 0, 0)
    assert rows[1]["metadata"] == {"source": str(tmp_path / "d"), "split": "train", "row": 2, "site": "b"}
    assert len(data.global_test) == 2 and all(r["task"] == "t2i" for r in data.pooled_train)


def test_hf_t2i_missing_columns_name_the_keys(tmp_path: Path) -> None:
    _t2i_dataset(2, text_column="text").save_to_disk(tmp_path / "d")
    with pytest.raises(
        DataError, match=r"missing column\(s\) \['prompt'\].*data.hf.image_column and data.hf.text_column"
    ):
        load_hf_vqa(str(tmp_path / "d"), "train", task="t2i", image_column="picture")


def test_hf_t2i_empty_prompt_names_the_row(tmp_path: Path) -> None:
    data = _t2i_dataset(3, text_column="text").to_dict()
    data["text"][2] = " "
    datasets.Dataset.from_dict(data).cast_column("picture", datasets.Image()).save_to_disk(tmp_path / "d")
    with pytest.raises(DataError, match=r"row 3 \(1-based\): field 'text' \(the prompt\): expected a non-empty string"):
        load_hf_vqa(str(tmp_path / "d"), "train", task="t2i", image_column="picture", text_column="text")


# ---------------------------------------------------------------------------------------------
# Split slices and max_samples read only the rows they keep


def _row_group_parquet(path: Path, rows: int, group: int) -> Path:
    """A parquet file of ``rows`` VQAv2-schema rows (row i: grey level i) in row groups of ``group`` rows."""
    import pyarrow.parquet as pq

    pq.write_table(_vqa_dataset(rows).data.table, path, row_group_size=group)
    return path


def _corrupt_row_groups(path: Path, groups: set[int]) -> None:
    """Overwrite every column chunk of ``groups`` with 0xFF bytes: reading such a group fails."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    data = bytearray(path.read_bytes())
    for g in groups:
        for j in range(meta.num_columns):
            chunk = meta.row_group(g).column(j)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
            data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("split", "rows"), [("train[:10]", range(10)), ("train[:25%]", range(10))])
def test_hf_split_slice_reads_only_its_row_groups(tmp_path: Path, split: str, rows: range) -> None:
    # Prepare: 40 rows in 4 row groups of 10; groups 1-3 are corrupted, so a full read fails.
    path = _row_group_parquet(tmp_path / "train.parquet", 40, 10)
    _corrupt_row_groups(path, {1, 2, 3})
    with pytest.raises(DataError, match="row group 1 cannot be read"):
        load_hf_vqa(str(path), "train")
    # Execute
    result = load_hf_vqa(str(path), split)
    # Assert: the first 10 rows, read from group 0 alone.
    assert [r["question"] for r in result.rows] == [f"question {i}?" for i in rows]
    assert result.rows[9]["image"].load().getpixel((0, 0)) == (9, 9, 9)


def test_hf_max_samples_reads_only_the_drawn_rows_groups(tmp_path: Path) -> None:
    # Prepare: 100 rows in 10 groups of 10; every group holding no drawn row is corrupted.
    path = _row_group_parquet(tmp_path / "train.parquet", 100, 10)
    drawn = subsample_indices(100, 3, seed=4)
    unread = set(range(10)) - {i // 10 for i in drawn}
    assert len(unread) >= 7
    _corrupt_row_groups(path, unread)
    # Execute
    rows = load_hf_vqa(str(path), "train", max_samples=3, seed=4).rows
    # Assert
    assert [r["metadata"]["row"] for r in rows] == [i + 1 for i in drawn]
    assert [r["question"] for r in rows] == [f"question {i}?" for i in drawn]


def test_hf_slice_then_max_samples_on_a_save_to_disk_split(tmp_path: Path) -> None:
    # Prepare: 6 train rows; [2:] keeps rows 2..5 (0-based).
    path = str(_save_dataset_dict(tmp_path / "vqa"))
    # Execute
    sliced = load_hf_vqa(path, "train[2:]").rows
    drawn = load_hf_vqa(path, "train[2:]", max_samples=2, seed=3).rows
    tail = load_hf_vqa(path, "train[-50%:]").rows
    # Assert: row numbers count the whole split; the draw is from the slice's 4 rows.
    assert [r["metadata"]["row"] for r in sliced] == [3, 4, 5, 6]
    assert [r["metadata"]["row"] for r in drawn] == [3 + k for k in subsample_indices(4, 2, seed=3)]
    assert [r["metadata"]["row"] for r in tail] == [4, 5, 6]
    assert sliced[0]["metadata"]["split"] == "train[2:]"


def test_hf_sliced_test_split_in_a_folder_of_parquet_shards(tmp_path: Path) -> None:
    # Prepare: a hub-style folder, validation in two shards (3 + 3 rows).
    (tmp_path / "snap" / "data").mkdir(parents=True)
    _vqa_dataset(4).to_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet")
    for k in range(2):
        _vqa_dataset(3, offset=100 + 3 * k).to_parquet(
            tmp_path / "snap" / "data" / f"validation-0000{k}-of-00002.parquet"
        )
    config = DataConfig.model_validate(
        {"source": "hf", "hf": {"path": str(tmp_path / "snap"), "test_split": "validation[:50%]"}}
    )
    # Execute
    train, test = load_samples(config, seed=0)
    # Assert: the first half of the 6 validation rows, across the shard boundary order.
    assert [r["question_id"] for r in train] == [1000, 1001, 1002, 1003]
    assert [r["question_id"] for r in test] == [1100, 1101, 1102]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("split", "train[:x]", "expected a split name with an optional slice"),
        ("test_split", "train[:10]+validation[:10]", "several splits ['train', 'validation']"),
    ],
)
def test_hf_bad_split_spec_is_a_config_error(key: str, value: str, fragment: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        DataConfig.model_validate({"source": "hf", "hf": {"path": "x", key: value}})
    assert f"hf.{key}" in str(info.value) and fragment in str(info.value)


@pytest.mark.parametrize("spec", ["validation[:50%]", "validation[-3:]", "validation[20%:60%]", "validation[2:5]"])
def test_hf_slices_select_the_rows_datasets_selects(tmp_path: Path, spec: str) -> None:
    # Prepare: 7 validation rows (50% rounds: 3.5 -> 4), as shards in a hub-style folder.
    (tmp_path / "snap" / "data").mkdir(parents=True)
    _vqa_dataset(2).to_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet")
    _vqa_dataset(7, offset=100).to_parquet(tmp_path / "snap" / "data" / "validation-00000-of-00001.parquet")
    # Execute
    ours = [r["question_id"] for r in load_hf_vqa(str(tmp_path / "snap"), spec).rows]
    theirs = datasets.load_dataset(str(tmp_path / "snap"), split=spec, cache_dir=str(tmp_path / "cache"))["question_id"]
    # Assert
    assert ours == theirs and ours
