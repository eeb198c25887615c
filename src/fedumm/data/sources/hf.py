"""Source ``hf``: one split of a Hugging Face dataset with the VQAv2 columns (a hub name, a save_to_disk
folder, a parquet file, a folder of data files, or ``data_files``), and its test split or a hold-out.

Splits may be sliced as in ``datasets`` (``train[:1000]``, ``validation[:50%]``). Local parquet files
(a parquet file, a folder of parquet data files such as ``fedumm data vqav2`` writes, parquet
``data_files``) are read by index (``fedumm.data.parquet``): only the row groups holding the rows of
the slice and of the ``max_samples`` draw are read. A save_to_disk folder is memory-mapped, so only
the selected rows are read from it too. Any other dataset (a hub name, json/csv files) is prepared
whole by ``datasets`` first, then sliced and drawn.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import Field, field_validator

from fedumm.config_base import Section
from fedumm.data.images import ImageRef
from fedumm.data.parquet import ParquetRows, split_name, split_rows
from fedumm.data.rows import (
    SCHEMA_COLUMNS,
    LoadResult,
    OnError,
    RowProblem,
    answer_list,
    check_inside,
    check_on_error,
    collect_rows,
    image_ref,
    most_common_answer,
    optional_fields,
    subsample_indices,
    t2i_row,
    text_field,
)
from fedumm.data.sources.base import (
    MAX_SAMPLES_DESCRIPTION,
    ON_ERROR_DESCRIPTION,
    TASK_DESCRIPTION,
    LoadedSamples,
    RowTask,
    SourceSpec,
)
from fedumm.errors import DataError


class HFSourceConfig(Section):
    """A Hugging Face dataset with the VQAv2 columns (e.g. HuggingFaceM4/VQAv2)."""

    path: str | None = Field(
        None,
        description="Hub dataset name, a save_to_disk folder, a parquet file, or a folder of data files. "
        "A hub dataset that is only a loading script (e.g. HuggingFaceM4/VQAv2) cannot load with "
        "datasets>=4: use its parquet export (revision: refs/convert/parquet) or a parquet mirror.",
    )
    name: str | None = Field(
        None, description="Dataset configuration (subset) name, as in datasets.load_dataset(path, name)."
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit); refs/convert/parquet = the Hub's automatic "
        "parquet export of a script-only dataset.",
    )
    split: str = Field(
        "train",
        min_length=1,
        description="Split the clients train on; a slice as in datasets reads only its rows, e.g. "
        "train[:1000], train[10%:20%].",
    )
    test_split: str | None = Field(
        "validation",
        description="Split used as the global test set, sliceable as split (FedUMM: validation[:50%]); "
        "null = hold out data.global_test_fraction of the train split.",
    )
    data_files: dict[str, list[str]] | None = Field(
        None, description="Split name -> data files (parquet/json/csv), as in datasets.load_dataset."
    )
    max_samples: int | None = Field(None, ge=1, description=MAX_SAMPLES_DESCRIPTION)
    max_test_samples: int | None = Field(None, ge=1, description="Cap on global test rows; null = all.")
    allow_missing_images: bool = Field(
        False,
        description="A row whose image is null: true = a text-only sample; false = a broken row (on_error).",
    )
    allow_outside_root: bool = Field(
        False,
        description="A relative image path in the rows may resolve (.., symlinks) outside the dataset's "
        "folder: false = a broken row (on_error); true = read it anyway. Absolute paths, which datasets "
        "itself writes for undecoded image files, are not checked.",
    )
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)
    task: RowTask = Field(
        "understanding",
        description=f"{TASK_DESCRIPTION} A t2i dataset has an image column and a text column (image_column, "
        "text_column) and optionally a geneval column (GenEval metadata, an object or a JSON string).",
    )
    image_column: str = Field("image", min_length=1, description="t2i: the column holding the target image.")
    text_column: str = Field(
        "prompt", min_length=1, description="t2i: the column holding the prompt (e.g. text, caption)."
    )

    @field_validator("split", "test_split")
    @classmethod
    def _split_spec(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                split_name(value)
            except DataError as exc:
                raise ValueError(str(exc)) from None
        return value


_HF_BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv", ".arrow": "arrow"}


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


@dataclass(frozen=True)
class _DatasetRows:
    """A ``datasets.Dataset`` split read by index (a save_to_disk folder is memory-mapped: only the
    selected rows are read), its image columns left undecoded so that one broken image names its row."""

    dataset: Any

    @property
    def num_rows(self) -> int:
        return len(self.dataset)

    @property
    def column_names(self) -> list[str]:
        return list(self.dataset.column_names)

    def records(self, indices: Sequence[int], image_column: str = "image") -> Iterator[tuple[int, Mapping]]:
        return zip(indices, _undecoded(self.dataset.select(indices), image_column))


def _local_parquet(files: list[str]) -> bool:
    return bool(files) and all(f.lower().endswith(".parquet") and "://" not in f for f in files)


def _resolve_files(patterns: str | list[str], base: str | None) -> list[str]:
    """Data file patterns resolved as ``datasets.load_dataset`` resolves them (globs, relative to ``base``)."""
    from datasets.data_files import DataFilesList

    return list(DataFilesList.from_patterns([patterns] if isinstance(patterns, str) else list(patterns), base))


def _folder_splits(path: Path) -> dict[str, list[str]] | None:
    """{split: data files} of a local folder, found by datasets' own file-name patterns
    (data/train-00000-of-00002.parquet, ...); None when it holds no data files (e.g. only a
    loading script, which ``datasets.load_dataset`` then reports)."""
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
    from datasets.exceptions import DataFilesNotFoundError

    try:
        patterns = get_data_patterns(str(path))
    except (EmptyDatasetError, DataFilesNotFoundError):
        return None
    return {name: list(files) for name, files in DataFilesDict.from_patterns(patterns, base_path=str(path)).items()}


def _open_hf_split(
    path_or_name: str, split: str, data_files: Any, name: str | None = None, revision: str | None = None
) -> tuple[_DatasetRows | ParquetRows, Path | None]:
    """The split named ``split`` (no slice), readable by index, and the local folder (if any) image paths
    are under. Local parquet files are read by row group; anything else through ``datasets``."""
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
            folder = _data_files_folder(path_or_name, files[split])
            patterns = [files[split]] if isinstance(files[split], str) else list(files[split])
            if all(isinstance(f, str) and "://" not in f for f in patterns):
                resolved = _resolve_files(patterns, str(path) if path.is_dir() else None)
                if _local_parquet(resolved):
                    return ParquetRows(resolved, f"{where}, split {split!r}"), folder
            loaded = datasets.load_dataset(path_or_name, data_files=dict(files), split=split, **hub)
            return _DatasetRows(loaded), folder
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DataError(f"{where} (save_to_disk folder) has no split {split!r} (has {sorted(loaded)})")
                return _DatasetRows(loaded[split]), path
            own = str(loaded.split) if loaded.split is not None else "train"
            _check_single_split(own, split, f"{where} (save_to_disk folder)")
            return _DatasetRows(loaded), path
        if path.is_file():
            builder = _HF_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{where}: unsupported file type {path.suffix!r}; expected one of {sorted(_HF_BUILDERS)}"
                )
            _check_single_split("train", split, f"{where} (single file)")
            if builder == "parquet":
                return ParquetRows([str(path)], where), path.parent
            loaded = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
            return _DatasetRows(loaded), path.parent
        if path.is_dir():
            # A local folder of data files (a hub snapshot, fedumm data vqav2's output: data/train-*.parquet).
            found = _folder_splits(path)
            if found is not None and split not in found:
                raise DataError(f"{where} (folder of data files) has no split {split!r} (has {sorted(found)})")
            if found is not None and _local_parquet(found[split]):
                return ParquetRows(found[split], f"{where}, split {split!r}"), path
            return _DatasetRows(datasets.load_dataset(path_or_name, split=split, **hub)), path
        return _DatasetRows(datasets.load_dataset(path_or_name, split=split, **hub)), None
    except RuntimeError as exc:
        if "scripts are no longer supported" not in str(exc):
            raise
        # datasets>=4 refuses loading scripts (HuggingFaceM4/VQAv2 is one): say how to get parquet instead.
        raise DataError(
            f"cannot load {where}, split {split!r}: it is a dataset loading script, which datasets>=4 no longer "
            f"runs ({exc}). Point data.hf.path at a parquet copy instead: the Hub's parquet export "
            f"(data.hf.revision: refs/convert/parquet, where the Hub made one), a parquet mirror of the "
            f"dataset, parquet files via data.hf.data_files, or a save_to_disk folder; or build one from the "
            f"official VQA v2 files with `fedumm data vqav2`"
        ) from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot load {where}, split {split!r}: {type(exc).__name__}: {exc}") from exc


def _hf_image(
    value: object, base: Path | None, field_name: str = "image", allow_outside_root: bool = False
) -> ImageRef | Image.Image | None:
    """An undecoded ``datasets.Image`` value ({"bytes", "path"}), a path string, or None, checked
    and kept as an ``ImageRef`` (an already decoded PIL image stays in memory)."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, Mapping) and value.get("bytes"):
        return image_ref(bytes(value["bytes"]), f"embedded image ({value.get('path') or 'no path'})")
    reference = value.get("path") if isinstance(value, Mapping) else value
    if isinstance(reference, str) and reference:
        path = Path(reference) if base is None else base / reference
        if base is not None and not allow_outside_root and not Path(reference).is_absolute():
            check_inside(path, reference, base.resolve(), "data.hf.allow_outside_root")
        return image_ref(path, f"image file {path}")
    raise RowProblem(f"field {field_name!r}: expected an image, a path or null, got {value!r}")


def _hf_images(record: Mapping, base: Path | None, allow_missing_images: bool, allow_outside_root: bool) -> dict:
    """``image`` (and ``images`` from an ``images`` list column) of one HF row."""
    many = record.get("images")
    if many is not None:
        if isinstance(many, Mapping):  # a Sequence of dicts comes back as a dict of lists
            many = [dict(zip(many, values)) for values in zip(*many.values())]
        if not isinstance(many, list):
            raise RowProblem(f"field 'images': expected a list of images, got {type(many).__name__}")
        images = [_hf_image(value, base, f"images[{k}]", allow_outside_root) for k, value in enumerate(many)]
        if any(image is None for image in images):
            raise RowProblem(f"field 'images': item {images.index(None)} is null, expected an image")
        if images:
            return {"image": images[0], "images": images}
    image = _hf_image(record.get("image"), base, allow_outside_root=allow_outside_root)
    if image is None and not allow_missing_images:
        # VQAv2-style data always has an image; a null one is more likely a broken export than a
        # deliberate text-only sample, so it is only accepted when the config says so.
        raise RowProblem(
            "field 'image' is null (no image); set data.hf.allow_missing_images: true if text-only rows are expected"
        )
    return {"image": image}


def _hf_sample(
    record: Mapping, base: Path | None, metadata: dict, allow_missing_images: bool, allow_outside_root: bool
) -> dict:
    answers = answer_list(record.get("answers"))
    row = {
        **_hf_images(record, base, allow_missing_images, allow_outside_root),
        "question": text_field(record, "question"),
        "answers": answers,
        "multiple_choice_answer": (
            text_field(record, "multiple_choice_answer")
            if record.get("multiple_choice_answer") is not None
            else most_common_answer(answers)
        ),
        **optional_fields(record),
    }
    extra = {k: v for k, v in record.items() if k not in SCHEMA_COLUMNS and isinstance(v, (str, int, float, bool))}
    row["metadata"] = {**metadata, **extra}
    return row


def _hf_t2i_sample(
    record: Mapping, base: Path | None, metadata: dict, image_column: str, text_column: str, allow_outside_root: bool
) -> dict:
    image = _hf_image(record.get(image_column), base, image_column, allow_outside_root)
    if image is None:
        raise RowProblem(f"field {image_column!r} is null; a t2i row needs its target image")
    prompt = record.get(text_column)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowProblem(f"field {text_column!r} (the prompt): expected a non-empty string, got {prompt!r}")
    taken = {image_column, text_column, "geneval"}
    extra = {k: v for k, v in record.items() if k not in taken and isinstance(v, (str, int, float, bool))}
    return t2i_row(prompt, image, {**metadata, **extra}, record.get("geneval"))


def _undecoded(dataset: Any, image_column: str = "image") -> Any:
    """``dataset`` with its image columns left undecoded, so that one broken image names its
    row instead of failing the whole batch."""
    import datasets

    image = dataset.features.get(image_column)
    if isinstance(image, datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
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
    allow_outside_root: bool = False,
    task: RowTask = "understanding",
    image_column: str = "image",
    text_column: str = "prompt",
) -> LoadResult:
    """Load one split of a VQAv2-schema Hugging Face dataset (e.g. a parquet copy of VQAv2).

    Goyal et al. (2017), "Making the V in VQA Matter", CVPR: the VQAv2 columns ``image``,
    ``question``, ``answers`` (list of {"answer", ...} dicts or of str),
    ``multiple_choice_answer`` (derived as the most frequent answer when absent),
    ``answer_type``, ``question_id``; other scalar columns go into ``metadata``. An
    ``images`` column (a list of images) gives multi-image rows (``image`` = its first).
    A null image is a broken row unless ``allow_missing_images`` (then: text-only). A relative
    image path must resolve inside the dataset's folder unless ``allow_outside_root``.

    ``path_or_name`` is, in this order: with ``data_files``, the ``datasets.load_dataset``
    path (a builder such as "parquet", or a folder the files are relative to; relative image
    paths in the rows are under the data files' folder); a ``save_to_disk`` folder (a
    DatasetDict, or one Dataset = one split); a single parquet/json/csv file (one split:
    "train"); a local folder of data files; else a hub name (with ``name`` and ``revision``,
    e.g. "refs/convert/parquet"). ``split`` may be sliced as in ``datasets`` ("train[:1000]",
    "validation[:50%]"); ``max_samples`` rows of the slice are drawn with ``seed`` before any
    image is decoded, and only the rows read are the ones kept (local parquet: their row groups).

    ``task="t2i"`` reads text-to-image rows (``fedumm.data.rows.t2i_row``) instead: the target
    image from ``image_column``, the prompt from ``text_column``, GenEval metadata from a
    ``geneval`` column if there is one; other scalar columns go into ``metadata``.

    Raises:
        DataError: if the dataset or split cannot be loaded (a loading-script dataset says how
            to load a parquet copy instead), a required column is missing, or (with
            on_error="raise") a row is broken; "row N (1-based)" counts the split's rows
            before slicing and subsampling.
    """
    check_on_error(on_error)
    dataset, base = _open_hf_split(path_or_name, split_name(split), data_files, name, revision)
    source = f"Hugging Face dataset {path_or_name!r} split {split!r}"
    columns = dataset.column_names
    if task == "t2i":
        missing = [c for c in (image_column, text_column) if c not in columns]
        if missing:
            raise DataError(
                f"{source}: missing column(s) {missing} (has {columns}); name them with data.hf.image_column "
                f"and data.hf.text_column"
            )
    else:
        missing = [c for c in ("question", "answers") if c not in columns]
        if "image" not in columns and "images" not in columns:
            missing.insert(0, "image (or images)")
        if missing:
            raise DataError(f"{source}: missing column(s) {missing} (has {columns})")
    pool = split_rows(split, dataset.num_rows)
    indices = sorted(pool[k] for k in subsample_indices(len(pool), max_samples, seed))
    meta = {"source": str(path_or_name), "split": split}
    if task == "t2i":
        return collect_rows(
            source,
            "row",
            ((i + 1, record) for i, record in dataset.records(indices, image_column)),
            lambda record, number: [
                _hf_t2i_sample(record, base, {**meta, "row": number}, image_column, text_column, allow_outside_root)
            ],
            on_error,
        )
    return collect_rows(
        source,
        "row",
        ((i + 1, record) for i, record in dataset.records(indices)),
        lambda record, number: [
            _hf_sample(record, base, {**meta, "row": number}, allow_missing_images, allow_outside_root)
        ],
        on_error,
    )


def load(config: HFSourceConfig, seed: int) -> LoadedSamples:
    """``config.split`` (train) and ``config.test_split`` (global test; None = hold out), each capped."""
    hub = {
        "name": config.name,
        "revision": config.revision,
        "allow_missing_images": config.allow_missing_images,
        "allow_outside_root": config.allow_outside_root,
        "task": config.task,
        "image_column": config.image_column,
        "text_column": config.text_column,
    }
    path, files, on_error = str(config.path), config.data_files, config.on_error
    train = load_hf_vqa(path, config.split, config.max_samples, seed, files, on_error, **hub)
    test = (
        load_hf_vqa(path, config.test_split, config.max_test_samples, seed, files, on_error, **hub)
        if config.test_split is not None
        else None
    )
    return LoadedSamples.from_results(train, test)


SPEC = SourceSpec("hf", HFSourceConfig, load, required="path")
