"""Assemble the federated view of a dataset: per-client train/test splits plus a global test set.

Pipeline: load the source's rows (``load_source``) -> clients, either the source's natural
clients (``client_files``) or ``make_partition`` -> modality scenario per client ->
local train/test split per client (or the client's own test file).

Rows skipped as broken (``on_error: skip``) are counted per file; ``load_report`` writes
their messages to the run folder and gives the counts for the run summary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pathlib import Path

import numpy as np

from fedumm.config import DataConfig
from fedumm.data.loaders import load_client_files, load_hf_vqa, load_llava_json, load_table
from fedumm.data.modality import BOTH, apply_modality_scenario, modality_counts
from fedumm.data.partition import PartitionStats, column_values, make_partition, partition_stats
from fedumm.data.synthetic import make_synthetic_vqa
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


@dataclass(frozen=True)
class LoadedSamples:
    """A source's rows: pooled train and global test, its natural clients if it has them
    (``client_files``: one list per file, ``train`` is their concatenation), and the
    broken rows that were skipped."""

    train: list[dict]
    test: list[dict]
    natural_clients: list[list[dict]] | None = None
    client_names: list[str] = field(default_factory=list)
    skipped: int = 0
    problems: list[str] = field(default_factory=list)
    natural_tests: list[list[dict]] | None = None  # client_files: test/client_{i}.json per client
    skipped_by_file: dict[str, int] = field(default_factory=dict)


# Random stream of the global-test hold-out, apart from the partition's and local splits' draws.
_HOLDOUT_STREAM = 0x686F6C64


def _holdout(train: list[dict], test: list[dict] | None, fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """The source's test rows, or ``fraction`` of the train rows held out when it has none."""
    if test is not None:
        return train, test
    order = np.random.default_rng([seed % 2**64, _HOLDOUT_STREAM]).permutation(len(train))
    return _split_by_order(train, order, fraction)


def load_source(config: DataConfig, seed: int) -> LoadedSamples:
    """Load the rows of ``config.source`` (see ``fedumm.data.loaders``)."""
    if config.source == "synthetic":
        return LoadedSamples(*load_synthetic(config, seed))
    if config.source == "client_files":
        cf = config.client_files
        result = load_client_files(str(cf.root), cf.image_root, cf.on_error)
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
    if config.source == "hf":
        hf = config.hf
        hub = {"name": hf.name, "revision": hf.revision, "allow_missing_images": hf.allow_missing_images}
        train = load_hf_vqa(str(hf.path), hf.split, hf.max_samples, seed, hf.data_files, hf.on_error, **hub)
        test = (
            load_hf_vqa(str(hf.path), hf.test_split, hf.max_test_samples, seed, hf.data_files, hf.on_error, **hub)
            if hf.test_split is not None
            else None
        )
    elif config.source == "llava_json":
        lj = config.llava_json
        train = load_llava_json(str(lj.path), lj.image_root, lj.on_error, lj.max_samples, seed)
        test = load_llava_json(lj.test_path, lj.image_root, lj.on_error) if lj.test_path else None
    elif config.source == "table":
        tb = config.table
        train = load_table(str(tb.path), tb.image_root, tb.on_error, tb.max_samples, seed, tb.format)
        test = load_table(tb.test_path, tb.image_root, tb.on_error, table_format=tb.format) if tb.test_path else None
    else:
        raise ConfigError(f"data.source: unknown source {config.source!r}")
    rows, test_rows = _holdout(train.rows, test.rows if test else None, config.global_test_fraction, seed)
    loaded = [train] + ([test] if test else [])
    return LoadedSamples(
        train=rows,
        test=test_rows,
        skipped=sum(r.skipped for r in loaded),
        problems=[p for r in loaded for p in r.problems],
        skipped_by_file={k: v for r in loaded for k, v in r.skipped_by_source.items()},
    )


def load_synthetic(config: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) rows of the built-in synthetic VQA task."""
    syn = config.synthetic
    kwargs = dict(image_size=syn.image_size, max_count=syn.max_count, answer_noise=syn.answer_noise)
    train = make_synthetic_vqa(syn.train_samples, seed, split="train", **kwargs)
    test = make_synthetic_vqa(syn.test_samples, seed, split="test", **kwargs)
    return train, test


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
    replace a missing question when a row has no ``task`` column. Client files with
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
        parts = _natural_parts(loaded, num_clients, config.partition.min_samples, fraction)
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
            local_train, local_test = rows[: len(part)], rows[len(part):]
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
