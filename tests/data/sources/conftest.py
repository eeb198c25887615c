"""Fixtures for the source tests: LLaVA conversations, and the shipped seed configs run on stand-in data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

_TINY_RUN = [
    "model.device=cpu",
    "model.dtype=float32",
    "model.gradient_checkpointing=false",
    "federation.rounds=1",
    "train.local_steps=1",
    "train.batch_size=4",
    "train.precision=fp32",
    "eval.centralized_baseline=false",
    "eval.max_samples=null",
    "output.progress=false",
]


@pytest.fixture()
def conversation() -> Callable[..., list[dict]]:
    """LLaVA turns from (question, answer) pairs: human, gpt, human, gpt, ..."""

    def turns(*pairs: tuple[str, str]) -> list[dict]:
        out = []
        for question, answer in pairs:
            out += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
        return out

    return turns


@pytest.fixture()
def configs_dir() -> Path:
    """The repository's shipped configs/ folder."""
    return Path(__file__).resolve().parents[3] / "configs"


@pytest.fixture()
def run_seed_config(configs_dir: Path) -> Callable[..., tuple]:
    """Run a shipped config (tiny model, one round, CPU) in simulation: returns (config, result)."""

    def run(name: str, tmp_path: Path, tiny_model: str, *overrides: str) -> tuple:
        # Imported here: the simulation engine (torch, transformers) is only needed by the slow tests.
        from fedumm.config import load_config
        from fedumm.engines.simulation import simulate

        config = load_config(
            configs_dir / name,
            [f"model.name_or_path={tiny_model}", *_TINY_RUN, f"output.dir={tmp_path / 'runs'}", *overrides],
        )
        return config, simulate(config)

    return run


@pytest.fixture()
def partition_seed_config(configs_dir: Path, capsys) -> Callable[..., tuple[list[int], str]]:
    """``fedumm partition`` of a shipped config on stand-in data (``data.partition.min_samples=1``):
    returns (the clients' train sizes from partition.json, the command's stdout)."""
    from fedumm.cli import main

    def partition(name: str, tmp_path: Path, *overrides: str) -> tuple[list[int], str]:
        sets = [a for o in [*overrides, "data.partition.min_samples=1"] for a in ("--set", o)]
        code = main(["partition", str(configs_dir / name), *sets, "--out", str(tmp_path / "out")])
        assert code == 0, capsys.readouterr().err
        saved = json.loads((tmp_path / "out" / "partition.json").read_text())
        return saved["sizes"], capsys.readouterr().out

    return partition
