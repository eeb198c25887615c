"""Source ``crisismmd``: CrisisMMD v2.0 (tweets with images from seven 2017 disasters), its
informative or humanitarian task as classification, from the released TSV split files and images.

Alam et al. (2018), "CrisisMMD: Multimodal Twitter Datasets from Natural Disasters", ICWSM; used by
FedMLLM (Xu et al. 2024, arXiv:2411.14717) with the humanitarian task and the image label.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from fedumm.config_base import Section
from fedumm.data.rows import (
    ImageReader,
    LoadResult,
    OnError,
    RowProblem,
    collect_rows,
    read_text,
    subsample_indices,
    text_field,
)
from fedumm.data.sources.base import (
    ALLOW_OUTSIDE_ROOT_DESCRIPTION,
    MAX_SAMPLES_DESCRIPTION,
    ON_ERROR_DESCRIPTION,
    LoadedSamples,
    SourceSpec,
)
from fedumm.errors import DataError

CrisisTask = Literal["informative", "humanitarian"]
CrisisSplit = Literal["train", "dev", "test"]

#: The classes of each task, as the split files spell them.
CLASSES: dict[str, tuple[str, ...]] = {
    "informative": ("informative", "not_informative"),
    "humanitarian": (
        "affected_individuals",
        "infrastructure_and_utility_damage",
        "injured_or_dead_people",
        "missing_or_found_people",
        "rescue_volunteering_or_donation_effort",
        "vehicle_damage",
        "other_relevant_information",
        "not_humanitarian",
    ),
}
# "based on the text and image": a modality scenario that drops the image narrows it to the text.
_ASK = {
    "informative": "Is the tweet informative for humanitarian aid, based on the text and image?",
    "humanitarian": "Which humanitarian category does the tweet belong to, based on the text and image?",
}
# The columns every split file has (event_name and the label columns besides the chosen one go to metadata).
_REQUIRED = ("tweet_id", "image_id", "tweet_text", "image")
_URL = re.compile(r"http\S+")


class CrisisMMDSourceConfig(Section):
    """CrisisMMD v2.0: crisismmd_datasplit_all/task_<task>_text_img_<split>.tsv under root, images under root."""

    root: str | None = Field(
        None,
        description="The extracted CrisisMMD_v2.0 folder: it holds crisismmd_datasplit_all/ and data_image/ "
        "(the TSV image paths are relative to it).",
    )
    task: CrisisTask = Field(
        "humanitarian",
        description="informative = informative / not_informative; humanitarian = 8 categories (FedMLLM's task).",
    )
    label_column: Literal["label_image", "label_text", "label"] = Field(
        "label_image",
        description="Label column of the split file: label_image (FedMLLM), label_text, or label (the tweet's).",
    )
    split: CrisisSplit = Field("train", description="Split file the clients train on.")
    test_split: CrisisSplit | None = Field(
        "test", description="Split file of the global test set; null = hold out data.global_test_fraction."
    )
    split_folder: str = Field(
        "crisismmd_datasplit_all", description="Folder of the split files under root (the release's name)."
    )
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)


def crisismmd_question(task: str, tweet: str) -> str:
    """The tweet (URLs removed, as FedMLLM does), the task's question and its options."""
    text = _URL.sub("", tweet).strip()
    return f"{text}\n{_ASK[task]} Answer with one of: {', '.join(CLASSES[task])}."


@dataclass(frozen=True)
class _TsvLine:
    """One TSV line's cells, checked against the header inside the row conversion (skippable)."""

    header: tuple[str, ...]
    cells: tuple[str, ...]

    def parse(self) -> dict:
        if len(self.cells) != len(self.header):
            raise RowProblem(f"has {len(self.cells)} tab-separated cells, the header has {len(self.header)}")
        return dict(zip(self.header, self.cells))


def _tsv_lines(path: Path, label_column: str) -> list[tuple[int, _TsvLine]]:
    """(file line number, line) of each non-blank data line; the header must have the needed columns."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    # Tweets contain quote characters: the files are plain tab-separated, without CSV quoting.
    lines = list(csv.reader(io.StringIO(read_text(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
    header = tuple(lines[0]) if lines else ()
    missing = [c for c in (*_REQUIRED, label_column) if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} in the header {list(header)}")
    return [(n, _TsvLine(header, tuple(cells))) for n, cells in enumerate(lines[1:], start=2) if any(cells)]


def _sample(record: Mapping, task: str, label_column: str, reader: ImageReader, source: str, number: int) -> dict:
    label = text_field(record, label_column).strip()
    if label not in CLASSES[task]:
        raise RowProblem(f"column {label_column!r} is {label!r}, expected one of {list(CLASSES[task])} (task {task})")
    tweet = text_field(record, "tweet_text")
    image = text_field(record, "image").strip()
    if not image:
        raise RowProblem("column 'image' is empty, expected the image path")
    extra = {k: v for k, v in record.items() if k not in ("tweet_text", "image")}
    return {
        "image": reader.read(image),
        "question": crisismmd_question(task, tweet),
        "answers": [label],
        "multiple_choice_answer": label,
        "label": label,
        "task": "classification",
        "metadata": {"source": source, "row": number, "crisismmd_task": task, **extra},
    }


def load_crisismmd(
    root: str | Path,
    task: str = "humanitarian",
    split: str = "train",
    label_column: str = "label_image",
    max_samples: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    *,
    split_folder: str = "crisismmd_datasplit_all",
    allow_outside_root: bool = False,
) -> LoadResult:
    """One split of a CrisisMMD task: ``<root>/<split_folder>/task_<task>_text_img_<split>.tsv``.

    The release's TSV columns: event_name, tweet_id, image_id, tweet_text, image (a path under
    ``root``), label, label_text, label_image, label_text_image. Each line is one sample: the
    image, the tweet text (URLs removed) followed by the task's question and its classes, the
    answer = ``label_column``'s class (one of ``CLASSES[task]``), task "classification"; the other
    columns go into metadata. Lines are numbered as in the file (the header is line 1).

    Raises:
        DataError: if the file is missing, not UTF-8 or lacks a column; or (on_error="raise") a
            line is broken: another number of cells than the header, an unknown class, an empty
            or missing image.
    """
    if task not in CLASSES:
        raise ValueError(f"task must be one of {sorted(CLASSES)}, got {task!r}")
    base = Path(root)
    path = base / split_folder / f"task_{task}_text_img_{split}.tsv"
    lines = _tsv_lines(path, label_column)
    chosen = [lines[i] for i in subsample_indices(len(lines), max_samples, seed)]
    reader = ImageReader(base, allow_outside_root, "data.crisismmd.allow_outside_root")
    return collect_rows(
        str(path),
        "line",
        chosen,
        lambda line, number: [_sample(line.parse(), task, label_column, reader, str(path), number)],
        on_error,
    )


def load(config: CrisisMMDSourceConfig, seed: int) -> LoadedSamples:
    """The training split file (capped by ``max_samples``) and the test split file, if any (never capped)."""
    common = {
        "split_folder": config.split_folder,
        "allow_outside_root": config.allow_outside_root,
    }
    root, task, column = str(config.root), config.task, config.label_column
    train = load_crisismmd(root, task, config.split, column, config.max_samples, seed, config.on_error, **common)
    test = (
        load_crisismmd(root, task, config.test_split, column, None, seed, config.on_error, **common)
        if config.test_split is not None
        else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("crisismmd", CrisisMMDSourceConfig, load, required="root")
