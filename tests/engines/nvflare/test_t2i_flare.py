"""The text-to-image quickstart (configs/t2i_quickstart.yaml: tiny Janus, synthetic t2i rows)
for 2 rounds, in-process and in NVIDIA FLARE's simulator: the same global adapter (LoRA and the
generation head) within 1e-5, and both write the final round's images in GenEval's layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402
from fedumm.data.geneval import read_geneval_layout  # noqa: E402

pytestmark = pytest.mark.slow

T2I_QUICKSTART = Path(__file__).parents[3] / "configs" / "t2i_quickstart.yaml"
SMALL = [
    "model.device=cpu",
    "federation.num_clients=2",
    "federation.rounds=2",
    "data.synthetic.train_samples=32",
    "data.synthetic.test_samples=6",
    "data.partition.min_samples=4",
    "train.batch_size=4",
    "train.local_steps=2",
    "eval.batch_size=6",
    "eval.centralized_baseline=false",
    "output.progress=false",
]


def _run(out: Path, name: str, *overrides: str) -> Path:
    args = ["run", str(T2I_QUICKSTART)]
    for item in (*SMALL, f"output.dir={out}", f"name={name}", *overrides):
        args += ["--set", item]
    assert main(args) == 0
    return out / name


def test_flare_runs_the_t2i_quickstart_with_the_in_process_adapter(tmp_path: Path) -> None:
    # Execute
    inproc = _run(tmp_path, "inproc")
    flare = _run(tmp_path, "flare", "engine.name=nvflare", "engine.timeout=300")
    # Assert: the same global tensors (LoRA and gen_head) after round 2, and the same round-2 score.
    a = load_file(str(inproc / "checkpoints" / "last.safetensors"))
    b = load_file(str(flare / "checkpoints" / "last.safetensors"))
    shared = sorted(k for k in a if k.startswith("global/"))
    assert shared == sorted(k for k in b if k.startswith("global/"))
    assert any(".lora_" in k for k in shared) and any("generation_head" in k and ".lora_" not in k for k in shared)
    assert max((a[k] - b[k]).abs().max().item() for k in shared) <= 1e-5
    records = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (inproc, flare)]
    assert [r["round"] for r in records[1]] == [0, 1, 2]
    for key in ("geneval_overall", "image_token_accuracy", "vq_ceiling"):
        assert records[1][-1]["global"][key] == pytest.approx(records[0][-1]["global"][key], abs=1e-6)
    folders = read_geneval_layout(flare / "geneval" / "final")
    assert [f.index for f in folders] == list(range(6)) and all(len(f.samples) == 1 for f in folders)
