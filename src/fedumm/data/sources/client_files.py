"""Source ``client_files``: pre-split natural clients, ``root/train/client_{i}.json`` and ``root/test/*.json``
(LLaVA JSON, read by ``llava_json.load_llava_json``); the files are the clients."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from fedumm.config_base import Section
from fedumm.data.rows import OnError
from fedumm.data.sources.base import (
    ALLOW_OUTSIDE_ROOT_DESCRIPTION,
    ON_ERROR_DESCRIPTION,
    TASK_DESCRIPTION,
    LoadedSamples,
    RowTask,
    SourceSpec,
)
from fedumm.data.sources.llava_json import T2I_CONVENTION, load_llava_json
from fedumm.errors import DataError


class ClientFilesSourceConfig(Section):
    """Pre-split clients: root/train/client_{i}.json and root/test/*.json (LLaVA JSON)."""

    root: str | None = Field(None, description="Folder holding train/client_{i}.json and test/*.json.")
    image_root: str | None = Field(None, description="Folder the records' image paths are relative to; null = root.")
    allow_outside_root: bool = Field(False, description=ALLOW_OUTSIDE_ROOT_DESCRIPTION)
    on_error: OnError = Field("raise", description=ON_ERROR_DESCRIPTION)
    task: RowTask = Field("understanding", description=f"{TASK_DESCRIPTION} {T2I_CONVENTION}")


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


_CLIENT_FILE = re.compile(r"client_(\d+)\.json")


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
    root: str | Path,
    image_root: str | Path | None = None,
    on_error: OnError = "raise",
    *,
    allow_outside_root: bool = False,
    task: RowTask = "understanding",
) -> ClientFilesResult:
    """Load pre-split natural clients: ``root/train/client_{i}.json`` and ``root/test/*.json``.

    The layout of FedVLMBench (Su et al. 2025, arXiv:2506.09638) and FedMLLM (Xu et al.
    2024, arXiv:2411.14717) client files, each a LLaVA conversation JSON (see
    ``load_llava_json``). Client i is the i-th training file by index. In test/,
    ``client_{i}.json`` is client i's local test split (then every client needs one), and
    the other files, in name order, are the global test set; without other files the
    global test set is the union of the clients' test files, each row tagged with its
    ``client_id`` (the 0-based client position) so that the global model's metrics break
    down by client. Image paths are relative to ``image_root`` (default: root) and must
    resolve inside it unless ``allow_outside_root``. ``task="t2i"``: every file holds
    text-to-image records (``load_llava_json``).

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
    options = {"allow_outside_root": allow_outside_root, "section": "data.client_files", "task": task}
    clients = [load_llava_json(p, images, on_error, **options) for p in train_by_index.values()]
    client_tests = (
        [load_llava_json(test_by_index[i], images, on_error, **options) for i in train_by_index]
        if test_by_index
        else []
    )
    global_tests = [load_llava_json(p, images, on_error, **options) for p in global_files]
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


def load(config: ClientFilesSourceConfig, seed: int) -> LoadedSamples:
    """The client files as natural clients (``seed`` is unused: nothing is drawn)."""
    result = load_client_files(
        str(config.root),
        config.image_root,
        config.on_error,
        allow_outside_root=config.allow_outside_root,
        task=config.task,
    )
    return LoadedSamples(
        train=[row for rows in result.clients for row in rows],
        test=result.test,
        natural_clients=result.clients,
        client_names=[str(p) for p in result.train_files],
        skipped=result.skipped,
        problems=result.problems,
        natural_tests=result.client_tests,
        skipped_by_file=result.skipped_by_file,
    )


SPEC = SourceSpec("client_files", ClientFilesSourceConfig, load, required="root")
