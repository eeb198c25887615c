"""Source ``llava_json``: a LLaVA-style conversation JSON file (one sample per human/gpt turn pair),
with its test file or a hold-out. ``load_llava_json`` also reads each file of ``client_files``."""

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
    collect_rows,
    optional_fields,
    read_images,
    read_json_list,
    subsample_indices,
)
from fedumm.data.sources.base import (
    ALLOW_OUTSIDE_ROOT_DESCRIPTION,
    MAX_SAMPLES_DESCRIPTION,
    ON_ERROR_DESCRIPTION,
    LoadedSamples,
    SourceSpec,
)


class LlavaJsonSourceConfig(Section):
    """A LLaVA-style conversation JSON file (FedVLMBench / FedMLLM client-file format)."""

    path: str | None = Field(None, description="Training JSON file (a list of conversation records).")
    test_path: str | None = Field(
        None, description="Global test JSON file; null = hold out data.global_test_fraction of the training rows."
    )
    image_root: str | None = Field(
        None, description="Folder the records' image paths are relative to; null = the JSON file's folder."
    )
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)


IMAGE_PLACEHOLDER = "<image>"
# LLaVA-style speaker names; some exports use chat roles instead.
_HUMAN = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant"})


def _turn_text(content: object) -> str | None:
    """A turn's text: a string, or chat-style parts [{"type": "text", "text": ...}, {"type": "image"}]."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, Mapping) for part in content):
        texts = [part.get("text") for part in content if part.get("type") == "text"]
        if all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    return None


def _turn(turns: list, k: int, speakers: frozenset[str]) -> str:
    """The text of turn k, which must come from one of ``speakers``. Turns are LLaVA's
    ``{"from", "value"}`` or chat-style ``{"role", "content"}`` (FedMLLM's client files)."""
    turn = turns[k]
    if isinstance(turn, Mapping) and "role" in turn and "from" not in turn:
        speaker, text, form = turn.get("role"), _turn_text(turn.get("content")), "{'role': ..., 'content': str}"
    elif isinstance(turn, Mapping):
        speaker, text, form = turn.get("from"), turn.get("value"), "{'from': ..., 'value': str}"
    else:
        speaker, text, form = None, None, "{'from': ..., 'value': str} or {'role': ..., 'content': str}"
    if not isinstance(text, str):
        raise RowProblem(f"conversations[{k}]: expected {form}, got {turn!r}")
    if speaker not in speakers:
        key = "role" if "role" in turn and "from" not in turn else "from"
        raise RowProblem(f"conversations[{k}]: {key!r} is {speaker!r}, expected one of {sorted(speakers)}")
    return text


def _llava_samples(record: object, reader: ImageReader, source: str, number: int) -> list[dict]:
    """One sample per human/gpt pair; every pair keeps the record's image(s)."""
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected a conversation object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise RowProblem(
            f"field 'conversations': expected a non-empty list of alternating human/gpt turns, got {turns!r}"
        )
    # "image": a path, a list of paths, or null/absent (a text-only record, as FedMLLM writes them).
    shared = {**read_images(record, reader), **optional_fields(record)}
    samples = []
    for k in range(0, len(turns), 2):
        question = _turn(turns, k, _HUMAN).replace(IMAGE_PLACEHOLDER, "").strip()
        answer = _turn(turns, k + 1, _ASSISTANT).strip()
        if not answer:
            # An empty target trains the model to answer nothing; the table loader refuses it too.
            raise RowProblem(f"conversations[{k + 1}]: empty answer, expected a non-empty string")
        metadata = {"source": source, "row": number, "id": record.get("id"), "turn": k // 2 + 1}
        samples.append(
            {
                **shared,
                "question": question,
                "answers": [answer],
                "multiple_choice_answer": answer,
                "metadata": metadata,
            }
        )
    return samples


def load_llava_json(
    json_path: str | Path,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    max_samples: int | None = None,
    seed: int = 0,
    *,
    allow_outside_root: bool = False,
    section: str = "data.llava_json",
) -> LoadResult:
    """Load a LLaVA-style conversation file (the client-file format of FedVLMBench and FedMLLM).

    Liu et al. (2023), "Visual Instruction Tuning" (LLaVA): a list of
    ``{"id", "image", "conversations": [{"from": "human", "value": "<image>\\nQ"},
    {"from": "gpt", "value": "A"}, ...]}``. Each human/gpt pair becomes one sample with the
    record's image (``<image>`` removed from the question); a record without "image" (or
    with ``"image": null``) gives text-only samples (image None); a list of images (in
    "image" or "images") gives ``images`` (and ``image`` = the first). Turns may also be
    chat-style ``{"role": "user"|"assistant", "content": ...}`` (FedMLLM's files). An empty
    answer is a broken record. Image paths are relative to ``image_root`` (default: the JSON
    file's folder) and must resolve inside it unless ``allow_outside_root`` (``section``: the
    config section named in the message). ``max_samples`` caps records, drawn with ``seed``;
    a broken record is skipped whole.

    Raises:
        DataError: if the file is missing, not UTF-8, not JSON, or not a list; or (on_error="raise")
            naming "record N (1-based)" and what is wrong with it.
    """
    path = Path(json_path)
    records = read_json_list(path, "conversation records")
    root = Path(image_root) if image_root is not None else path.parent
    reader = ImageReader(root, allow_outside_root, f"{section}.allow_outside_root")
    indices = subsample_indices(len(records), max_samples, seed)
    return collect_rows(
        str(path),
        "record",
        ((i + 1, records[i]) for i in indices),
        lambda record, number: _llava_samples(record, reader, str(path), number),
        on_error,
    )


def load(config: LlavaJsonSourceConfig, seed: int) -> LoadedSamples:
    """The training file (capped by ``max_samples``) and the test file, if any (never capped)."""
    outside = {"allow_outside_root": config.allow_outside_root}
    train = load_llava_json(str(config.path), config.image_root, config.on_error, config.max_samples, seed, **outside)
    test = (
        load_llava_json(config.test_path, config.image_root, config.on_error, **outside) if config.test_path else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("llava_json", LlavaJsonSourceConfig, load, required="path")
