"""Assemble the federated view of a dataset: per-client train/test splits plus a global test set.

Pipeline: load the source's rows (``load_source``: the registered source named by ``data.source``)
-> clients, either the source's natural clients (``client_files``) or ``make_partition`` ->
modality scenario per client -> local train/test split per client (or the client's own test file).

Rows skipped as broken (``on_error: skip``) are counted per file; ``load_report`` writes
their messages to the run folder and gives the counts for the run summary.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedumm.data.config import DataConfig
from fedumm.data.images import pixel_limit
from fedumm.data.modality import BOTH, apply_modality_scenario, modality_counts
from fedumm.data.partition import PartitionStats, column_values, make_partition, partition_stats
from fedumm.data.sources import LoadedSamples, get_source
from fedumm.errors import ConfigError, DataError


@dataclass
class ClientData:
    client_id: int
    train: list[dict]
    test: list[dict]


LOAD_PROBLEMS_FILE = "load_problems.txt"


@dataclass
class FederatedData:
    clients: list[ClientData]
    global_test: list[dict]
    partition: PartitionStats
    skipped_rows: int = 0
    load_problems: list[str] = field(default_factory=list)
    skipped_by_file: dict[str, int] = field(default_factory=dict)

    @property
    def pooled_train(self) -> list[dict]:
        """Every client's training split together: the centralized baseline's data."""
        return [row for client in self.clients for row in client.train]

    def modality_counts(self) -> list[dict[str, int]]:
        """Per client, how many of its rows (train + local test) are image+text, image, text, none."""
        return [modality_counts(client.train + client.test) for client in self.clients]

    def load_report(self, run_dir: str | Path) -> dict:
        """Write the skipped rows' messages to ``<run_dir>/load_problems.txt`` (only when rows
        were skipped) and return the run summary's keys ``skipped_rows`` (total) and
        ``skipped_rows_by_file``."""
        if self.load_problems:
            text = "\n".join(self.load_problems) + "\n"
            (Path(run_dir) / LOAD_PROBLEMS_FILE).write_text(text, encoding="utf-8")
        return self.partition.skipped_summary()


# Random stream of the global-test hold-out, apart from the partition's and local splits' draws.
_HOLDOUT_STREAM = 0x686F6C64


def _holdout(train: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(kept, held out): ``fraction`` of the train rows held out as the global test set."""
    order = np.random.default_rng([seed % 2**64, _HOLDOUT_STREAM]).permutation(len(train))
    return _split_by_order(train, order, fraction)


def load_source(config: DataConfig, seed: int) -> LoadedSamples:
    """Load the rows of ``config.source`` (a source of ``fedumm.data.sources``) with its section
    ``config.<source>``; a source without test data gets ``data.global_test_fraction`` held out.
    Images are checked against ``data.max_image_pixels`` (a shared key, so it is set around the load)."""
    spec = get_source(config.source)
    with pixel_limit(config.max_image_pixels):
        loaded = spec.load(getattr(config, spec.name), seed)
    if loaded.test is not None:
        return loaded
    if loaded.natural_clients is not None:
        # Holding rows out of the pooled train would desynchronise it from the natural clients.
        raise ValueError(f"data source {spec.name!r}: a source with natural clients must return test rows")
    train, test = _holdout(loaded.train, config.global_test_fraction, seed)
    return dataclasses.replace(loaded, train=train, test=test)


def load_samples(config: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) rows in the sample schema, from ``config.source``; natural clients pooled."""
    loaded = load_source(config, seed)
    return loaded.train, loaded.test


def _split_by_order(rows: list[dict], order: np.ndarray, fraction: float) -> tuple[list[dict], list[dict]]:
    """(kept, held out): the first round(fraction * n) of ``order`` (at least 1, at most n - 1)
    are held out; both keep the rows' original order."""
    if fraction == 0 or len(rows) < 2:
        return rows, []
    num_test = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    test_idx = set(order[:num_test].tolist())
    kept = [r for i, r in enumerate(rows) if i not in test_idx]
    held_out = [r for i, r in enumerate(rows) if i in test_idx]
    return kept, held_out


def split_local_test(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of a client's rows (at least one when fraction > 0 and rows > 1)."""
    return _split_by_order(rows, np.random.default_rng(seed).permutation(len(rows)), fraction)


def local_train_size(num_rows: int, fraction: float) -> int:
    """How many of a client's ``num_rows`` rows train after ``split_local_test`` holds out ``fraction``."""
    if fraction == 0 or num_rows < 2:
        return num_rows
    return num_rows - min(num_rows - 1, max(1, round(fraction * num_rows)))


def rows_for_min_train(min_train: int, fraction: float) -> int:
    """The fewest rows a client needs so that ``min_train`` of them train after its local test split."""
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    n = min_train
    while local_train_size(n, fraction) < min_train:
        n += 1
    return n


def _natural_parts(loaded: LoadedSamples, num_clients: int, min_train: int, fraction: float) -> list[list[int]]:
    """Consecutive index ranges of the pooled rows, one per natural client (file)."""
    clients = loaded.natural_clients or []
    if len(clients) != num_clients:
        raise DataError(
            f"data.client_files: {len(clients)} client files but federation.num_clients is {num_clients}; "
            f"set federation.num_clients={len(clients)}"
        )
    for name, rows in zip(loaded.client_names, clients):
        trained = local_train_size(len(rows), fraction)
        if trained < min_train:
            held = f" ({len(rows) - trained} held out as its local test split)" if trained < len(rows) else ""
            raise DataError(
                f"{name}: {len(rows)} usable samples leave {trained} for training{held}, fewer than "
                f"data.partition.min_samples={min_train}"
            )
    bounds = np.cumsum([0] + [len(rows) for rows in clients])
    return [list(range(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]


def _partition(config: DataConfig, train: list[dict], num_clients: int, seed: int) -> list[list[int]]:
    """``make_partition`` with the minimum raised so that each client keeps
    ``data.partition.min_samples`` training rows after its local test split."""
    min_train, fraction = config.partition.min_samples, config.local_test_fraction
    needed = rows_for_min_train(min_train, fraction)
    if needed == min_train:
        return make_partition(config.partition, train, num_clients, seed)
    raised = config.partition.model_copy(update={"min_samples": needed})
    try:
        return make_partition(raised, train, num_clients, seed)
    except DataError as exc:
        raise DataError(
            f"{exc} (data.partition.min_samples={min_train} training samples per client needs {needed} samples "
            f"per client before data.local_test_fraction={fraction} is held out as the local test split)"
        ) from exc


#: The task of a row without a ``task`` column in data.tasks (the understanding rows of the built-in sources).
UNTAGGED_TASK = "vqa"


def row_task(row: dict) -> str:
    """A row's task for data.tasks: its ``task`` column, ``UNTAGGED_TASK`` when absent."""
    return str(row.get("task") or UNTAGGED_TASK)


def _partition_by_task(config: DataConfig, train: list[dict], tasks: list[list[str]], seed: int) -> list[list[int]]:
    """data.tasks: each task's rows partitioned (``_partition``) among the clients holding it only;
    a client's indices are its tasks' parts together, in row order.

    Raises:
        DataError: naming data.tasks, for a held task without rows or rows of a task nobody holds.
    """
    by_task: dict[str, list[int]] = {}
    for i, row in enumerate(train):
        by_task.setdefault(row_task(row), []).append(i)
    held = {task for client in tasks for task in client}
    orphaned = sorted(set(by_task) - held)
    if orphaned:
        counts = ", ".join(f"{len(by_task[t])} {t}" for t in orphaned)
        raise DataError(f"data.tasks: the training data has {counts} rows but no client holds {', '.join(orphaned)}")
    parts: list[list[int]] = [[] for _ in tasks]
    for number, task in enumerate(sorted(held)):
        holders = [cid for cid, client in enumerate(tasks) if task in client]
        if task not in by_task:
            raise DataError(
                f"data.tasks: clients {holders} hold {task!r}, but the training data has no {task} rows "
                f"(tasks there: {', '.join(sorted(by_task))})"
            )
        rows = [train[i] for i in by_task[task]]
        try:
            task_parts = _partition(config, rows, len(holders), seed + 7919 * (number + 1))
        except DataError as exc:
            raise DataError(f"data.tasks: the {len(rows)} {task} rows among clients {holders}: {exc}") from exc
        for cid, part in zip(holders, task_parts):
            parts[cid] += [by_task[task][j] for j in part]
    return [sorted(part) for part in parts]


def build_federated_data(
    config: DataConfig,
    num_clients: int,
    seed: int,
    samples: tuple[list[dict], list[dict]] | None = None,
    *,
    task: str | None = None,
) -> FederatedData:
    """Clients with local train/test splits, the global test set and the partition statistics.

    ``samples`` = (train, test) skips loading (the rows are partitioned as configured).
    The modality scenario (``config.modality``) is applied to the clients' rows before the
    local test split, so a client's local test set lacks what its data lacks; the global
    test set keeps every modality. ``task`` (the run's eval.task) picks the prompts that
    replace a missing question when a row has no ``task`` column. With ``data.tasks`` each
    task's rows are partitioned among the clients that hold it (``_partition_by_task``). Client files with
    per-client test files keep them as the local test splits. Every client keeps at least
    ``data.partition.min_samples`` training rows.

    Raises:
        DataError: if the source cannot be loaded, a column is missing, the clients cannot be
            formed as configured, or there is no global test row.
        ConfigError: if data.modality.num_image_clients exceeds num_clients.
    """
    loaded = load_source(config, seed) if samples is None else LoadedSamples(*samples)
    train, test = loaded.train, loaded.test
    own_tests = loaded.natural_tests
    if loaded.natural_clients is not None:
        fraction = 0.0 if own_tests is not None else config.local_test_fraction
        if config.tasks is not None:
            raise ConfigError(f"data.tasks: not with data.source {config.source} (its files are the clients)")
        parts = _natural_parts(loaded, num_clients, config.partition.min_samples, fraction)
    elif config.tasks is not None:
        if len(config.tasks) != num_clients:
            raise ConfigError(f"data.tasks: {len(config.tasks)} lists for federation.num_clients={num_clients}")
        parts = _partition_by_task(config, train, config.tasks, seed)
    else:
        parts = _partition(config, train, num_clients, seed)
    labels = column_values(train, config.partition.label_column, "data.partition.label_column")
    if samples is None and not test:
        raise DataError(f"data.source {config.source!r}: no global test rows were loaded")
    modality = config.modality
    if modality.scenario == "single" and modality.num_image_clients > num_clients:
        raise ConfigError(
            f"data.modality.num_image_clients ({modality.num_image_clients}) exceeds "
            f"federation.num_clients ({num_clients})"
        )
    # A client's own test rows go through the scenario with its training rows, then split off again.
    tests = own_tests if own_tests is not None else [[] for _ in parts]
    client_rows = apply_modality_scenario(
        [[train[i] for i in part] + list(own) for part, own in zip(parts, tests)],
        modality.scenario,
        modality.rate,
        modality.num_image_clients,
        seed,
        task=task,
        image_only_prompt=modality.image_only_prompt,
        no_modality_prompt=modality.no_modality_prompt,
    )
    clients = []
    for cid, (rows, part) in enumerate(zip(client_rows, parts)):
        if own_tests is not None:
            local_train, local_test = rows[: len(part)], rows[len(part) :]
        else:
            local_train, local_test = split_local_test(rows, config.local_test_fraction, seed + 1 + cid)
        clients.append(ClientData(cid, local_train, local_test))
    if own_tests is not None:
        # Sizes and label counts cover each client's own test rows too, as for held-out splits.
        column = config.partition.label_column
        labels = labels + column_values([r for rows in own_tests for r in rows], column, "data.partition.label_column")
        starts = np.cumsum([len(train)] + [len(rows) for rows in own_tests])
        parts = [part + list(range(int(a), int(b))) for part, a, b in zip(parts, starts[:-1], starts[1:])]
    counts = [modality_counts(c.train + c.test) for c in clients]
    stats = partition_stats(labels, parts)
    return FederatedData(
        clients,
        test,
        stats.with_extras(
            # Modality counts only when some row lacks a modality, so plain runs keep their partition.json.
            modality_counts=counts if any(c[BOTH] != sum(c.values()) for c in counts) else None,
            skipped_rows_by_file=dict(loaded.skipped_by_file),
        ),
        skipped_rows=loaded.skipped,
        load_problems=list(loaded.problems),
        skipped_by_file=dict(loaded.skipped_by_file),
    )
