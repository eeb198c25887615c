"""The demo switched to MiniCPM-V or to a composed CLIP+Llama model with one ``--set``, run by
the CLI in-process and in NVIDIA FLARE's simulator: the same global tensors (LoRA and the
connector: lora+connector) after a round, so both engines train the same base model."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402

pytestmark = pytest.mark.slow

QUICKSTART = Path(__file__).parents[3] / "configs" / "quickstart.yaml"
#: The one --set that switches the demo to each model.
MODELS = {
    "minicpm-v": "model.name_or_path=tiny-minicpm-v",
    "compose": "model.compose={vision: tiny-clip-vision, language: tiny-llama}",
}
SMALL = [
    "model.device=cpu",
    "federation.num_clients=2",
    "federation.rounds=1",
    "finetune.strategy=lora+connector",
    "data.synthetic.train_samples=32",
    "data.synthetic.test_samples=8",
    "data.partition.min_samples=4",
    "train.batch_size=4",
    "train.local_steps=1",
    "eval.batch_size=8",
    "eval.centralized_baseline=false",
    "output.progress=false",
]


def _run(out: Path, name: str, *overrides: str) -> Path:
    args = ["run", str(QUICKSTART)]
    for item in (*SMALL, f"output.dir={out}", f"name={name}", *overrides):
        args += ["--set", item]
    assert main(args) == 0
    return out / name


@pytest.mark.parametrize("model", list(MODELS))
def test_one_set_switches_the_demo_and_both_engines_agree(model, tmp_path):
    inproc = _run(tmp_path, "inproc", MODELS[model])
    flare = _run(tmp_path, "flare", MODELS[model], "engine.name=nvflare", "engine.timeout=300")
    a = load_file(str(inproc / "checkpoints" / "last.safetensors"))
    b = load_file(str(flare / "checkpoints" / "last.safetensors"))
    shared = sorted(k for k in a if k.startswith("global/"))
    assert shared == sorted(k for k in b if k.startswith("global/"))
    assert any(".lora_" in k for k in shared) and any(".lora_" not in k for k in shared)  # LoRA + connector
    assert max((a[k] - b[k]).abs().max().item() for k in shared) <= 1e-5
    assert (flare / "adapter" / "adapter_model.safetensors").is_file()
