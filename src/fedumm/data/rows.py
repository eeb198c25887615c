"""Shared row helpers of the data sources: the sample schema, broken-row handling, image decoding,
field checks and seeded subsampling (each source's own reading code is in ``fedumm.data.sources``).

The sample schema (every row is a dict):

- required: ``image`` (an ``ImageRef``, see ``fedumm.data.images``; an RGB ``PIL.Image.Image``
  from in-memory sources such as synthetic; or None for a sample without an image),
  ``question`` (str, "" when the text is missing), ``answers`` (list of >= 1 str),
  ``multiple_choice_answer`` (str, the training target);
- optional: ``images`` (every image of the sample, a list as ``image``, when the source
  gave a list: ``image`` is then its first item), ``answer_type``, ``label`` and ``task``
  (str), ``question_id`` (int), ``client_id`` (int: the client whose local test file the
  row came from), ``metadata`` (dict: source file, 1-based row number, and any further
  columns such as a site).

A text-to-image row (``task`` "t2i", built by ``t2i_row``) holds ``prompt`` (str, the text to
draw), ``image`` (the target image; None for an evaluation prompt without one), optional
``geneval`` (GenEval's metadata of the prompt, checked by ``geneval_metadata``) and ``tag`` (its
GenEval category), the understanding columns empty (``question`` "", ``answers`` [],
``multiple_choice_answer`` ""), and ``metadata`` as above.

Broken rows (a missing or undecodable image file, a missing field, a wrong type) raise
``DataError`` naming the file, the row (always 1-based, and the unit: row, line or
record) and what was expected. With ``on_error="skip"`` they are dropped instead, and
the returned ``LoadResult`` counts them and lists their messages so they can be reported.
Problems with a whole file (missing, not JSON, a required column absent) always raise.

Images are checked while loading (decoded once and dropped: a broken or oversized file is
found now, not mid-training) and kept as ``fedumm.data.images.ImageRef`` references, shared
between rows that name the same file; backends decode them when a batch is built. Image paths
must stay inside the image root (after ``..``, absolute paths and symlinks are resolved)
unless the source's ``allow_outside_root`` is set. A text file that is not UTF-8 raises
``DataError`` naming the file and the byte offset.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from fedumm.data.images import ImageProblem, ImageRef, decode, max_image_pixels
from fedumm.errors import DataError

__all__ = [
    "GENEVAL_RELATIONS",
    "SCHEMA_COLUMNS",
    "T2I_COLUMNS",
    "ImageReader",
    "LoadResult",
    "OnError",
    "RowProblem",
    "answer_list",
    "answer_text",
    "check_inside",
    "check_on_error",
    "collect_rows",
    "decode_image",
    "image_ref",
    "most_common_answer",
    "open_closed_type",
    "optional_fields",
    "read_images",
    "read_json_list",
    "read_text",
    "geneval_metadata",
    "subsample_indices",
    "t2i_row",
    "text_field",
]

# What a broken row does; the one definition, used by the source config sections too.
OnError = Literal["raise", "skip"]

# Columns the schema knows; every other column of a table goes into metadata.
SCHEMA_COLUMNS = frozenset(
    {
        "image",
        "images",
        "question",
        "answer",
        "answers",
        "multiple_choice_answer",
        "answer_type",
        "label",
        "task",
        "question_id",
        "metadata",
    }
)


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


class RowProblem(Exception):
    """What is wrong with one source row; the collecting loader adds the file and row number."""


def check_on_error(on_error: str) -> None:
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


def collect_rows(
    source: str,
    unit: str,
    numbered: Iterable[tuple[int, Any]],
    convert: Callable[[Any, int], list[dict]],
    on_error: OnError,
) -> LoadResult:
    """Convert each (1-based number, raw record); raise or count the broken ones."""
    check_on_error(on_error)
    rows: list[dict] = []
    problems: list[str] = []
    for number, raw in numbered:
        try:
            rows.extend(convert(raw, number))
        except RowProblem as exc:
            message = f"{source}, {unit} {number} (1-based): {exc}"
            if on_error == "raise":
                raise DataError(message) from None
            problems.append(message)
    return LoadResult(rows, len(problems), problems, source)


class ImageReader:
    """Checks image files relative to a root, once per path (rows share the reference).

    A path that resolves outside ``root`` (``..``, an absolute path, a symlink) is a row problem
    unless ``allow_outside_root``; ``allow_key`` is the config key that allows it, for the message.
    """

    def __init__(self, root: Path, allow_outside_root: bool = False, allow_key: str = "allow_outside_root") -> None:
        self.root = root
        self.allow_outside_root = allow_outside_root
        self.allow_key = allow_key
        self._resolved_root = root.resolve()
        self._cache: dict[Path, ImageRef] = {}

    def read(self, reference: object) -> ImageRef:
        if not isinstance(reference, str) or not reference.strip():
            raise RowProblem(f"field 'image': expected a file path string, got {reference!r}")
        path = self.root / reference
        if path not in self._cache:
            if not self.allow_outside_root:
                check_inside(path, reference, self._resolved_root, self.allow_key)
            self._cache[path] = image_ref(path, f"image file {path}")
        return self._cache[path]


def check_inside(path: Path, reference: str, root: Path, allow_key: str) -> None:
    """Raise a row problem if ``path`` (``reference`` joined to the image root) resolves outside
    ``root`` (already resolved): a row must not make the loader read arbitrary files."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte in the path
        raise RowProblem(f"image path {reference!r} cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(root):
        raise RowProblem(
            f"image path {reference!r} resolves to {resolved}, outside the image root {root}; "
            f"set {allow_key}: true to read images outside it"
        )


def read_images(record: Mapping, reader: ImageReader, list_text: Callable[[str], list] | None = None) -> dict:
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
            raise RowProblem("fields 'image' and 'images' are both lists; give the list once, in 'images'")
        single, many = None, single
    if many in (None, []):
        # An empty image cell is a text-only sample, which the schema allows.
        return {"image": None if single in (None, "") else reader.read(single)}
    if not isinstance(many, list):
        raise RowProblem(f"field 'images': expected a list of file paths, got {type(many).__name__} {many!r}")
    if single not in (None, "") and single != many[0]:
        raise RowProblem(f"field 'image' ({single!r}) is not the first of 'images' ({many!r})")
    images = []
    for k, reference in enumerate(many):
        if not isinstance(reference, str) or not reference.strip():
            raise RowProblem(f"field 'images': item {k} is {reference!r}, expected a file path string")
        images.append(reader.read(reference))
    return {"image": images[0], "images": images}


def image_ref(source: Path | bytes, what: str) -> ImageRef:
    """A checked reference to an image file or encoded bytes: decoded once now (header and pixel
    count first, against data.max_image_pixels) and dropped; a missing, oversized or
    undecodable image is a row problem."""
    try:
        return ImageRef.checked(source, what)
    except ImageProblem as exc:
        raise RowProblem(str(exc)) from None


def decode_image(source: Path | io.BytesIO, what: str) -> Image.Image:
    """Fully decode an image to RGB (checked as ``image_ref``); a bad image is a row problem."""
    data = source.getvalue() if isinstance(source, io.BytesIO) else source
    try:
        return decode(data, what, max_image_pixels())
    except ImageProblem as exc:
        raise RowProblem(str(exc)) from None


def read_text(path: Path) -> str:
    """A UTF-8 text file's content (a leading BOM kept, as ``open(encoding="utf-8")`` does).

    Raises:
        DataError: naming the file, the byte offset and line of the first byte that is not UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}: not UTF-8 text: byte {data[exc.start]:#04x} at byte offset {exc.start} (0-based, "
            f"line {line}) ({exc.reason}); save the file as UTF-8"
        ) from None


def read_json_list(path: Path, what: str) -> list:
    """The JSON list in ``path`` (``what``: what its items are, for the message).

    Raises:
        DataError: naming the file if it is missing, not UTF-8, not JSON (with the line and column)
            or not a list.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


def answer_text(record: Mapping, key: str) -> str:
    """A non-empty answer from ``record[key]``: a string, or a number written as text (VQA-RAD
    stores some answers as JSON numbers)."""
    if key not in record:
        raise RowProblem(f"missing field {key!r} (has {sorted(record)})")
    value = record[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowProblem(f"field {key!r}: expected a string or number, got {type(value).__name__} {value!r}")
    text = str(value).strip()
    if not text:
        raise RowProblem(f"field {key!r}: empty, expected an answer")
    return text


def open_closed_type(record: Mapping, key: str = "answer_type") -> str:
    """ "open" or "closed" from the OPEN / CLOSED answer types of the medical VQA sets (VQA-RAD,
    SLAKE; any case, surrounding spaces dropped)."""
    value = text_field(record, key).strip().lower()
    if value not in ("open", "closed"):
        raise RowProblem(f"field {key!r} is {record[key]!r}, expected OPEN or CLOSED")
    return value


def text_field(record: Mapping, key: str) -> str:
    if key not in record:
        raise RowProblem(f"missing field {key!r} (has {sorted(record)})")
    value = record[key]
    if not isinstance(value, str):
        raise RowProblem(f"field {key!r}: expected a string, got {type(value).__name__} {value!r}")
    return value


def answer_list(value: object) -> list[str]:
    """Answers as a list of str, from a list of str, a list of {"answer": ...} (VQAv2), or a
    dict of lists (how ``datasets`` returns a Sequence of dicts)."""
    if isinstance(value, Mapping) and "answer" in value:
        value = value["answer"]
    if not isinstance(value, list):
        raise RowProblem(f"field 'answers': expected a list, got {type(value).__name__} {value!r}")
    answers = [item["answer"] if isinstance(item, Mapping) and "answer" in item else item for item in value]
    bad = [(i, a) for i, a in enumerate(answers) if not isinstance(a, str)]
    if bad:
        i, a = bad[0]
        raise RowProblem(f"field 'answers': item {i} is {type(a).__name__} {a!r}, expected a string")
    if not answers:
        raise RowProblem("field 'answers': empty, expected at least one answer")
    return answers


def most_common_answer(answers: list[str]) -> str:
    """The most frequent answer, ties to the first seen: VQAv2's definition of
    ``multiple_choice_answer``, used when a source lacks that column."""
    return Counter(answers).most_common(1)[0][0]


def optional_fields(record: Mapping) -> dict:
    """The schema's optional scalar fields present in ``record`` (empty strings = absent)."""
    out: dict[str, Any] = {}
    for key in ("answer_type", "task"):
        if record.get(key) not in (None, ""):
            out[key] = text_field(record, key)
    label = record.get("label")
    if label not in (None, ""):
        # Class ids are often ints (Hateful Memes: 0/1); the schema keeps labels as text.
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise RowProblem(f"field 'label': expected a string or int, got {type(label).__name__} {label!r}")
        out["label"] = str(label)
    qid = record.get("question_id")
    if qid not in (None, ""):
        if isinstance(qid, str) and qid.strip().isdigit():
            qid = int(qid)
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise RowProblem(f"field 'question_id': expected an integer, got {type(qid).__name__} {qid!r}")
        out["question_id"] = qid
    return out


# Columns a text-to-image row takes from a table; every other column goes into metadata.
T2I_COLUMNS = frozenset({"prompt", "image", "geneval", "task", "metadata"})

# GenEval's relations (Ghosh et al. 2023); its metadata says where an object stands relative to another.
GENEVAL_RELATIONS = ("left of", "right of", "above", "below")


def _clause(value: object, where: str, index: int, include: bool) -> dict:
    """One include/exclude clause of GenEval metadata, checked."""
    if not isinstance(value, Mapping):
        raise RowProblem(f"{where}: expected an object {{'class', 'count', ...}}, got {value!r}")
    allowed = {"class", "count", "color", "position"} if include else {"class", "count"}
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise RowProblem(f"{where}: unknown key(s) {unknown}; expected {sorted(allowed)}")
    name, count = value.get("class"), value.get("count")
    if not isinstance(name, str) or not name.strip():
        raise RowProblem(f"{where}: 'class' must be a non-empty string, got {name!r}")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise RowProblem(f"{where}: 'count' must be an integer >= 1, got {count!r}")
    clause = {"class": name, "count": count}
    if "color" in value:
        if not isinstance(value["color"], str) or not value["color"].strip():
            raise RowProblem(f"{where}: 'color' must be a non-empty string, got {value['color']!r}")
        clause["color"] = value["color"]
    if "position" in value:
        position = value["position"]
        ok = isinstance(position, list) and len(position) == 2 and position[0] in GENEVAL_RELATIONS
        target = position[1] if ok else None
        if not ok or isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < index:
            raise RowProblem(
                f"{where}: 'position' must be [relation, index of an earlier include clause] with a relation "
                f"among {list(GENEVAL_RELATIONS)}, got {position!r}"
            )
        clause["position"] = [position[0], target]
    return clause


def geneval_metadata(value: object, prompt: str | None = None) -> dict:
    """GenEval metadata (Ghosh et al. 2023, its ``evaluation_metadata.jsonl`` lines), checked:
    ``{"tag": str, "include": [{"class", "count", "color"?, "position"?: [relation, k]}, ...],
    "exclude"?: [{"class", "count"}], "prompt"?: str}``; other keys are kept as given.

    ``prompt``: the row's prompt; the metadata's own prompt, when given, must equal it (when
    missing, it is filled in). A JSON string (a CSV cell) is parsed first.

    Raises:
        RowProblem: naming the field and what was expected.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"field 'geneval': not valid JSON ({exc.msg}): {value!r}") from None
    if not isinstance(value, Mapping):
        raise RowProblem(f"field 'geneval': expected an object with tag and include, got {type(value).__name__}")
    tag = value.get("tag")
    if not isinstance(tag, str) or not tag.strip():
        raise RowProblem(f"field 'geneval': 'tag' must be a non-empty string (e.g. 'counting'), got {tag!r}")
    include = value.get("include")
    if not isinstance(include, list) or not include:
        raise RowProblem(f"field 'geneval': 'include' must be a non-empty list of objects, got {include!r}")
    exclude = value.get("exclude", [])
    if not isinstance(exclude, list):
        raise RowProblem(f"field 'geneval': 'exclude' must be a list of objects, got {exclude!r}")
    own = value.get("prompt")
    if own is not None and not isinstance(own, str):
        raise RowProblem(f"field 'geneval': 'prompt' must be a string, got {own!r}")
    if own is not None and prompt is not None and own != prompt:
        raise RowProblem(f"field 'geneval': its prompt {own!r} differs from the row's prompt {prompt!r}")
    checked = dict(value)
    checked["include"] = [_clause(c, f"field 'geneval': include[{i}]", i, True) for i, c in enumerate(include)]
    if "exclude" in value:
        checked["exclude"] = [_clause(c, f"field 'geneval': exclude[{i}]", i, False) for i, c in enumerate(exclude)]
    if own is None and prompt is not None:
        checked["prompt"] = prompt
    return checked


def t2i_row(prompt: object, image: object, metadata: dict, geneval: object = None) -> dict:
    """A text-to-image row (see the module): ``prompt`` must be a non-empty string; ``geneval``
    (None: none) is checked by ``geneval_metadata``.

    Raises:
        RowProblem: for an empty or non-string prompt, or bad GenEval metadata.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowProblem(f"field 'prompt': expected a non-empty string, got {prompt!r}")
    row = {
        "task": "t2i",
        "prompt": prompt,
        "image": image,
        "question": "",
        "answers": [],
        "multiple_choice_answer": "",
    }
    if geneval is not None:
        row["geneval"] = geneval_metadata(geneval, prompt)
        row["tag"] = row["geneval"]["tag"]
    row["metadata"] = metadata
    return row
