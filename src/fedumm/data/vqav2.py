"""``fedumm data vqav2``: one VQA v2 split from the official files, written as parquet shards that the
``hf`` source reads.

Goyal et al. (2017), "Making the V in VQA Matter", CVPR. The official release is, per split, a
question file (``v2_OpenEnded_mscoco_<subtype>_questions.json``: ``{"data_subtype", "questions":
[{"image_id", "question", "question_id"}]}``), an annotation file (``v2_mscoco_<subtype>_annotations.json``:
``{"data_subtype", "annotations": [{"question_id", "image_id", "answers": [{"answer",
"answer_confidence", "answer_id"}], "multiple_choice_answer", "answer_type", "question_type"}]}``)
and the COCO images ``COCO_<subtype>_<image_id:012d>.jpg`` (subtype train2014 or val2014).

Output: ``<out>/data/<split>-<k>-of-<n>.parquet`` (split train for train2014, validation for
val2014), one row per question in the question file's order, with the columns of the Hub's VQAv2
(question_type, multiple_choice_answer, answers, image_id, answer_type, question_id, question,
image) and datasets' feature metadata, so ``datasets.load_dataset(<out>)`` reads it as well.
Parquet rather than ``save_to_disk``: the ``hf`` source reads parquet by row group, so a slice
(``validation[:50%]``) or a ``max_samples`` draw reads only the row groups it keeps, and the shards
are the Hub's own layout. Images are referenced by absolute path by default (a train image serves
about five questions, so embedding copies every image that often); ``embed_images`` stores the
bytes instead, for a data set that moves to another machine.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedumm.data.rows import OnError, RowProblem, check_on_error, read_text
from fedumm.errors import DataError

__all__ = ["SPLIT_OF_SUBTYPE", "VQAv2Written", "coco_image_name", "write_vqav2"]

#: The split name a COCO subtype is written under (the names of the Hub's VQAv2).
SPLIT_OF_SUBTYPE = {"train2014": "train", "val2014": "validation"}

# Rows per row group: the unit the hf source reads. Small enough that a slice reads little more
# than it keeps; embedded images make rows about 160 kB, so their groups are smaller.
ROW_GROUP_ROWS = {False: 1000, True: 64}
# Rows per shard file (embedded: about 300 MB of images a shard).
SHARD_ROWS = {False: 100_000, True: 2000}
# Progress lines over a whole split (one per 5% of the questions).
PROGRESS_LINES = 20


def coco_image_name(subtype: str, image_id: int) -> str:
    """The official COCO file name of an image: ``COCO_val2014_000000000042.jpg``."""
    return f"COCO_{subtype}_{image_id:012d}.jpg"


@dataclass(frozen=True)
class VQAv2Written:
    """What ``write_vqav2`` wrote: the split, its shard files, rows written, rows skipped and why."""

    split: str
    files: list[Path]
    rows: int
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    problems_file: Path | None = None


def _features() -> Any:
    import datasets

    answer = {"answer": datasets.Value("string"), "answer_confidence": datasets.Value("string")}
    return datasets.Features(
        {
            "question_type": datasets.Value("string"),
            "multiple_choice_answer": datasets.Value("string"),
            "answers": datasets.List({**answer, "answer_id": datasets.Value("int64")}),
            "image_id": datasets.Value("int64"),
            "answer_type": datasets.Value("string"),
            "question_id": datasets.Value("int64"),
            "question": datasets.Value("string"),
            "image": datasets.Image(),
        }
    )


def _read_official(path: Path, key: str) -> tuple[list, str | None]:
    """(the list under ``key``, data_subtype) of an official VQA v2 JSON file."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get(key), list):
        found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise DataError(f"{path}: expected an official VQA v2 file, an object with a {key!r} list (got {found})")
    subtype = data.get("data_subtype")
    return data[key], subtype if isinstance(subtype, str) else None


def _int_field(record: Mapping, key: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowProblem(f"field {key!r}: expected an integer, got {value!r}")
    return value


def _str_field(record: Mapping, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise RowProblem(f"field {key!r}: expected a string, got {value!r}")
    return value


def _answers(annotation: Mapping) -> list[dict]:
    answers = annotation.get("answers")
    if not isinstance(answers, list) or not answers:
        raise RowProblem(f"field 'answers': expected a non-empty list, got {answers!r}")
    out = []
    for k, item in enumerate(answers):
        if not isinstance(item, Mapping) or not isinstance(item.get("answer"), str):
            raise RowProblem(f"field 'answers': item {k} is {item!r}, expected {{'answer': str, ...}}")
        confidence = item.get("answer_confidence")
        answer_id = item.get("answer_id")
        out.append(
            {
                "answer": item["answer"],
                "answer_confidence": confidence if isinstance(confidence, str) else None,
                "answer_id": answer_id if isinstance(answer_id, int) and not isinstance(answer_id, bool) else None,
            }
        )
    return out


def _index_annotations(annotations: list, path: Path) -> dict[int, Mapping]:
    by_question: dict[int, Mapping] = {}
    for number, annotation in enumerate(annotations, start=1):
        qid = annotation.get("question_id") if isinstance(annotation, Mapping) else None
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise DataError(f"{path}, annotation {number} (1-based): expected an object with an integer 'question_id'")
        if qid in by_question:
            raise DataError(f"{path}, annotation {number} (1-based): question_id {qid} is annotated twice")
        by_question[qid] = annotation
    return by_question


def _check_pairing(questions: list, annotated: dict[int, Mapping], q_path: Path, a_path: Path) -> None:
    """Every question has its annotation (same image) and every annotation its question: the two
    files are one split's. Always raises on a mismatch (skipping would hide a wrong file)."""
    asked: set[int] = set()
    for number, question in enumerate(questions, start=1):
        qid = question.get("question_id") if isinstance(question, Mapping) else None
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise DataError(f"{q_path}, question {number} (1-based): expected an object with an integer 'question_id'")
        if qid not in annotated:
            raise DataError(
                f"{q_path}, question {number} (1-based): question_id {qid} has no annotation in {a_path}; "
                f"are both files of the same split?"
            )
        image, annotated_image = question.get("image_id"), annotated[qid].get("image_id")
        if image != annotated_image:
            raise DataError(
                f"{q_path}, question {number} (1-based): question_id {qid} is about image_id {image!r}, "
                f"but {a_path} gives image_id {annotated_image!r}"
            )
        asked.add(qid)
    unasked = [qid for qid in annotated if qid not in asked]
    if unasked:
        raise DataError(
            f"{a_path}: {len(unasked)} annotation(s) have no question in {q_path} (e.g. question_id "
            f"{unasked[0]}); are both files of the same split?"
        )


def _subtype(q_subtype: str | None, a_subtype: str | None, images: Path, q_path: Path, a_path: Path) -> str:
    if q_subtype and a_subtype and q_subtype != a_subtype:
        raise DataError(
            f"mismatched files: {q_path} is data_subtype {q_subtype!r}, {a_path} is {a_subtype!r}; "
            f"give one split's question and annotation files"
        )
    return q_subtype or a_subtype or images.name


def _image_value(path: Path, embed: bool) -> dict:
    """The image cell: datasets' {"bytes", "path"}, the bytes embedded or an absolute path. Images are
    not decoded here; the hf source checks each one it loads."""
    if not embed:
        return {"bytes": None, "path": str(path.resolve())}
    try:
        return {"bytes": path.read_bytes(), "path": path.name}
    except OSError as exc:
        raise RowProblem(f"image file {path} cannot be read ({exc})") from None


def _rows(
    questions: list,
    annotated: dict[int, Mapping],
    images: Path,
    subtype: str,
    embed: bool,
    problems: list[str],
    on_error: OnError,
    q_path: Path,
    step: Callable[[int], None],
) -> Iterator[dict]:
    """The output rows in question order; broken ones raise or are recorded in ``problems``."""
    seen: dict[int, bool] = {}  # image_id -> file exists (an image serves several questions)
    for number, question in enumerate(questions, start=1):
        step(number)
        try:
            image_id = _int_field(question, "image_id")
            annotation = annotated[question["question_id"]]
            path = images / coco_image_name(subtype, image_id)
            if image_id not in seen:
                seen[image_id] = path.is_file()
            if not seen[image_id]:
                raise RowProblem(f"image file {path} not found")
            yield {
                "question_type": _str_field(annotation, "question_type"),
                "multiple_choice_answer": _str_field(annotation, "multiple_choice_answer"),
                "answers": _answers(annotation),
                "image_id": image_id,
                "answer_type": _str_field(annotation, "answer_type"),
                "question_id": question["question_id"],
                "question": _str_field(question, "question"),
                "image": _image_value(path, embed),
            }
        except RowProblem as exc:
            message = f"{q_path}, question {number} (1-based, question_id {question.get('question_id')}): {exc}"
            if on_error == "raise":
                raise DataError(message) from None
            problems.append(message)


def write_vqav2(
    questions: str | Path,
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    split: str | None = None,
    on_error: OnError = "raise",
    embed_images: bool = False,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
    row_group_rows: int | None = None,
    shard_rows: int | None = None,
) -> VQAv2Written:
    """Write one VQA v2 split (see the module docstring) to ``<out>/data/<split>-*.parquet``.

    ``split`` defaults to the files' data_subtype (train2014 -> train, val2014 -> validation);
    image names use the data_subtype (else the images folder's name). A question whose image is
    missing or whose fields are broken raises, or with ``on_error="skip"`` is left out and listed
    in ``<out>/<split>_problems.txt``. ``progress`` gets a line once the files are read and paired,
    then one per 5% of the questions written.

    Raises:
        DataError: a file missing or not an official VQA v2 file; mismatched files (another
            data_subtype, a question without annotation or vice versa, another image_id);
            shards of ``split`` already in ``out`` (unless ``overwrite``); a broken question
            (on_error="raise"), naming the file, the question number and its question_id.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    check_on_error(on_error)
    q_path, a_path, images, out = Path(questions), Path(annotations), Path(images), Path(out)
    if not images.is_dir():
        raise DataError(f"{images}: the COCO image folder does not exist (e.g. val2014/)")
    question_list, q_subtype = _read_official(q_path, "questions")
    annotation_list, a_subtype = _read_official(a_path, "annotations")
    subtype = _subtype(q_subtype, a_subtype, images, q_path, a_path)
    if split is None:
        if subtype not in SPLIT_OF_SUBTYPE:
            raise DataError(
                f"cannot tell the split of data_subtype {subtype!r} ({q_path}); name it with --split "
                f"(one of {sorted(SPLIT_OF_SUBTYPE.values())} or another name)"
            )
        split = SPLIT_OF_SUBTYPE[subtype]
    if not split.isidentifier():
        raise DataError(f"--split {split!r}: expected a split name such as train or validation")
    folder = out / "data"
    existing = sorted(folder.glob(f"{split}-*.parquet"))
    if existing and not overwrite:
        raise DataError(f"{out}: already holds split {split!r} ({existing[0].name}); pass --overwrite to replace it")
    annotated = _index_annotations(annotation_list, a_path)
    _check_pairing(question_list, annotated, q_path, a_path)
    if progress is not None:
        progress(f"vqav2 {split}: {len(question_list):,} questions paired with their annotations ({subtype})")

    folder.mkdir(parents=True, exist_ok=True)
    group = row_group_rows or ROW_GROUP_ROWS[embed_images]
    per_shard = shard_rows or SHARD_ROWS[embed_images]
    schema = _features().arrow_schema
    total, reported = len(question_list), 0
    problems: list[str] = []

    def step(number: int) -> None:
        nonlocal reported
        # Integer steps: the k-th line once number >= k/20 of total (no float drift).
        if progress is not None and number * PROGRESS_LINES // total > reported:
            reported = number * PROGRESS_LINES // total
            progress(f"vqav2 {split}: {number:,}/{total:,} questions ({number / total:.0%}), {len(problems)} skipped")

    temporary: list[Path] = []
    written = 0
    writer = None
    batch: list[dict] = []
    try:
        for row in _rows(question_list, annotated, images, subtype, embed_images, problems, on_error, q_path, step):
            if writer is None:
                temporary.append(folder / f".{split}-{len(temporary):05d}.parquet.tmp")
                writer = pq.ParquetWriter(temporary[-1], schema)
            batch.append(row)
            written += 1
            if len(batch) == group or written % per_shard == 0:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=group)
                batch = []
            if written % per_shard == 0:
                writer.close()
                writer = None
        if writer is None and not temporary:  # every question skipped: one empty shard, still a split
            temporary.append(folder / f".{split}-00000.parquet.tmp")
            writer = pq.ParquetWriter(temporary[-1], schema)
        if writer is not None:
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema), row_group_size=group)
            writer.close()
            writer = None
    except BaseException:
        if writer is not None:
            writer.close()
        for path in temporary:
            path.unlink(missing_ok=True)
        raise
    for path in existing:
        path.unlink()
    files = []
    for k, path in enumerate(temporary):
        files.append(path.rename(folder / f"{split}-{k:05d}-of-{len(temporary):05d}.parquet"))
    problems_file = out / f"{split}_problems.txt"
    if problems:
        problems_file.write_text("\n".join(problems) + "\n", encoding="utf-8")
    else:
        problems_file.unlink(missing_ok=True)  # an overwritten split's old list
    return VQAv2Written(split, files, written, len(problems), problems, problems_file if problems else None)
