"""Tests for the synthetic source (fedumm.data.sources.synthetic): the default data config."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fedumm.config import load_config
from fedumm.data.config import DataConfig
from fedumm.data.federated import build_federated_data
from fedumm.data.modality import BOTH, modality_of
from fedumm.errors import ConfigError


def test_synthetic_default_unchanged_by_new_sections() -> None:
    # Prepare / Execute
    config = DataConfig()
    data = build_federated_data(
        DataConfig.model_validate({"synthetic": {"train_samples": 80, "test_samples": 8}}), num_clients=2, seed=0
    )
    # Assert: the defaults stay the synthetic Dirichlet(0.5) job without modality changes.
    assert (config.source, config.partition.method, config.partition.alpha) == ("synthetic", "dirichlet", 0.5)
    assert (config.modality.scenario, config.hf.on_error) == ("none", "raise")
    assert data.skipped_rows == 0 and sum(data.partition.sizes) == 80
    assert all(modality_of(r) == BOTH for r in data.pooled_train)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["data.synthetic.task=gen"], "data.synthetic.task: must be one of 'vqa' or 't2i' (got 'gen')"),
        (["data.synthetic.t2i_tags={shapes: 1}"], "data.synthetic.t2i_tags: unknown tag(s) ['shapes']"),
        (["data.synthetic.t2i_tags={colors: 0}"], "data.synthetic.t2i_tags: weights must be >= 0 with one >= 1"),
        (
            ["data.synthetic.task=t2i", "data.synthetic.max_count=1"],
            "data.synthetic.max_count: must be >= 2 for t2i counting prompts (got 1)",
        ),
        (
            ["data.synthetic.task=t2i", "data.synthetic.max_count=6"],
            "data.synthetic.max_count: 6 shapes do not fit a 32 px t2i scene (at most 4)",
        ),
    ],
)
def test_t2i_keys_fail_naming_the_key(overrides: list[str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert fragment in str(info.value)


def test_t2i_rows_split_by_colour_with_dirichlet() -> None:
    # Prepare: 240 t2i rows (6 colours), 4 clients, Dirichlet(0.1) over the colour column.
    config = DataConfig.model_validate(
        {
            "synthetic": {"task": "t2i", "train_samples": 240, "test_samples": 12, "t2i_tags": {"colors": 1}},
            "partition": {"label_column": "color", "alpha": 0.1, "min_samples": 4},
            "local_test_fraction": 0,
        }
    )
    iid = config.model_copy(update={"partition": config.partition.model_copy(update={"method": "iid"})})
    # Execute
    skewed = build_federated_data(config, num_clients=4, seed=0)
    even = build_federated_data(iid, num_clients=4, seed=0)

    # Assert: every row is t2i; with alpha 0.1 each client is dominated by few colours, far more
    # than under IID (where a client's top colour holds about 1/6 of its rows).
    def top_share(data) -> float:
        shares = []
        for rows in (c.train for c in data.clients):
            counts = Counter(r["color"] for r in rows)
            shares.append(max(counts.values()) / len(rows))
        return float(np.mean(shares))

    assert all(r["task"] == "t2i" for r in skewed.pooled_train) and len(skewed.global_test) == 12
    assert sum(skewed.partition.sizes) == 240
    assert top_share(skewed) > 0.5 > 0.3 > top_share(even)


def test_task_mix_gives_that_share_of_t2i_rows_each_tagged() -> None:
    config = DataConfig.model_validate({"synthetic": {"train_samples": 50, "test_samples": 11, "task_mix": 0.3}})
    data = build_federated_data(config.model_copy(update={"local_test_fraction": 0.0}), num_clients=1, seed=1)
    train = data.clients[0].train
    # round(0.3 * 50) = 15 t2i rows, the other 35 vqa rows; the test split: round(0.3 * 11) = 3.
    assert Counter(r["task"] for r in train) == {"vqa": 35, "t2i": 15}
    assert Counter(r["task"] for r in data.global_test) == {"vqa": 8, "t2i": 3}
    assert all(r["prompt"] and r["geneval"]["tag"] for r in train if r["task"] == "t2i")
    assert all(r["question"] and r["multiple_choice_answer"] for r in train if r["task"] == "vqa")
