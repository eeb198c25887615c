"""Source ``vqa_rad``: VQA-RAD (radiology visual question answering) from its released JSON, with its
own train/test split (the ``phrase_type`` of each question).

Lau et al. (2018), "A dataset of clinically generated visual questions and answers about radiology
images", Scientific Data 5:180251; FedMLLM (Xu et al. 2024, arXiv:2411.14717) trains on the
freeform and para questions and tests on test_freeform and test_para, scoring exact answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from fedumm.config_base import Section
from fedumm.data.rows import (
    ImageReader,
    LoadResult,
    OnError,
    RowProblem,
    answer_text,
    collect_rows,
    open_closed_type,
    read_json_list,
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

#: phrase_type -> split: the release marks its test questions with a "test_" prefix.
PHRASE_SPLITS = {"freeform": "train", "para": "train", "test_freeform": "test", "test_para": "test"}
#: The release's image folder, next to the JSON file.
IMAGE_FOLDER = "VQA_RAD Image Folder"
# Further fields kept in metadata when present.
_METADATA = ("phrase_type", "question_type", "image_organ", "qid_linked_id", "evaluation")


class VqaRadSourceConfig(Section):
    """VQA-RAD's ``VQA_RAD Dataset Public.json`` and its image folder."""

    path: str | None = Field(None, description="The release's JSON file, 'VQA_RAD Dataset Public.json'.")
    image_root: str | None = Field(
        None, description=f"Folder of the images (image_name); null = '{IMAGE_FOLDER}' next to the JSON file."
    )
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION + " Train questions only.")
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)


def _split_of(record: object) -> str | None:
    phrase = record.get("phrase_type") if isinstance(record, Mapping) else None
    return PHRASE_SPLITS.get(phrase) if isinstance(phrase, str) else None


def _sample(record: object, reader: ImageReader, source: str, number: int) -> dict:
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected an object, got {type(record).__name__}")
    if _split_of(record) is None:
        raise RowProblem(f"field 'phrase_type' is {record.get('phrase_type')!r}, expected one of {list(PHRASE_SPLITS)}")
    answer = answer_text(record, "answer")
    qid = record.get("qid")
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise RowProblem(f"field 'qid': expected an integer, got {qid!r}")
    return {
        "image": reader.read(record.get("image_name")),
        "question": text_field(record, "question").strip(),
        "answers": [answer],
        "multiple_choice_answer": answer,
        "answer_type": open_closed_type(record),
        "question_id": qid,
        "task": "vqa",
        "metadata": {"source": source, "row": number, **{k: record[k] for k in _METADATA if k in record}},
    }


def load_vqa_rad(
    path: str | Path,
    image_root: str | Path | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    *,
    allow_outside_root: bool = False,
) -> tuple[LoadResult, LoadResult]:
    """(train, test) of VQA-RAD: one row per question, split by ``phrase_type`` (freeform/para: train,
    test_freeform/test_para: test).

    Release fields: qid (question_id), image_name (under ``image_root``, default the
    ``VQA_RAD Image Folder`` next to the file), question, answer (text, or a number written as
    text), answer_type (OPEN/CLOSED -> "open"/"closed", the VQA summary's by_answer_type),
    phrase_type, question_type and image_organ (metadata). Each row has one answer, task "vqa".
    ``max_samples`` caps the train questions. Records are numbered as in the file's list.

    Raises:
        DataError: if the file is missing, not JSON (line and column named) or not a list; or
            (on_error="raise") a record is broken: a missing field, an unknown phrase_type or
            answer_type, a missing image.
    """
    path = Path(path)
    records = read_json_list(path, "VQA-RAD questions")
    root = Path(image_root) if image_root is not None else path.parent / IMAGE_FOLDER
    reader = ImageReader(root, allow_outside_root, "data.vqa_rad.allow_outside_root")
    # A record without a known phrase_type is reported with the train rows.
    test = [i for i, r in enumerate(records) if _split_of(r) == "test"]
    train = [i for i, r in enumerate(records) if _split_of(r) != "test"]
    train = [train[k] for k in subsample_indices(len(train), max_samples, seed)]

    def rows(indices: list[int]) -> LoadResult:
        numbered = ((i + 1, records[i]) for i in indices)
        return collect_rows(str(path), "record", numbered, lambda r, n: [_sample(r, reader, str(path), n)], on_error)

    return rows(train), rows(test)


def load(config: VqaRadSourceConfig, seed: int) -> LoadedSamples:
    """The train questions (capped by ``max_samples``) and the test questions."""
    train, test = load_vqa_rad(
        str(config.path),
        config.image_root,
        config.max_samples,
        seed,
        config.on_error,
        allow_outside_root=config.allow_outside_root,
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("vqa_rad", VqaRadSourceConfig, load, required="path")
