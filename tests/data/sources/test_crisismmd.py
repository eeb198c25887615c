"""Source ``crisismmd``: stand-ins of the CrisisMMD v2.0 release (split TSVs + data_image/), its two tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data, load_samples
from fedumm.data.modality import text_only_question
from fedumm.data.sources.crisismmd import CLASSES, crisismmd_question, load_crisismmd
from fedumm.errors import DataError

HEADER = ["event_name", "tweet_id", "image_id", "tweet_text", "image", "label", "label_text", "label_image"]
HEADER += ["label_text_image"]


def _line(k: int, label: str, text_label: str | None = None) -> list[str]:
    """Tweet k of hurricane_irma, its image data_image/hurricane_irma/10_9_2017/<k>_0.jpg."""
    tweet = f'Tweet {k} "quoted" https://t.co/x{k} #irma'
    image = f"data_image/hurricane_irma/10_9_2017/{k}_0.jpg"
    return ["hurricane_irma", str(k), f"{k}_0", tweet, image, label, text_label or label, label, "Positive"]


def write_crisismmd(root: Path, task: str, splits: dict[str, list[list[str]]]) -> Path:
    """The release layout under ``root``: crisismmd_datasplit_all/task_<task>_text_img_<split>.tsv and
    each line's image (pixel (k % 256, 0, 0) for tweet k)."""
    (root / "crisismmd_datasplit_all").mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        text = "\n".join("\t".join(cells) for cells in [HEADER, *lines]) + "\n"
        (root / "crisismmd_datasplit_all" / f"task_{task}_text_img_{split}.tsv").write_text(text)
        for cells in lines:
            if len(cells) == len(HEADER):
                (root / cells[4]).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (int(cells[1]) % 256, 0, 0)).save(root / cells[4])
    return root


def test_crisismmd_humanitarian_rows(tmp_path: Path) -> None:
    # Prepare
    labels = ["vehicle_damage", "not_humanitarian", "affected_individuals"]
    root = write_crisismmd(
        tmp_path / "CrisisMMD_v2.0", "humanitarian", {"train": [_line(k, labels[k]) for k in range(3)]}
    )
    # Execute
    result = load_crisismmd(root, "humanitarian", "train")
    # Assert: the image label is the answer; the URL is gone, the quote kept; the classes are offered.
    assert [r["multiple_choice_answer"] for r in result.rows] == labels
    row = result.rows[0]
    assert row["question"].startswith('Tweet 0 "quoted"  #irma\nWhich humanitarian category')
    assert "https" not in row["question"] and ", ".join(CLASSES["humanitarian"]) in row["question"]
    assert (row["answers"], row["label"], row["task"]) == (["vehicle_damage"], "vehicle_damage", "classification")
    # JPEG: the red level of tweet k's image is k, give or take the compression.
    assert [abs(r["image"].load().getpixel((0, 0))[0] - k) <= 2 for k, r in enumerate(result.rows)] == [True] * 3
    assert row["metadata"]["event_name"] == "hurricane_irma" and row["metadata"]["row"] == 2
    assert row["metadata"]["label_text_image"] == "Positive"


def test_crisismmd_informative_task_and_label_column(tmp_path: Path) -> None:
    # Prepare: the text label differs from the image label on line 2.
    lines = [_line(0, "informative"), _line(1, "not_informative", text_label="informative")]
    root = write_crisismmd(tmp_path, "informative", {"train": lines})
    # Execute
    by_image = load_crisismmd(root, "informative", "train").rows
    by_text = load_crisismmd(root, "informative", "train", label_column="label_text").rows
    # Assert
    assert [r["multiple_choice_answer"] for r in by_image] == ["informative", "not_informative"]
    assert [r["multiple_choice_answer"] for r in by_text] == ["informative", "informative"]
    assert by_image[0]["question"].endswith("Answer with one of: informative, not_informative.")
    question = crisismmd_question("informative", "a http://x b")
    assert question == (
        "a  b\nIs the tweet informative for humanitarian aid, based on the text and image? "
        "Answer with one of: informative, not_informative."
    )
    # Without its image (a modality scenario), the question narrows to the text.
    assert "aid, based on the text? Answer" in text_only_question(question)


def test_crisismmd_source_train_and_test_files(tmp_path: Path) -> None:
    # Prepare: 12 train lines over 2 classes, 4 test lines.
    train = [_line(k, ("vehicle_damage", "not_humanitarian")[k % 2]) for k in range(12)]
    test = [_line(100 + k, "affected_individuals") for k in range(4)]
    root = write_crisismmd(tmp_path, "humanitarian", {"train": train, "test": test})
    config = DataConfig.model_validate(
        {"source": "crisismmd", "crisismmd": {"root": str(root), "max_samples": 10}, "partition": {"min_samples": 2}}
    )
    # Execute
    rows, test_rows = load_samples(config, seed=0)
    data = build_federated_data(config, num_clients=2, seed=0)
    # Assert: max_samples caps the train file only.
    assert len(rows) == 10 and [r["metadata"]["tweet_id"] for r in test_rows] == ["100", "101", "102", "103"]
    assert sum(data.partition.sizes) == 10 and len(data.global_test) == 4


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ("missing image", ["task_humanitarian_text_img_train.tsv, line 3 (1-based): image file", "1_0.jpg not found"]),
        ("short line", ["line 3 (1-based): has 4 tab-separated cells, the header has 9"]),
        ("unknown label", ["line 3 (1-based): column 'label_image' is 'flood'", "'vehicle_damage'"]),
    ],
)
def test_crisismmd_broken_line_raises_or_is_skipped(tmp_path: Path, change: str, fragments: list[str]) -> None:
    # Prepare: line 3 of the file (tweet 1) is broken.
    lines = [_line(k, "vehicle_damage") for k in range(3)]  # lines 2, 3, 4 of the file
    if change == "short line":
        lines[1] = lines[1][:4]
    if change == "unknown label":
        lines[1] = _line(1, "flood")
    root = write_crisismmd(tmp_path, "humanitarian", {"train": lines})
    if change == "missing image":
        (root / lines[1][4]).unlink()
    # Execute
    with pytest.raises(DataError) as info:
        load_crisismmd(root, "humanitarian", "train")
    skipped = load_crisismmd(root, "humanitarian", "train", on_error="skip")
    # Assert: one line naming the file and the line.
    assert "\n" not in str(info.value)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert skipped.skipped == 1 and [r["metadata"]["row"] for r in skipped.rows] == [2, 4]


def test_crisismmd_file_errors(tmp_path: Path) -> None:
    root = write_crisismmd(tmp_path, "humanitarian", {"train": [_line(0, "vehicle_damage")]})
    with pytest.raises(DataError, match=r"task_humanitarian_text_img_test.tsv: file not found"):
        load_crisismmd(root, "humanitarian", "test")
    path = root / "crisismmd_datasplit_all" / "task_humanitarian_text_img_train.tsv"
    path.write_text(path.read_text().replace("label_image", "label_img"))
    with pytest.raises(DataError, match=r"train.tsv: missing column\(s\) \['label_image'\] in the header"):
        load_crisismmd(root, "humanitarian", "train")


def test_fedmllm_crisismmd_config_partitions_a_standin(tmp_path: Path, partition_seed_config) -> None:
    # Prepare: 40 train lines over 4 classes, 8 test lines; the config's root redirected.
    classes = CLASSES["humanitarian"][:4]
    train = [_line(k, classes[k % 4]) for k in range(40)]
    root = write_crisismmd(
        tmp_path / "crisis", "humanitarian", {"train": train, "test": [_line(200 + k, classes[0]) for k in range(8)]}
    )
    # Execute
    sizes, out = partition_seed_config("fedmllm_crisismmd.yaml", tmp_path, f"data.crisismmd.root={root}")
    # Assert: FedMLLM's 10 clients over the 40 rows; the test file is the global test set.
    assert len(sizes) == 10 and sum(sizes) == 40
    assert "8 global test rows" in out


@pytest.mark.slow
def test_fedmllm_crisismmd_config_runs_on_a_standin(tmp_path: Path, run_seed_config) -> None:
    # Prepare: 24 train lines over 3 classes, 6 test lines (2 of each).
    classes = ("not_humanitarian", "vehicle_damage", "affected_individuals")
    train = [_line(k, classes[k % 3]) for k in range(24)]
    test = [_line(100 + k, classes[k % 3]) for k in range(6)]
    root = write_crisismmd(tmp_path / "crisis", "humanitarian", {"train": train, "test": test})
    # Execute
    config, result = run_seed_config(
        "fedmllm_crisismmd.yaml",
        tmp_path,
        "tiny-llava",
        f"data.crisismmd.root={root}",
        "federation.num_clients=2",
        "data.partition.min_samples=2",
        "model.max_new_tokens=4",
    )
    # Assert: classification metrics on the 6 test lines; the majority baseline of a balanced set is 1/3.
    final = result.federated.records[-1]["global"]
    assert final["task"] == "classification" and final["n"] == 6
    assert 0.0 <= final["macro_f1"] <= 1.0 and 0.0 <= final["accuracy"] <= 1.0
    assert result.summary["majority_baseline_accuracy"] == pytest.approx(1 / 3)
