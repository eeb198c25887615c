"""Shared pieces of the NVIDIA FLARE engine tests: a tiny job (2 clients, 2 rounds, a few
steps on a few synthetic rows) that both engines run."""

from __future__ import annotations

import pytest


def tiny_overrides(model_path: str, out_dir, name: str, *extra: str) -> list[str]:
    return [
        f"name={name}",
        f"model.name_or_path={model_path}",
        "model.device=cpu",
        "federation.num_clients=2",
        "federation.rounds=2",
        "data.synthetic.train_samples=60",
        "data.synthetic.test_samples=16",
        "data.partition.min_samples=4",
        "train.batch_size=4",
        "train.local_steps=2",
        "eval.batch_size=16",
        "eval.centralized_baseline=false",
        "output.progress=false",
        f"output.dir={out_dir}",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_job(tiny_llava_path):
    """``tiny_job(out_dir, name, *overrides)`` -> the tiny job's override list."""

    def make(out_dir, name: str, *extra: str) -> list[str]:
        return tiny_overrides(tiny_llava_path, out_dir, name, *extra)

    return make
