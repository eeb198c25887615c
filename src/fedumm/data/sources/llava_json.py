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
    t2i_row,
)
from fedumm.data.sources.base import (
    ALLOW_OUTSIDE_ROOT_DESCRIPTION,
    MAX_SAMPLES_DESCRIPTION,
    ON_ERROR_DESCRIPTION,
    TASK_DESCRIPTION,
    LoadedSamples,
    RowTask,
    SourceSpec,
)

IMAGE_PLACEHOLDER = "<image>"
T2I_CONVENTION = (
    "A t2i record is one prompt and its target image: {'id', 'image': path, 'conversations': "
    "[{'from': 'human', 'value': prompt}, {'from': 'gpt', 'value': '<image>'}], 'geneval'?: metadata}; the "
    "human turn is the prompt (an '<image>' in it is dropped), the gpt turn (optional) must be '<image>' or empty: "
    "the image is the answer."
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
    task: RowTask = Field("understanding", description=f"{TASK_DESCRIPTION} {T2I_CONVENTION}")


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


def _llava_t2i_samples(record: object, reader: ImageReader, source: str, number: int) -> list[dict]:
    """One text-to-image row per record (``T2I_CONVENTION``)."""
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected a conversation object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) not in (1, 2):
        raise RowProblem(
            f"field 'conversations': a t2i record has the human prompt and, optionally, a gpt turn "
            f"'{IMAGE_PLACEHOLDER}' (1 or 2 turns), got {turns!r}"
        )
    prompt = _turn(turns, 0, _HUMAN).replace(IMAGE_PLACEHOLDER, "").strip()
    if len(turns) == 2 and _turn(turns, 1, _ASSISTANT).strip() not in ("", IMAGE_PLACEHOLDER):
        raise RowProblem(
            f"conversations[1]: a t2i record's answer is the image: expected {IMAGE_PLACEHOLDER!r} or empty, "
            f"got {turns[1]!r}"
        )
    image = record.get("image")
    if not isinstance(image, str) or not image.strip():
        raise RowProblem(f"field 'image': a t2i record needs its target image (one file path), got {image!r}")
    if record.get("task") not in (None, "", "t2i"):
        raise RowProblem(f"field 'task' is {record['task']!r} in a t2i file; expected t2i")
    metadata = {"source": source, "row": number, "id": record.get("id")}
    return [t2i_row(prompt, reader.read(image), metadata, record.get("geneval"))]


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
    task: RowTask = "understanding",
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
    a broken record is skipped whole. ``task="t2i"`` reads text-to-image rows, one per record
    (``T2I_CONVENTION``).

    Raises:
        DataError: if the file is missing, not UTF-8, not JSON, or not a list; or (on_error="raise")
            naming "record N (1-based)" and what is wrong with it.
    """
    path = Path(json_path)
    records = read_json_list(path, "conversation records")
    root = Path(image_root) if image_root is not None else path.parent
    reader = ImageReader(root, allow_outside_root, f"{section}.allow_outside_root")
    indices = subsample_indices(len(records), max_samples, seed)
    convert = _llava_t2i_samples if task == "t2i" else _llava_samples
    return collect_rows(
        str(path),
        "record",
        ((i + 1, records[i]) for i in indices),
        lambda record, number: convert(record, reader, str(path), number),
        on_error,
    )


def load(config: LlavaJsonSourceConfig, seed: int) -> LoadedSamples:
    """The training file (capped by ``max_samples``) and the test file, if any (never capped)."""
    outside = {"allow_outside_root": config.allow_outside_root, "task": config.task}
    train = load_llava_json(str(config.path), config.image_root, config.on_error, config.max_samples, seed, **outside)
    test = (
        load_llava_json(config.test_path, config.image_root, config.on_error, **outside) if config.test_path else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("llava_json", LlavaJsonSourceConfig, load, required="path")
