"""Source ``slake``: SLAKE (bilingual medical visual question answering) from its released JSON files,
with its open/closed answer types.

Liu et al. (2021), "SLAKE: A Semantically-Labeled Knowledge-Enhanced Dataset for Medical Visual
Question Answering", ISBI; FedMLLM (Xu et al. 2024, arXiv:2411.14717) evaluates on its test.json,
scoring exact answers per answer type.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

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

SlakeSplit = Literal["train", "validate", "test"]
# Further fields kept in metadata when present.
_METADATA = ("img_id", "q_lang", "location", "modality", "content_type", "base_type")


class SlakeSourceConfig(Section):
    """SLAKE 1.0: <root>/{train,validate,test}.json and the images under <root>/imgs."""

    root: str | None = Field(
        None, description="The extracted Slake1.0 folder (train.json, validate.json, test.json, imgs/)."
    )
    split: SlakeSplit = Field("train", description="Split file the clients train on.")
    test_split: SlakeSplit | None = Field(
        "test", description="Split file of the global test set; null = hold out data.global_test_fraction."
    )
    language: Literal["en", "zh", "all"] = Field(
        "en",
        description="Questions of this q_lang (SLAKE is English and Chinese); all = both (FedMLLM's evaluation "
        "reads all of test.json).",
    )
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)


def _in_language(record: object, language: str) -> bool:
    # A record whose q_lang cannot be read is kept, so that its conversion reports it.
    if language == "all" or not isinstance(record, Mapping) or not isinstance(record.get("q_lang"), str):
        return True
    return record["q_lang"] == language


def _sample(record: object, reader: ImageReader, source: str, number: int) -> dict:
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected an object, got {type(record).__name__}")
    text_field(record, "q_lang")
    answer = answer_text(record, "answer")
    qid = record.get("qid")
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise RowProblem(f"field 'qid': expected an integer, got {qid!r}")
    return {
        "image": reader.read(record.get("img_name")),
        "question": text_field(record, "question").strip(),
        "answers": [answer],
        "multiple_choice_answer": answer,
        "answer_type": open_closed_type(record),
        "question_id": qid,
        "task": "vqa",
        "metadata": {"source": source, "row": number, **{k: record[k] for k in _METADATA if k in record}},
    }


def load_slake(
    root: str | Path,
    split: str = "train",
    language: str = "en",
    max_samples: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    *,
    allow_outside_root: bool = False,
) -> LoadResult:
    """One SLAKE split file, ``<root>/<split>.json``: one row per question of ``language`` (en, zh, all).

    Release fields: qid (question_id), img_name (under ``<root>/imgs``), question, answer,
    answer_type (OPEN/CLOSED -> "open"/"closed", the VQA summary's by_answer_type), q_lang, and
    img_id, location, modality, content_type, base_type (metadata). One answer per row, task "vqa".
    ``max_samples`` questions are drawn after the language filter. Records are numbered as in the
    file's list.

    Raises:
        DataError: if the file is missing, not JSON (line and column named) or not a list; or
            (on_error="raise") a record is broken: a missing field, an unknown answer_type, a
            missing image.
    """
    if language not in ("en", "zh", "all"):
        raise ValueError(f"language must be 'en', 'zh' or 'all', got {language!r}")
    base = Path(root)
    path = base / f"{split}.json"
    records = read_json_list(path, "SLAKE questions")
    kept = [i for i, r in enumerate(records) if _in_language(r, language)]
    kept = [kept[k] for k in subsample_indices(len(kept), max_samples, seed)]
    reader = ImageReader(base / "imgs", allow_outside_root, "data.slake.allow_outside_root")
    return collect_rows(
        str(path),
        "record",
        ((i + 1, records[i]) for i in kept),
        lambda record, number: [_sample(record, reader, str(path), number)],
        on_error,
    )


def load(config: SlakeSourceConfig, seed: int) -> LoadedSamples:
    """The training split file (capped by ``max_samples``) and the test split file, if any (never capped)."""
    root, language, on_error = str(config.root), config.language, config.on_error
    outside = {"allow_outside_root": config.allow_outside_root}
    train = load_slake(root, config.split, language, config.max_samples, seed, on_error, **outside)
    test = (
        load_slake(root, config.test_split, language, None, seed, on_error, **outside)
        if config.test_split is not None
        else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("slake", SlakeSourceConfig, load, required="root")
