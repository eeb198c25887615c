"""bench/gpu_train.py: its FLOP count by hand on two layers, and its CPU smoke mode end to end."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class _Backend:
    """Rows are 4-vectors; the loss is the mean output."""

    device = torch.device("cpu")

    def training_batch(self, rows):
        return {"x": torch.tensor([r["x"] for r in rows])}

    def to_device(self, batch):
        return batch

    def loss(self, model, batch):
        return model(batch["x"]).mean()


def _host(first_trains: bool):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model.requires_grad_(False)
    model[0 if first_trains else 1].requires_grad_(True)
    return SimpleNamespace(model=model, backend=_Backend())


@pytest.mark.parametrize(
    "first_trains, expected",
    [
        # Frozen 4x8 (forward only: 2*32*3) then trained 8x2 (forward + weight grad: 2*16*3*2).
        (False, 2 * 32 * 3 + 2 * 16 * 3 * 2),
        # Trained 4x8 (forward + weight grad: 2*32*3*2), then frozen 8x2 the gradient passes through
        # (forward + input grad: 2*16*3*2).
        (True, 2 * 32 * 3 * 2 + 2 * 16 * 3 * 2),
    ],
)
def test_step_flops_count_forward_input_and_weight_gradients_by_hand(first_trains, expected):
    rows = [{"x": [1.0, 2.0, 3.0, 4.0]}] * 3
    host = _host(first_trains)
    assert _bench().count_step_flops(host, rows) == expected
    assert all(p.grad is None for p in host.model.parameters())


def test_peak_flops_by_device_name_or_override():
    bench = _bench()
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", None) == 989.0
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3", 500.0) == 500.0
    assert bench.peak_tflops("Some GPU", None) is None


@pytest.mark.slow
def test_the_smoke_mode_prints_a_row_per_measurement(tmp_path):
    # Execute: the 2-layer blip-vqa-base-shaped model on the CPU, without and with checkpointing
    # (no K-client table: --clients with no counts).
    command = [
        sys.executable,
        str(SCRIPT),
        "--smoke",
        "--models",
        "blip-vqa-base",
        "--checkpointing",
        "both",
        "--clients",
    ]
    out = subprocess.run(
        [*command, "--json", str(tmp_path / "rows.json")], capture_output=True, text=True, timeout=1800, check=True
    ).stdout
    # Assert: one row per setting; the model FLOPs do not depend on checkpointing.
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["gradient_checkpointing"] for r in rows] == [False, True]
    assert all(r["model"] == "blip-vqa-base" and r["samples_per_s"] > 0 for r in rows)
    assert rows[0]["tflops_per_step"] == rows[1]["tflops_per_step"] > 0
    assert all(r["mfu"] is None for r in rows)  # no GPU peak on the CPU
    assert "QLoRA (4-bit) skipped" in out and "TFLOP/step" in out
