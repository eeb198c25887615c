"""Dataset loaders: Hugging Face VQAv2-schema datasets, LLaVA conversation JSON, pre-split client
files, and plain JSONL/CSV tables, all turned into rows of one sample schema.

The sample schema (every row is a dict):

- required: ``image`` (RGB ``PIL.Image.Image``, or None for a sample without an image),
  ``question`` (str, "" when the text is missing), ``answers`` (list of >= 1 str),
  ``multiple_choice_answer`` (str, the training target);
- optional: ``images`` (every image of the sample, a list of PIL images, when the source
  gave a list: ``image`` is then its first item), ``answer_type``, ``label`` and ``task``
  (str), ``question_id`` (int), ``client_id`` (int: the client whose local test file the
  row came from), ``metadata`` (dict: source file, 1-based row number, and any further
  columns such as a site).

Broken rows (a missing or undecodable image file, a missing field, a wrong type) raise
``DataError`` naming the file, the row (always 1-based, and the unit: row, line or
record) and what was expected. With ``on_error="skip"`` they are dropped instead, and
the returned ``LoadResult`` counts them and lists their messages so they can be reported.
Problems with a whole file (missing, not JSON, a required column absent) always raise.

Images are decoded while loading (a broken file is found now, not mid-training) and
shared between rows that name the same file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fedumm.errors import DataError

__all__ = [
    "ClientFilesResult",
    "LoadResult",
    "load_client_files",
    "load_hf_vqa",
    "load_llava_json",
    "load_table",
    "most_common_answer",
    "subsample_indices",
]

OnError = Literal["raise", "skip"]

IMAGE_PLACEHOLDER = "<image>"
# LLaVA-style speaker names; some exports use chat roles instead.
_HUMAN = frozenset({"human", "user"})
_ASSISTANT = frozenset({"gpt", "assistant"})
_CLIENT_FILE = re.compile(r"client_(\d+)\.json")
# Columns the schema knows; every other column of a table goes into metadata.
_SCHEMA_COLUMNS = frozenset(
    {"image", "images", "question", "answer", "answers", "multiple_choice_answer", "answer_type",
     "label", "task", "question_id", "metadata"}
)
_HF_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class LoadResult:
    """Rows of one source (a file, or a dataset split), plus how many source rows were
    skipped as broken and why."""

    rows: list[dict]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def skipped_by_source(self) -> dict[str, int]:
        """{source: skipped rows}, empty when nothing was skipped."""
        return {self.source: self.skipped} if self.skipped else {}


@dataclass(frozen=True)
class ClientFilesResult:
    """Pre-split clients: ``clients[i]`` holds the rows of ``train_files[i]``.

    ``client_tests[i]`` is client i's local test split when ``test/`` holds per-client
    ``client_<index>.json`` files (None otherwise); ``test`` is the global test set.
    """

    clients: list[list[dict]]
    test: list[dict]
    train_files: list[Path]
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    client_tests: list[list[dict]] | None = None
    skipped_by_file: dict[str, int] = field(default_factory=dict)


class _RowProblem(Exception):
    """What is wrong with one source row; the collecting loader adds the file and row number."""


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def subsample_indices(num_rows: int, max_samples: int | None, seed: int) -> list[int]:
    """Ascending indices of a seeded random subset of ``max_samples`` rows (all rows when None).

    The subset depends only on (num_rows, max_samples, seed); ascending order keeps the
    source order, so row numbers in messages still read naturally.
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    if max_samples is None or max_samples >= num_rows:
        return list(range(num_rows))
    chosen = np.random.default_rng(seed).choice(num_rows, size=max_samples, replace=False)
    return sorted(int(i) for i in chosen)


def _collect(
    source: str,
    unit: str,
    numbered: Iterable[tuple[int, Any]],
    convert: Callable[[Any, int], list[dict]],
    on_error: OnError,
) -> LoadResult:
    """Convert each (1-based number, raw record); raise or count the broken ones."""
    _check_on_error(on_error)
    rows: list[dict] = []
    problems: list[str] = []
    for number, raw in numbered:
        try:
            rows.extend(convert(raw, number))
        except _RowProblem as exc:
            message = f"{source}, {unit} {number} (1-based): {exc}"
            if on_error == "raise":
                raise DataError(message) from None
            problems.append(message)
    return LoadResult(rows, len(problems), problems, source)


class _ImageReader:
    """Opens image files relative to a root as RGB, once per path (rows share the object)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, Image.Image] = {}

    def read(self, reference: object) -> Image.Image:
        if not isinstance(reference, str) or not reference.strip():
            raise _RowProblem(f"field 'image': expected a file path string, got {reference!r}")
        path = self.root / reference
        if path not in self._cache:
            self._cache[path] = _decode_image(path, f"image file {path}")
        return self._cache[path]


def _read_images(record: Mapping, reader: _ImageReader, list_text: Callable[[str], list] | None = None) -> dict:
    """``image`` and, when the source gives a list, ``images``, from a record's ``image`` (a path,
    a list of paths, or empty = no image) and ``images`` (a list of paths) fields.

    ``list_text`` parses a text cell into a list (CSV); a given ``image`` next to ``images``
    must be its first item.
    """
    single, many = record.get("image"), record.get("images")
    if isinstance(many, str) and list_text is not None:
        many = list_text(many) if many.strip() else None
    if isinstance(single, list):
        if many not in (None, []):
            raise _RowProblem("fields 'image' and 'images' are both lists; give the list once, in 'images'")
        single, many = None, single
    if many in (None, []):
        # An empty image cell is a text-only sample, which the schema allows.
        return {"image": None if single in (None, "") else reader.read(single)}
    if not isinstance(many, list):
        raise _RowProblem(f"field 'images': expected a list of file paths, got {type(many).__name__} {many!r}")
    if single not in (None, "") and single != many[0]:
        raise _RowProblem(f"field 'image' ({single!r}) is not the first of 'images' ({many!r})")
    images = []
    for k, reference in enumerate(many):
        if not isinstance(reference, str) or not reference.strip():
            raise _RowProblem(f"field 'images': item {k} is {reference!r}, expected a file path string")
        images.append(reader.read(reference))
    return {"image": images[0], "images": images}


def _decode_image(source: Path | io.BytesIO, what: str) -> Image.Image:
    """Fully decode an image to RGB; a missing or unreadable file is a row problem."""
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise _RowProblem(f"{what} not found") from None
    except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise _RowProblem(f"{what} cannot be decoded ({exc})") from None


def _text(record: Mapping, key: str) -> str:
    if key not in record:
        raise _RowProblem(f"missing field {key!r} (has {sorted(record)})")
    value = record[key]
    if not isinstance(value, str):
        raise _RowProblem(f"field {key!r}: expected a string, got {type(value).__name__} {value!r}")
    return value


def _answer_list(value: object) -> list[str]:
    """Answers as a list of str, from a list of str, a list of {"answer": ...} (VQAv2), or a
    dict of lists (how ``datasets`` returns a Sequence of dicts)."""
    if isinstance(value, Mapping) and "answer" in value:
        value = value["answer"]
    if not isinstance(value, list):
        raise _RowProblem(f"field 'answers': expected a list, got {type(value).__name__} {value!r}")
    answers = [item["answer"] if isinstance(item, Mapping) and "answer" in item else item for item in value]
    bad = [(i, a) for i, a in enumerate(answers) if not isinstance(a, str)]
    if bad:
        i, a = bad[0]
        raise _RowProblem(f"field 'answers': item {i} is {type(a).__name__} {a!r}, expected a string")
    if not answers:
        raise _RowProblem("field 'answers': empty, expected at least one answer")
    return answers


def most_common_answer(answers: list[str]) -> str:
    """The most frequent answer, ties to the first seen: VQAv2's definition of
    ``multiple_choice_answer``, used when a source lacks that column."""
    return Counter(answers).most_common(1)[0][0]


def _optional_fields(record: Mapping) -> dict:
    """The schema's optional scalar fields present in ``record`` (empty strings = absent)."""
    out: dict[str, Any] = {}
    for key in ("answer_type", "task"):
        if record.get(key) not in (None, ""):
            out[key] = _text(record, key)
    label = record.get("label")
    if label not in (None, ""):
        # Class ids are often ints (Hateful Memes: 0/1); the schema keeps labels as text.
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise _RowProblem(f"field 'label': expected a string or int, got {type(label).__name__} {label!r}")
        out["label"] = str(label)
    qid = record.get("question_id")
    if qid not in (None, ""):
        if isinstance(qid, str) and qid.strip().isdigit():
            qid = int(qid)
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise _RowProblem(f"field 'question_id': expected an integer, got {type(qid).__name__} {qid!r}")
        out["question_id"] = qid
    return out


# ---------------------------------------------------------------------------------------------
# Hugging Face datasets (VQAv2 schema)


def _check_single_split(own: str, split: str, where: str) -> None:
    """A split-less source (one saved Dataset, one file) is one split: its own name, else train.

    Answering any split with it would make the test set equal the training set.
    """
    if split != own:
        raise DataError(
            f"{where} holds a single split ({own!r}), not {split!r}; give the test split its own files "
            f"via data.hf.data_files, or set data.hf.test_split: null to hold out a test set"
        )


_GLOB = re.compile(r"[*?\[]")


def _data_files_folder(path_or_name: str, files: str | list[str]) -> Path | None:
    """The folder relative image paths in ``data_files`` rows are under: the data files' own
    folder (their common folder when they lie in several), not the working directory.
    None for remote files (URLs)."""
    base = Path(path_or_name) if Path(path_or_name).is_dir() else None
    folders = []
    for name in [files] if isinstance(files, str) else list(files):
        if "://" in str(name):
            return None
        path = Path(name) if base is None or Path(name).is_absolute() else base / name
        parts = path.parent.parts
        # A glob ("data/*/train-*.parquet") names its folder up to the first pattern part.
        literal = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
        folders.append(str(Path(*parts[:literal])) if literal else ".")
    if not folders:
        return None
    return Path(os.path.commonpath(folders)) if len(set(folders)) > 1 else Path(folders[0])


def _open_hf_split(
    path_or_name: str, split: str, data_files: Any, name: str | None = None, revision: str | None = None
) -> tuple[Any, Path | None]:
    """The requested split as a ``datasets.Dataset``, and the local folder (if any) image paths are under."""
    # Imported here: datasets pulls in pyarrow and takes about a second; only this source needs it.
    import datasets

    path = Path(path_or_name)
    where = f"Hugging Face dataset {path_or_name!r}" + (f" (revision {revision!r})" if revision else "")
    hub = {"name": name, "revision": revision}
    try:
        if data_files is not None:
            files = data_files if isinstance(data_files, Mapping) else {split: data_files}
            if split not in files:
                raise DataError(f"{where}: data_files has no split {split!r} (has {sorted(files)})")
            loaded = datasets.load_dataset(path_or_name, data_files=dict(files), split=split, **hub)
            return loaded, _data_files_folder(path_or_name, files[split])
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{where} (save_to_disk folder) has no split {split!r} (has {sorted(loaded)})")
                return loaded[split], path
            own = str(loaded.split) if loaded.split is not None else "train"
            _check_single_split(own, split, f"{where} (save_to_disk folder)")
            return loaded, path
        if path.is_file():
            builder = _HF_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{where}: unsupported file type {path.suffix!r}; expected one of {sorted(_HF_BUILDERS)}"
                )
            _check_single_split("train", split, f"{where} (single file)")
            return datasets.load_dataset(builder, data_files={"train": str(path)}, split="train"), path.parent
        # A local folder of data files (a hub snapshot: data/train-*.parquet, ...) or a hub name.
        return datasets.load_dataset(path_or_name, split=split, **hub), path if path.is_dir() else None
    except RuntimeError as exc:
        if "scripts are no longer supported" not in str(exc):
            raise
        # datasets>=4 refuses loading scripts (HuggingFaceM4/VQAv2 is one): say how to get parquet instead.
        raise DataError(
            f"cannot load {where}, split {split!r}: it is a dataset loading script, which datasets>=4 no longer "
            f"runs ({exc}). Point data.hf.path at a parquet copy instead: the Hub's parquet export "
            f"(data.hf.revision: refs/convert/parquet, where the Hub made one), a parquet mirror of the "
            f"dataset, parquet files via data.hf.data_files, or a save_to_disk folder"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load {where}, split {split!r}: {type(exc).__name__}: {exc}") from exc


def _hf_image(value: object, base: Path | None, field_name: str = "image") -> Image.Image | None:
    """Decode an undecoded ``datasets.Image`` value ({"bytes", "path"}), a path string, or None."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping) and value.get("bytes"):
        return _decode_image(io.BytesIO(value["bytes"]), f"embedded image ({value.get('path') or 'no path'})")
    reference = value.get("path") if isinstance(value, Mapping) else value
    if isinstance(reference, str) and reference:
        path = Path(reference) if base is None else base / reference
        return _decode_image(path, f"image file {path}")
    raise _RowProblem(f"field {field_name!r}: expected an image, a path or null, got {value!r}")


def _hf_images(record: Mapping, base: Path | None, allow_missing_images: bool) -> dict:
    """``image`` (and ``images`` from an ``images`` list column) of one HF row."""
    many = record.get("images")
    if many is not None:
        if isinstance(many, Mapping):  # a Sequence of dicts comes back as a dict of lists
            many = [dict(zip(many, values)) for values in zip(*many.values())]
        if not isinstance(many, list):
            raise _RowProblem(f"field 'images': expected a list of images, got {type(many).__name__}")
        images = [_hf_image(value, base, f"images[{k}]") for k, value in enumerate(many)]
        if any(image is None for image in images):
            raise _RowProblem(f"field 'images': item {images.index(None)} is null, expected an image")
        if images:
            return {"image": images[0], "images": images}
    image = _hf_image(record.get("image"), base)
    if image is None and not allow_missing_images:
        # VQAv2-style data always has an image; a null one is more likely a broken export than a
        # deliberate text-only sample, so it is only accepted when the config says so.
        raise _RowProblem(
            "field 'image' is null (no image); set data.hf.allow_missing_images: true if text-only rows are expected"
        )
    return {"image": image}


def _hf_sample(record: Mapping, base: Path | None, metadata: dict, allow_missing_images: bool) -> dict:
    answers = _answer_list(record.get("answers"))
    row = {
        **_hf_images(record, base, allow_missing_images),
        "question": _text(record, "question"),
        "answers": answers,
        "multiple_choice_answer": (
            _text(record, "multiple_choice_answer")
            if record.get("multiple_choice_answer") is not None
            else most_common_answer(answers)
        ),
        **_optional_fields(record),
    }
    extra = {k: v for k, v in record.items() if k not in _SCHEMA_COLUMNS and isinstance(v, (str, int, float, bool))}
    row["metadata"] = {**metadata, **extra}
    return row


def _undecoded(dataset: Any) -> Any:
    """``dataset`` with its image columns left undecoded, so that one broken image names its
    row instead of failing the whole batch."""
    import datasets

    image = dataset.features.get("image")
    if isinstance(image, datasets.Image):
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    images = dataset.features.get("images")
    if isinstance(images, datasets.List) and isinstance(images.feature, datasets.Image):
        dataset = dataset.cast_column("images", datasets.List(datasets.Image(decode=False), length=images.length))
    return dataset


def load_hf_vqa(
    path_or_name: str,
    split: str = "train",
    max_samples: int | None = None,
    seed: int = 0,
    data_files: str | list[str] | Mapping[str, str | list[str]] | None = None,
    on_error: OnError = "raise",
    *,
    name: str | None = None,
    revision: str | None = None,
    allow_missing_images: bool = False,
) -> LoadResult:
    """Load one split of a VQAv2-schema Hugging Face dataset (e.g. a parquet copy of VQAv2).

    Goyal et al. (2017), "Making the V in VQA Matter", CVPR: the VQAv2 columns ``image``,
    ``question``, ``answers`` (list of {"answer", ...} dicts or of str),
    ``multiple_choice_answer`` (derived as the most frequent answer when absent),
    ``answer_type``, ``question_id``; other scalar columns go into ``metadata``. An
    ``images`` column (a list of images) gives multi-image rows (``image`` = its first).
    A null image is a broken row unless ``allow_missing_images`` (then: text-only).

    ``path_or_name`` is, in this order: with ``data_files``, the ``datasets.load_dataset``
    path (a builder such as "parquet", or a folder the files are relative to; relative image
    paths in the rows are under the data files' folder); a ``save_to_disk`` folder (a
    DatasetDict, or one Dataset = one split); a single parquet/json/csv file (one split:
    "train"); a local folder of data files; else a hub name (with ``name`` and ``revision``,
    e.g. "refs/convert/parquet"). ``max_samples`` rows are drawn with ``seed`` before any
    image is decoded.

    Raises:
        DataError: if the dataset or split cannot be loaded (a loading-script dataset says how
            to load a parquet copy instead), a required column is missing, or (with
            on_error="raise") a row is broken; "row N (1-based)" counts the split's rows
            before subsampling.
    """
    _check_on_error(on_error)
    dataset, base = _open_hf_split(path_or_name, split, data_files, name, revision)
    source = f"Hugging Face dataset {path_or_name!r} split {split!r}"
    columns = dataset.column_names
    missing = [c for c in ("question", "answers") if c not in columns]
    if "image" not in columns and "images" not in columns:
        missing.insert(0, "image (or images)")
    if missing:
        raise DataError(f"{source}: missing column(s) {missing} (has {columns})")
    indices = subsample_indices(len(dataset), max_samples, seed)
    dataset = _undecoded(dataset.select(indices))
    meta = {"source": str(path_or_name), "split": split}
    return _collect(
        source,
        "row",
        ((i + 1, record) for i, record in zip(indices, dataset)),
        lambda record, number: [_hf_sample(record, base, {**meta, "row": number}, allow_missing_images)],
        on_error,
    )


# ---------------------------------------------------------------------------------------------
# LLaVA conversation JSON and pre-split client files


def _read_json_list(path: Path) -> list:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of conversation records, got {type(data).__name__}")
    return data


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
        raise _RowProblem(f"conversations[{k}]: expected {form}, got {turn!r}")
    if speaker not in speakers:
        key = "role" if "role" in turn and "from" not in turn else "from"
        raise _RowProblem(f"conversations[{k}]: {key!r} is {speaker!r}, expected one of {sorted(speakers)}")
    return text


def _llava_samples(record: object, reader: _ImageReader, source: str, number: int) -> list[dict]:
    """One sample per human/gpt pair; every pair keeps the record's image(s)."""
    if not isinstance(record, Mapping):
        raise _RowProblem(f"expected a conversation object, got {type(record).__name__}")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns or len(turns) % 2:
        raise _RowProblem(
            f"field 'conversations': expected a non-empty list of alternating human/gpt turns, got {turns!r}"
        )
    # "image": a path, a list of paths, or null/absent (a text-only record, as FedMLLM writes them).
    shared = {**_read_images(record, reader), **_optional_fields(record)}
    samples = []
    for k in range(0, len(turns), 2):
        question = _turn(turns, k, _HUMAN).replace(IMAGE_PLACEHOLDER, "").strip()
        answer = _turn(turns, k + 1, _ASSISTANT).strip()
        if not answer:
            # An empty target trains the model to answer nothing; the table loader refuses it too.
            raise _RowProblem(f"conversations[{k + 1}]: empty answer, expected a non-empty string")
        metadata = {"source": source, "row": number, "id": record.get("id"), "turn": k // 2 + 1}
        samples.append(
            {**shared, "question": question, "answers": [answer], "multiple_choice_answer": answer,
             "metadata": metadata}
        )
    return samples


def load_llava_json(
    json_path: str | Path,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    max_samples: int | None = None,
    seed: int = 0,
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
    file's folder). ``max_samples`` caps records, drawn with ``seed``; a broken record is
    skipped whole.

    Raises:
        DataError: if the file is missing, not JSON, or not a list; or (on_error="raise")
            naming "record N (1-based)" and what is wrong with it.
    """
    path = Path(json_path)
    records = _read_json_list(path)
    reader = _ImageReader(Path(image_root) if image_root is not None else path.parent)
    indices = subsample_indices(len(records), max_samples, seed)
    return _collect(
        str(path),
        "record",
        ((i + 1, records[i]) for i in indices),
        lambda record, number: _llava_samples(record, reader, str(path), number),
        on_error,
    )


def _client_files(folder: Path, others: list[Path] | None = None) -> dict[int, Path]:
    """``client_{i}.json`` files of ``folder`` by i. Other ``*.json`` names are an error, or,
    with ``others`` given, collected there (test/ may also hold global test files)."""
    numbered: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix != ".json":
            continue
        match = _CLIENT_FILE.fullmatch(path.name)
        if match is None:
            if others is None:
                raise DataError(f"{path}: unexpected file name; client files are named client_<index>.json")
            others.append(path)
            continue
        index = int(match.group(1))
        if index in numbered:
            raise DataError(f"{path} and {numbered[index]} both claim client index {index}")
        numbered[index] = path
    return numbered


def _train_client_files(train_dir: Path) -> dict[int, Path]:
    """The training client files by index; i must run without gaps from 0 (or from 1)."""
    numbered = _client_files(train_dir)
    if not numbered:
        raise DataError(f"{train_dir}: no client_<index>.json files")
    first = min(numbered)
    if first not in (0, 1):
        raise DataError(f"{numbered[first]}: client indices must start at 0 or 1, found {first} first")
    for index in range(first, max(numbered) + 1):
        if index not in numbered:
            after = numbered[min(i for i in numbered if i > index)]
            raise DataError(f"{train_dir}: client_{index}.json is missing (gap before {after.name})")
    return dict(sorted(numbered.items()))


def load_client_files(
    root: str | Path, image_root: str | Path | None = None, on_error: OnError = "raise"
) -> ClientFilesResult:
    """Load pre-split natural clients: ``root/train/client_{i}.json`` and ``root/test/*.json``.

    The layout of FedVLMBench (Su et al. 2025, arXiv:2506.09638) and FedMLLM (Xu et al.
    2024, arXiv:2411.14717) client files, each a LLaVA conversation JSON (see
    ``load_llava_json``). Client i is the i-th training file by index. In test/,
    ``client_{i}.json`` is client i's local test split (then every client needs one), and
    the other files, in name order, are the global test set; without other files the
    global test set is the union of the clients' test files, each row tagged with its
    ``client_id`` (the 0-based client position) so that the global model's metrics break
    down by client. Image paths are relative to ``image_root`` (default: root).

    Raises:
        DataError: naming the file, if train/ is missing, a name is not client_<index>.json,
            indices have a gap or do not start at 0 or 1, there is no test file, test/ has
            client files for some clients only, or a file or (on_error="raise") a record is
            broken.
    """
    root = Path(root)
    images = Path(image_root) if image_root is not None else root
    train_dir, test_dir = root / "train", root / "test"
    if not train_dir.is_dir():
        raise DataError(f"{root}: no train/ folder with client_<index>.json files")
    train_by_index = _train_client_files(train_dir)
    global_files: list[Path] = []
    test_by_index = _client_files(test_dir, global_files) if test_dir.is_dir() else {}
    if not test_by_index and not global_files:
        raise DataError(f"{test_dir}: no test *.json files; the global test set is read from there")
    if test_by_index and set(test_by_index) != set(train_by_index):
        lacking = sorted(set(train_by_index) - set(test_by_index))
        extra = sorted(set(test_by_index) - set(train_by_index))
        raise DataError(
            f"{test_dir}: per-client test files must match train/ one to one; "
            + (f"no test file for client(s) {lacking}" if lacking else f"no training file for client(s) {extra}")
        )
    clients = [load_llava_json(p, images, on_error) for p in train_by_index.values()]
    client_tests = [load_llava_json(test_by_index[i], images, on_error) for i in train_by_index] if test_by_index else []
    global_tests = [load_llava_json(p, images, on_error) for p in global_files]
    if global_tests:
        test = [row for r in global_tests for row in r.rows]
    else:
        test = [{**row, "client_id": c} for c, r in enumerate(client_tests) for row in r.rows]
    results = clients + client_tests + global_tests
    return ClientFilesResult(
        clients=[r.rows for r in clients],
        test=test,
        train_files=list(train_by_index.values()),
        skipped=sum(r.skipped for r in results),
        problems=[p for r in results for p in r.problems],
        client_tests=[r.rows for r in client_tests] if client_tests else None,
        skipped_by_file={k: v for r in results for k, v in r.skipped_by_source.items()},
    )


# ---------------------------------------------------------------------------------------------
# JSONL / CSV tables


def _table_answers(record: Mapping) -> list[str]:
    """answers (a list; or text: a JSON list, else "|"-separated), else the single answer."""
    value = record.get("answers")
    if value in (None, ""):
        if record.get("answer") in (None, ""):
            raise _RowProblem(f"missing field 'answer' or 'answers' (has {sorted(record)})")
        return [_text(record, "answer")]
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _RowProblem(f"field 'answers': not a valid JSON list ({exc.msg}): {value!r}") from None
        else:
            value = [part.strip() for part in value.split("|")]
    return _answer_list(value)


def _cell_list(text: str, field_name: str = "images") -> list:
    """A list given as text (a CSV cell): a JSON list, else "|"-separated items."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _RowProblem(f"field {field_name!r}: not a valid JSON list ({exc.msg}): {text!r}") from None
        if not isinstance(value, list):
            raise _RowProblem(f"field {field_name!r}: expected a JSON list, got {text!r}")
        return value
    return [part.strip() for part in text.split("|")]


def _table_sample(record: object, reader: _ImageReader, source: str, number: int) -> list[dict]:
    if not isinstance(record, Mapping):
        raise _RowProblem(f"expected an object with columns, got {type(record).__name__}")
    if "image" not in record and "images" not in record:
        raise _RowProblem(f"missing field 'image' (or 'images') (has {sorted(record)})")
    if "question" not in record:
        raise _RowProblem(f"missing field 'question' (has {sorted(record)})")
    answers = _table_answers(record)
    if record.get("multiple_choice_answer") not in (None, ""):
        target = _text(record, "multiple_choice_answer")
    elif record.get("answer") not in (None, ""):
        target = _text(record, "answer")
    else:
        target = most_common_answer(answers)
    images = _read_images(record, reader, _cell_list)
    extra = {k: v for k, v in record.items() if k not in _SCHEMA_COLUMNS}
    given = record.get("metadata")
    if given is not None and not isinstance(given, Mapping):
        raise _RowProblem(f"field 'metadata': expected an object, got {type(given).__name__}")
    return [
        {
            **images,
            "question": _text(record, "question"),
            "answers": answers,
            "multiple_choice_answer": target,
            **_optional_fields(record),
            "metadata": {"source": source, "row": number, **(given or {}), **extra},
        }
    ]


# Hateful Memes (Kiela et al. 2020): {"id", "img", "text", "label": 0|1}. The question follows
# FedMLLM's prompt; the answer is a word, since generative models answer in words.
HATEFUL_MEMES_QUESTION = "Is the content hateful based on the text and image?"
_HATEFUL_ANSWERS = {"0": "no", "1": "yes"}


def _hateful_memes_record(record: object) -> dict:
    """A Hateful Memes row as a fedumm table row (image, question, answer, label, task)."""
    if not isinstance(record, Mapping):
        raise _RowProblem(f"expected an object with columns, got {type(record).__name__}")
    for key in ("img", "text", "label"):
        if record.get(key) in (None, ""):
            raise _RowProblem(f"missing field {key!r} (hateful_memes format: img, text, label; has {sorted(record)})")
    text = _text(record, "text")
    label = record["label"]
    answer = _HATEFUL_ANSWERS.get(str(label)) if not isinstance(label, bool) else None
    if answer is None:
        raise _RowProblem(f"field 'label': expected 0 or 1, got {label!r}")
    rest = {k: v for k, v in record.items() if k not in ("img", "text", "label")}
    return {**rest, "image": record["img"], "question": f"{text}\n{HATEFUL_MEMES_QUESTION}", "answer": answer,
            "label": str(label), "task": "classification", "text": text}


def _jsonl_records(path: Path) -> Iterable[tuple[int, object]]:
    """(line number, parsed object) for each non-blank line; a bad line becomes a row problem."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, _JsonLine(line)


@dataclass(frozen=True)
class _JsonLine:
    """An unparsed JSONL line: parsed inside the row conversion so a bad line can be skipped."""

    text: str

    def parse(self) -> object:
        try:
            return json.loads(self.text)
        except json.JSONDecodeError as exc:
            raise _RowProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


@dataclass(frozen=True)
class _CsvRow:
    """One CSV record's cells: checked against the header inside the row conversion, so a
    row with the wrong number of columns is a row problem (skippable), not a silent shift."""

    header: tuple[str, ...]
    cells: tuple[str, ...]

    def parse(self) -> dict:
        if len(self.cells) != len(self.header):
            raise _RowProblem(
                f"has {len(self.cells)} columns, the header has {len(self.header)} ({', '.join(self.header)})"
            )
        return dict(zip(self.header, self.cells))


def _csv_records(path: Path, required: tuple[str, ...], answer_columns: tuple[str, ...]) -> list[tuple[int, _CsvRow]]:
    """(record number, row) for each non-empty CSV record; the header must hold ``required``
    (each "a|b" entry: one of them) and one of ``answer_columns`` if any."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, []))
        missing = [c for c in required if not any(name in header for name in c.split("|"))]
        if answer_columns and not any(c in header for c in answer_columns):
            missing.append(" or ".join(answer_columns))
        if missing:
            raise DataError(f"{path}: missing column(s) {[m.replace('|', ' or ') for m in missing]} "
                            f"in the header {list(header)}")
        # Blank lines are no records (csv.DictReader skips them too).
        cells = [tuple(row) for row in reader]
        return [(number, _CsvRow(header, row)) for number, row in enumerate((r for r in cells if r), start=1)]


def load_table(
    path: str | Path,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    max_samples: int | None = None,
    seed: int = 0,
    table_format: Literal["fedumm", "hateful_memes"] = "fedumm",
) -> LoadResult:
    """Load a JSONL (.jsonl/.ndjson) or CSV (.csv) table of samples.

    Columns (``table_format="fedumm"``): ``image`` (a path relative to ``image_root``,
    default the table's folder; empty = no image) and/or ``images`` (a list of paths for a
    multi-image sample, in CSV a JSON list or "a|b"; ``image`` is then its first),
    ``question``, and ``answer`` or ``answers`` (a JSON list; in CSV a JSON list string or
    "a|b|c"). Optional: ``multiple_choice_answer`` (default: the ``answer``, else the most
    frequent answer), ``answer_type``, ``label``, ``task``, ``question_id``; every other
    column (e.g. ``site``) goes into ``metadata``. ``table_format="hateful_memes"`` reads
    the Hateful Memes files (``img``, ``text``, ``label`` 0/1): question = the text then
    ``HATEFUL_MEMES_QUESTION``, answer "yes"/"no", task "classification".
    Rows are numbered "line N" (JSONL file line) or "row N" (CSV record, header not
    counted); a CSV row with more or fewer cells than the header is a broken row.

    Raises:
        DataError: if the file is missing, of another type, a CSV lacks a required
            column, or (on_error="raise") a row is broken.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if table_format not in ("fedumm", "hateful_memes"):
        raise ValueError(f"table_format must be 'fedumm' or 'hateful_memes', got {table_format!r}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        unit, records = "line", list(_jsonl_records(path))
    elif suffix == ".csv":
        if table_format == "hateful_memes":
            required, answer_columns = ("img", "text", "label"), ()
        else:
            required, answer_columns = ("image|images", "question"), ("answer", "answers")
        unit, records = "row", _csv_records(path, required, answer_columns)
    else:
        raise DataError(f"{path}: unsupported table type {suffix!r}; expected .jsonl, .ndjson or .csv")
    reader = _ImageReader(Path(image_root) if image_root is not None else path.parent)
    chosen = [records[i] for i in subsample_indices(len(records), max_samples, seed)]

    def convert(raw: object, number: int) -> list[dict]:
        record = raw.parse() if isinstance(raw, (_JsonLine, _CsvRow)) else raw
        if table_format == "hateful_memes":
            record = _hateful_memes_record(record)
        return _table_sample(record, reader, str(path), number)

    return _collect(str(path), unit, chosen, convert, on_error)
