"""Fixtures for the source tests: LLaVA conversations, and the shipped seed configs run on stand-in data."""

from __future__ import annotations

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
