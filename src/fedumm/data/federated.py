"""Assemble the federated view of a dataset: per-client train/test splits plus a global test set."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedumm.config import DataConfig
from fedumm.data.partition import PartitionStats, partition, partition_stats
from fedumm.data.synthetic import make_synthetic_vqa
from fedumm.errors import DataError


@dataclass
class ClientData:
    client_id: int
    train: list[dict]
    test: list[dict]


@dataclass
class FederatedData:
    clients: list[ClientData]
    global_test: list[dict]
    partition: PartitionStats

    @property
    def pooled_train(self) -> list[dict]:
        """Every client's training split together: the centralized baseline's data."""
        return [row for client in self.clients for row in client.train]


def load_samples(config: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, test) rows in the VQAv2 schema."""
    syn = config.synthetic
    kwargs = dict(image_size=syn.image_size, max_count=syn.max_count, answer_noise=syn.answer_noise)
    train = make_synthetic_vqa(syn.train_samples, seed, split="train", **kwargs)
    test = make_synthetic_vqa(syn.test_samples, seed, split="test", **kwargs)
    return train, test


def split_local_test(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out ``fraction`` of a client's rows (at least one when fraction > 0 and rows > 1)."""
    if fraction == 0 or len(rows) < 2:
        return rows, []
    order = np.random.default_rng(seed).permutation(len(rows))
    num_test = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    test_idx = set(order[:num_test].tolist())
    train = [r for i, r in enumerate(rows) if i not in test_idx]
    test = [r for i, r in enumerate(rows) if i in test_idx]
    return train, test


def build_federated_data(
    config: DataConfig, num_clients: int, seed: int, samples: tuple[list[dict], list[dict]] | None = None
) -> FederatedData:
    train, test = samples if samples is not None else load_samples(config, seed)
    column = config.partition.label_column
    missing = [i for i, row in enumerate(train[:50]) if column not in row]
    if missing:
        raise DataError(
            f"data.partition.label_column: column {column!r} not in the training rows "
            f"(row {missing[0]} has {sorted(train[missing[0]])})"
        )
    labels = [row[column] for row in train]
    parts = partition(labels, num_clients, config.partition.alpha, seed, config.partition.min_samples)
    clients = []
    for cid, indices in enumerate(parts):
        local_train, local_test = split_local_test(
            [train[i] for i in indices], config.local_test_fraction, seed + 1 + cid
        )
        clients.append(ClientData(cid, local_train, local_test))
    return FederatedData(clients, test, partition_stats(labels, parts))
