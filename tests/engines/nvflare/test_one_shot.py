"""federation.mode: one_shot in NVIDIA FLARE's simulator: the same global adapter as in-process
(the one round runs through the same loop, the combiner on the server, YOCO's regularisers in the
sites' local training) and the same server-side references (ensemble, local floor)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedumm.engines.nvflare import simulate_nvflare  # noqa: E402
from fedumm.engines.simulation import simulate  # noqa: E402
from fedumm.strategies import STRATEGIES  # noqa: E402
from fedumm.validation import load_run_config  # noqa: E402

pytestmark = pytest.mark.slow


def _global(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith("global/")}


def _flat(value, prefix: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    return {prefix: value}


def _last_record(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(n for n, cls in STRATEGIES.items() if cls.modes == ("one_shot",)))
def test_flare_one_shot_gives_the_in_process_adapter(name, tiny_job, tmp_path):
    # Prepare: one round, every client trains its whole budget (local_steps) once
    job = ("federation.mode=one_shot", "federation.rounds=1", f"federation.strategy.name={name}")
    out = tmp_path / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the FLARE clients here
    try:
        simulate(load_run_config(None, tiny_job(out, "inproc", *job)))
    finally:
        torch.set_num_threads(threads)
    # Execute
    result = simulate_nvflare(
        load_run_config(None, tiny_job(out, "flare", *job, "engine.name=nvflare", "engine.timeout=300"))
    )
    # Assert
    flare, inproc = Path(result.run_dir), out / "inproc"
    a, b = _global(inproc), _global(flare)
    assert set(a) == set(b) and a
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) <= 1e-5
    ra, rb = _last_record(inproc), _last_record(flare)
    assert ra["round"] == rb["round"] == 1
    assert _flat(rb["one_shot"]["local_floor"]) == pytest.approx(_flat(ra["one_shot"]["local_floor"]))
    metric = ra["one_shot"]["metric"]
    assert rb["one_shot"]["ensemble"][metric] == pytest.approx(ra["one_shot"]["ensemble"][metric])
    assert rb["bytes"]["upload"] == ra["bytes"]["upload"]
    summaries = [json.loads((d / "summary.json").read_text())["one_shot"] for d in (flare, inproc)]
    assert _flat(summaries[0]) == pytest.approx(_flat(summaries[1]))
