"""GenEval's files: its prompt file in, its image-folder layout out (Ghosh et al. 2023,
"GenEval: An Object-Focused Framework for Evaluating Text-to-Image Alignment", arXiv:2310.11513).

- ``load_geneval_prompts`` reads ``evaluation_metadata.jsonl`` (one JSON object per line:
  ``prompt``, ``tag``, ``include``, ``exclude``?) into text-to-image rows without a target image
  (``image`` None), each with its metadata in ``geneval`` and its 0-based prompt index (the
  line's position among the file's prompts) in ``metadata["prompt_index"]``.
- ``write_geneval_layout`` writes generated images as GenEval's evaluator
  (``evaluation/evaluate_images.py``) reads them::

      <dir>/<prompt index, 5 digits>/metadata.jsonl    the prompt's metadata line (one JSON object)
      <dir>/<prompt index, 5 digits>/samples/<k, 4 digits>.png

  so that ``python evaluation/evaluate_images.py <dir> --outfile results.jsonl`` scores them
  and ``summary_scores.py`` summarises. ``read_geneval_layout`` reads such a folder back.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from fedumm.data.rows import LoadResult, OnError, RowProblem, collect_rows, read_text, t2i_row
from fedumm.errors import DataError

__all__ = ["GenevalFolder", "load_geneval_prompts", "read_geneval_layout", "write_geneval_layout"]

_FOLDER = re.compile(r"\d{5,}")
_SAMPLE = re.compile(r"\d{4,}\.png")


def _prompt_row(line: str, source: str, number: int, index: int) -> list[dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RowProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, Mapping):
        raise RowProblem(f"expected a JSON object with prompt, tag, include, got {type(record).__name__}")
    metadata = {"source": source, "row": number, "prompt_index": index}
    return [t2i_row(record.get("prompt"), None, metadata, record)]


def load_geneval_prompts(path: str | Path, on_error: OnError = "raise") -> LoadResult:
    """GenEval's ``evaluation_metadata.jsonl``: one text-to-image row per line (no target image).

    Each line must be ``{"prompt": str, "tag": str, "include": [{"class", "count", "color"?,
    "position"?: [relation, k]}], "exclude"?: [{"class", "count"}]}`` (checked by
    ``fedumm.data.rows.geneval_metadata``); the row keeps the object as ``geneval`` and the
    line's 0-based position among the prompts as ``metadata["prompt_index"]`` (GenEval's folder
    number for it). Blank lines are skipped and not counted.

    Raises:
        DataError: if the file is missing or not UTF-8, or (on_error="raise") naming the line
            (1-based) and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (GenEval's prompt file, evaluation_metadata.jsonl)")
    lines = [line for line in io.StringIO(read_text(path), newline=None)]
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    index_of = {number: index for index, (number, _) in enumerate(numbered)}
    return collect_rows(
        str(path),
        "line",
        numbered,
        lambda line, number: _prompt_row(line, str(path), number, index_of[number]),
        on_error,
    )


def _metadata_line(row: Mapping) -> dict:
    """What a prompt folder's metadata.jsonl holds: the row's GenEval metadata, else its prompt."""
    if "geneval" in row:
        return dict(row["geneval"])
    return {"prompt": row["prompt"]}


def write_geneval_layout(
    directory: str | Path, rows: Sequence[Mapping], images: Sequence[Sequence[Image.Image]]
) -> list[Path]:
    """Write ``images[i]`` (the samples generated for ``rows[i]``) in GenEval's layout (see the module).

    A row's folder number is its ``metadata["prompt_index"]`` (rows read by
    ``load_geneval_prompts``), else its position in ``rows``; metadata.jsonl holds its
    ``geneval`` metadata as one JSON line (a row without any: ``{"prompt": ...}``). Files already
    there are replaced; nothing outside ``directory`` is written.

    Returns:
        The prompt folders, in the order of ``rows``.

    Raises:
        ValueError: if the lengths differ, a row has no samples, a row has no prompt, or two
            rows claim the same folder.
    """
    if len(rows) != len(images):
        raise ValueError(f"write_geneval_layout: {len(rows)} rows but {len(images)} image lists")
    root = Path(directory)
    folders: list[Path] = []
    seen: dict[int, int] = {}
    for position, (row, samples) in enumerate(zip(rows, images)):
        if "prompt" not in row:
            raise ValueError(f"write_geneval_layout: row {position} (0-based) has no prompt (has {sorted(row)})")
        if not samples:
            raise ValueError(f"write_geneval_layout: row {position} (0-based) has no images")
        index = (row.get("metadata") or {}).get("prompt_index", position)
        if index in seen:
            raise ValueError(
                f"write_geneval_layout: rows {seen[index]} and {position} (0-based) both have index {index}"
            )
        seen[index] = position
        folder = root / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(_metadata_line(row)) + "\n", encoding="utf-8")
        for k, image in enumerate(samples):
            image.convert("RGB").save(folder / "samples" / f"{k:04d}.png")
        folders.append(folder)
    return folders


@dataclass(frozen=True)
class GenevalFolder:
    """One prompt folder of GenEval's layout: its index, metadata line and sample files (by k)."""

    index: int
    metadata: dict
    samples: list[Path]


def read_geneval_layout(directory: str | Path) -> list[GenevalFolder]:
    """The prompt folders of a GenEval image folder, by index (what GenEval's evaluator reads:
    folders named by digits, each with metadata.jsonl and samples/<digits>.png).

    Raises:
        DataError: naming the folder or file, if the directory is missing, a prompt folder lacks
            metadata.jsonl or samples/, or its metadata is not one JSON object.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (GenEval image folder: <index>/metadata.jsonl, <index>/samples/)")
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _FOLDER.fullmatch(p.name)):
        meta_path, samples = folder / "metadata.jsonl", folder / "samples"
        if not meta_path.is_file() or not samples.is_dir():
            raise DataError(f"{folder}: a GenEval prompt folder needs metadata.jsonl and samples/")
        try:
            metadata = json.loads(read_text(meta_path))
        except json.JSONDecodeError as exc:
            raise DataError(f"{meta_path}: not one JSON object ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(metadata, dict):
            raise DataError(f"{meta_path}: expected a JSON object, got {type(metadata).__name__}")
        files = sorted((p for p in samples.iterdir() if _SAMPLE.fullmatch(p.name)), key=lambda p: int(p.stem))
        found.append(GenevalFolder(int(folder.name), metadata, files))
    return sorted(found, key=lambda f: f.index)
