"""Source ``table``: a JSONL or CSV table of samples (fedumm columns, or the Hateful Memes files),
with its test table or a hold-out."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fedumm.config_base import Section
from fedumm.data.rows import (
    SCHEMA_COLUMNS,
    T2I_COLUMNS,
    ImageReader,
    LoadResult,
    OnError,
    RowProblem,
    answer_list,
    collect_rows,
    most_common_answer,
    optional_fields,
    read_images,
    read_text,
    subsample_indices,
    t2i_row,
    text_field,
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
from fedumm.errors import DataError

TableFormat = Literal["fedumm", "hateful_memes"]


class TableSourceConfig(Section):
    """A JSONL or CSV table with columns image (path), question, and answer or answers."""

    format: TableFormat = Field(
        "fedumm",
        description="fedumm = columns image/images, question, answer/answers; hateful_memes = the Hateful "
        "Memes files (img, text, label 0/1): question = text + 'Is the content hateful based on the text "
        "and image?', answer yes/no, task classification.",
    )
    path: str | None = Field(None, description="Training table (.jsonl or .csv).")
    test_path: str | None = Field(
        None, description="Global test table; null = hold out data.global_test_fraction of the training rows."
    )
    image_root: str | None = Field(
        None, description="Folder the image paths are relative to; null = the table's folder."
    )
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)
    task: RowTask = Field(
        "understanding",
        description=TASK_DESCRIPTION + " A t2i table has columns prompt and image (the target), optionally geneval "
        "(GenEval metadata: an object, in CSV a JSON string); other columns go into metadata.",
    )

    @model_validator(mode="after")
    def _t2i_format(self) -> TableSourceConfig:
        if self.task == "t2i" and self.format != "fedumm":
            raise ValueError(
                f"data.table.task: t2i reads the fedumm format only, not data.table.format {self.format!r}"
            )
        return self


def _t2i_table_sample(record: object, reader: ImageReader, source: str, number: int) -> list[dict]:
    """A text-to-image row from a table row: prompt, image (the target), geneval?, task? (t2i)."""
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected an object with columns, got {type(record).__name__}")
    for key in ("prompt", "image"):
        if record.get(key) in (None, ""):
            raise RowProblem(f"missing field {key!r} (a t2i table has prompt, image, geneval?; has {sorted(record)})")
    if record.get("task") not in (None, "", "t2i"):
        raise RowProblem(f"field 'task' is {record['task']!r} in a t2i table (data.table.task: t2i); expected t2i")
    given = record.get("metadata")
    if given is not None and not isinstance(given, Mapping):
        raise RowProblem(f"field 'metadata': expected an object, got {type(given).__name__}")
    extra = {k: v for k, v in record.items() if k not in T2I_COLUMNS}
    metadata = {"source": source, "row": number, **(given or {}), **extra}
    geneval = record.get("geneval") if record.get("geneval") not in (None, "") else None
    return [t2i_row(record["prompt"], reader.read(record["image"]), metadata, geneval)]


def _table_answers(record: Mapping) -> list[str]:
    """answers (a list; or text: a JSON list, else "|"-separated), else the single answer."""
    value = record.get("answers")
    if value in (None, ""):
        if record.get("answer") in (None, ""):
            raise RowProblem(f"missing field 'answer' or 'answers' (has {sorted(record)})")
        return [text_field(record, "answer")]
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise RowProblem(f"field 'answers': not a valid JSON list ({exc.msg}): {value!r}") from None
        else:
            value = [part.strip() for part in value.split("|")]
    return answer_list(value)


def _cell_list(text: str, field_name: str = "images") -> list:
    """A list given as text (a CSV cell): a JSON list, else "|"-separated items."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RowProblem(f"field {field_name!r}: not a valid JSON list ({exc.msg}): {text!r}") from None
        if not isinstance(value, list):
            raise RowProblem(f"field {field_name!r}: expected a JSON list, got {text!r}")
        return value
    return [part.strip() for part in text.split("|")]


def _table_sample(record: object, reader: ImageReader, source: str, number: int) -> list[dict]:
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected an object with columns, got {type(record).__name__}")
    if "image" not in record and "images" not in record:
        raise RowProblem(f"missing field 'image' (or 'images') (has {sorted(record)})")
    if "question" not in record:
        raise RowProblem(f"missing field 'question' (has {sorted(record)})")
    answers = _table_answers(record)
    if record.get("multiple_choice_answer") not in (None, ""):
        target = text_field(record, "multiple_choice_answer")
    elif record.get("answer") not in (None, ""):
        target = text_field(record, "answer")
    else:
        target = most_common_answer(answers)
    images = read_images(record, reader, _cell_list)
    extra = {k: v for k, v in record.items() if k not in SCHEMA_COLUMNS}
    given = record.get("metadata")
    if given is not None and not isinstance(given, Mapping):
        raise RowProblem(f"field 'metadata': expected an object, got {type(given).__name__}")
    return [
        {
            **images,
            "question": text_field(record, "question"),
            "answers": answers,
            "multiple_choice_answer": target,
            **optional_fields(record),
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
        raise RowProblem(f"expected an object with columns, got {type(record).__name__}")
    for key in ("img", "text", "label"):
        if record.get(key) in (None, ""):
            raise RowProblem(f"missing field {key!r} (hateful_memes format: img, text, label; has {sorted(record)})")
    text = text_field(record, "text")
    label = record["label"]
    answer = _HATEFUL_ANSWERS.get(str(label)) if not isinstance(label, bool) else None
    if answer is None:
        raise RowProblem(f"field 'label': expected 0 or 1, got {label!r}")
    rest = {k: v for k, v in record.items() if k not in ("img", "text", "label")}
    return {
        **rest,
        "image": record["img"],
        "question": f"{text}\n{HATEFUL_MEMES_QUESTION}",
        "answer": answer,
        "label": str(label),
        "task": "classification",
        "text": text,
    }


def _jsonl_records(path: Path) -> Iterable[tuple[int, object]]:
    """(line number, parsed object) for each non-blank line; a bad line becomes a row problem."""
    # Decoded whole first, so a non-UTF-8 byte is reported with its offset in the file; the
    # StringIO splits lines as reading the file in text mode does (universal newlines).
    for number, line in enumerate(io.StringIO(read_text(path), newline=None), start=1):
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
            raise RowProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None


@dataclass(frozen=True)
class _CsvRow:
    """One CSV record's cells: checked against the header inside the row conversion, so a
    row with the wrong number of columns is a row problem (skippable), not a silent shift."""

    header: tuple[str, ...]
    cells: tuple[str, ...]

    def parse(self) -> dict:
        if len(self.cells) != len(self.header):
            raise RowProblem(
                f"has {len(self.cells)} columns, the header has {len(self.header)} ({', '.join(self.header)})"
            )
        return dict(zip(self.header, self.cells))


def _csv_records(path: Path, required: tuple[str, ...], answer_columns: tuple[str, ...]) -> list[tuple[int, _CsvRow]]:
    """(record number, row) for each non-empty CSV record; the header must hold ``required``
    (each "a|b" entry: one of them) and one of ``answer_columns`` if any."""
    with io.StringIO(read_text(path), newline="") as handle:
        reader = csv.reader(handle)
        header = tuple(next(reader, []))
        missing = [c for c in required if not any(name in header for name in c.split("|"))]
        if answer_columns and not any(c in header for c in answer_columns):
            missing.append(" or ".join(answer_columns))
        if missing:
            raise DataError(
                f"{path}: missing column(s) {[m.replace('|', ' or ') for m in missing]} in the header {list(header)}"
            )
        # Blank lines are no records (csv.DictReader skips them too).
        cells = [tuple(row) for row in reader]
        return [(number, _CsvRow(header, row)) for number, row in enumerate((r for r in cells if r), start=1)]


def load_table(
    path: str | Path,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    max_samples: int | None = None,
    seed: int = 0,
    table_format: TableFormat = "fedumm",
    *,
    allow_outside_root: bool = False,
    task: RowTask = "understanding",
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
    ``task="t2i"`` reads text-to-image rows instead (``fedumm.data.rows.t2i_row``): columns
    ``prompt``, ``image`` (the target) and optionally ``geneval`` (GenEval metadata; a JSON
    string in CSV) and ``task`` (t2i); other columns go into ``metadata``.
    Rows are numbered "line N" (JSONL file line) or "row N" (CSV record, header not
    counted); a CSV row with more or fewer cells than the header is a broken row. Image
    paths must resolve inside ``image_root`` unless ``allow_outside_root``.

    Raises:
        DataError: if the file is missing, of another type, not UTF-8, a CSV lacks a required
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
        if task == "t2i":
            required, answer_columns = ("prompt", "image"), ()
        elif table_format == "hateful_memes":
            required, answer_columns = ("img", "text", "label"), ()
        else:
            required, answer_columns = ("image|images", "question"), ("answer", "answers")
        unit, records = "row", _csv_records(path, required, answer_columns)
    else:
        raise DataError(f"{path}: unsupported table type {suffix!r}; expected .jsonl, .ndjson or .csv")
    root = Path(image_root) if image_root is not None else path.parent
    reader = ImageReader(root, allow_outside_root, "data.table.allow_outside_root")
    chosen = [records[i] for i in subsample_indices(len(records), max_samples, seed)]

    def convert(raw: object, number: int) -> list[dict]:
        record = raw.parse() if isinstance(raw, (_JsonLine, _CsvRow)) else raw
        if task == "t2i":
            return _t2i_table_sample(record, reader, str(path), number)
        if table_format == "hateful_memes":
            record = _hateful_memes_record(record)
        return _table_sample(record, reader, str(path), number)

    return collect_rows(str(path), unit, chosen, convert, on_error)


def load(config: TableSourceConfig, seed: int) -> LoadedSamples:
    """The training table (capped by ``max_samples``) and the test table, if any (never capped)."""
    fmt, root, on_error = config.format, config.image_root, config.on_error
    outside = {"allow_outside_root": config.allow_outside_root, "task": config.task}
    train = load_table(str(config.path), root, on_error, config.max_samples, seed, fmt, **outside)
    test = load_table(config.test_path, root, on_error, table_format=fmt, **outside) if config.test_path else None
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("table", TableSourceConfig, load, required="path")
