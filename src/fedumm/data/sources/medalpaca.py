"""Source ``medalpaca``: MedAlpaca's Medical Meadow instruction data (text only: rows without image).

Han et al. (2023), "MedAlpaca: An Open-Source Collection of Medical Conversational AI Models and
Training Data", arXiv:2304.08247; FedMLLM (Xu et al. 2024, arXiv:2411.14717) gives its text-only
clients the medical flashcards (medical_meadow_wikidoc_medical_flashcards.json), question = input,
answer = output.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from fedumm.config_base import Section
from fedumm.data.rows import (
    LoadResult,
    OnError,
    RowProblem,
    answer_text,
    collect_rows,
    read_json_list,
    subsample_indices,
    text_field,
)
from fedumm.data.sources.base import MAX_SAMPLES_DESCRIPTION, ON_ERROR_DESCRIPTION, LoadedSamples, SourceSpec


class MedAlpacaSourceConfig(Section):
    """A Medical Meadow JSON file: a list of {"instruction", "input", "output"}."""

    path: str | None = Field(
        None, description="Training file, e.g. medical_meadow_wikidoc_medical_flashcards.json (a JSON list)."
    )
    test_path: str | None = Field(
        None, description="Global test file (same format); null = hold out data.global_test_fraction."
    )
    with_instruction: bool = Field(
        False,
        description="Question = instruction + newline + input; false = the input alone (FedMLLM's choice: the "
        "flashcards' instruction is the same line everywhere).",
    )
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)


def _sample(record: object, with_instruction: bool, source: str, number: int) -> dict:
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected an object with instruction, input and output, got {type(record).__name__}")
    question = text_field(record, "input").strip()
    if not question:
        raise RowProblem("field 'input': empty, expected the question")
    if with_instruction:
        question = f"{text_field(record, 'instruction').strip()}\n{question}"
    answer = answer_text(record, "output")
    return {
        "image": None,
        "question": question,
        "answers": [answer],
        "multiple_choice_answer": answer,
        "task": "caption",
        "metadata": {"source": source, "row": number},
    }


def load_medalpaca(
    path: str | Path,
    max_samples: int | None = None,
    seed: int = 0,
    on_error: OnError = "raise",
    *,
    with_instruction: bool = False,
) -> LoadResult:
    """Text-only rows (image None) from a Medical Meadow file: question = ``input`` (after
    ``instruction`` when ``with_instruction``), answer = ``output``, task "caption" (free text,
    scored by the caption metrics: BLEU-4, ROUGE-L, CIDEr-D). Records are numbered as in the list.

    Raises:
        DataError: if the file is missing, not JSON (line and column named) or not a list; or
            (on_error="raise") a record lacks input or output or has an empty one.
    """
    path = Path(path)
    records = read_json_list(path, "{'instruction', 'input', 'output'} records")
    chosen = subsample_indices(len(records), max_samples, seed)
    return collect_rows(
        str(path),
        "record",
        ((i + 1, records[i]) for i in chosen),
        lambda record, number: [_sample(record, with_instruction, str(path), number)],
        on_error,
    )


def load(config: MedAlpacaSourceConfig, seed: int) -> LoadedSamples:
    """The training file (capped by ``max_samples``) and the test file, if any (never capped)."""
    train = load_medalpaca(
        str(config.path), config.max_samples, seed, config.on_error, with_instruction=config.with_instruction
    )
    test = (
        load_medalpaca(config.test_path, None, seed, config.on_error, with_instruction=config.with_instruction)
        if config.test_path
        else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("medalpaca", MedAlpacaSourceConfig, load, required="path")
