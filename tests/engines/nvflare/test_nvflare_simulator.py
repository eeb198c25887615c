"""The same job in-process and in NVIDIA FLARE's simulator: the same global adapter (and server
state), the same run folder, bytes measured on FLARE's side; clients run through a wrapper
command as external processes (environment isolation) give the same result too.

SCAFFOLD exercises everything a strategy can carry: server extras (the control variate c),
client state kept across rounds (c_i), client extras (delta c_i) and server state.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402
from fedumm.config import load_config  # noqa: E402
from fedumm.engines.nvflare import simulate_nvflare  # noqa: E402
from fedumm.engines.simulation import simulate  # noqa: E402
from fedumm.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.slow

STRATEGY = "federation.strategy.name=scaffold"


def _checkpoint(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / "last.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _schema(record: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in record.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and key not in ("upload", "download", "client_metrics", "by_answer_type"):
            keys |= _schema(value, f"{prefix}{key}.")
    return keys


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_job):
    out = tmp_path_factory.mktemp("runs")
    in_process = load_config(None, tiny_job(out, "inproc", STRATEGY))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the FLARE clients here; more threads than free cores only spin
    try:
        simulate(in_process)
    finally:
        torch.set_num_threads(threads)
    # Through the CLI, as a user runs it.
    overrides = tiny_job(out, "flare", STRATEGY, "engine.name=nvflare", "engine.timeout=300")
    assert main(["run", *(arg for o in overrides for arg in ("--set", o))]) == 0
    return out / "inproc", out / "flare", load_config(None, overrides)


def test_flare_simulator_reproduces_the_in_process_adapter(runs):
    inproc, flare, _ = runs
    a, b = _checkpoint(inproc), _checkpoint(flare)
    assert any(k.startswith("server/") for k in a)  # SCAFFOLD's server control variate
    assert _max_diff(a, b) <= 1e-5


def test_run_folder_matches_the_in_process_format(runs):
    inproc, flare, config = runs
    # Every file the in-process engine writes (plus summary.txt, which the CLI adds).
    expected = {str(p.relative_to(inproc)) for p in inproc.rglob("*") if p.is_file()} | {"summary.txt"}
    assert {"partition.json", "accuracy.png", "checkpoints/last.safetensors", "adapter/adapter_model.safetensors"} <= expected
    assert expected <= {str(p.relative_to(flare)) for p in flare.rglob("*") if p.is_file()}
    assert load_config(flare / "config.yaml") == config
    assert (flare / "partition.json").read_text() == (inproc / "partition.json").read_text()
    ours, theirs = _records(flare), _records(inproc)
    assert [(r["phase"], r["round"]) for r in ours] == [(r["phase"], r["round"]) for r in theirs]
    for mine, ref in zip(ours, theirs):
        assert _schema(mine) == _schema(ref)
        if mine["round"]:
            assert mine["clients"] == ref["clients"] == [0, 1]
            assert mine["bytes"] == ref["bytes"]  # payload sizes, measured where FLARE hands them over
            for cid, metrics in mine["client_metrics"].items():
                assert set(metrics) == set(ref["client_metrics"][cid])
                assert metrics["num_samples"] == ref["client_metrics"][cid]["num_samples"]
                assert metrics["train_loss"] == pytest.approx(ref["client_metrics"][cid]["train_loss"], abs=1e-5)
        assert mine["global"]["vqa_accuracy"] == ref["global"]["vqa_accuracy"]
    summary = json.loads((flare / "summary.json").read_text())
    reference = json.loads((inproc / "summary.json").read_text())
    assert set(reference) - {"run_dir"} <= set(summary)
    assert summary["engine"] == "nvflare" and summary["run_dir"] == str(flare)
    for key in ("majority_answer", "majority_baseline_accuracy", "partition_skew", "bytes_per_round",
                "adapter_message_bytes", "trainable_parameters", "federated_final_accuracy"):
        assert summary[key] == reference[key], key
    # Whole FLARE messages: the payload plus FLARE's envelope, a little more, never the base model.
    wire = summary["nvflare_message_bytes"]
    payload = summary["adapter_message_bytes"]
    assert payload < wire["download"] < payload + 16_384 and payload < wire["upload"] < payload + 16_384
    assert "run folder:" in (flare / "summary.txt").read_text()


def test_adapter_loads_with_peft(runs, tiny_llava_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    _, flare, _ = runs
    loaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(tiny_llava_path),
                                       str(flare / "adapter"))
    state = {k.removeprefix("base_model.model.").replace(".default.", "."): p.detach()
             for k, p in loaded.named_parameters() if "lora_" in k}
    final = {k.removeprefix("global/"): v for k, v in _checkpoint(flare).items() if k.startswith("global/")}
    assert _max_diff(state, final) == 0.0


def test_existing_run_folder_is_refused_before_flare_starts(runs):
    _, _, config = runs
    with pytest.raises(ConfigError, match="already exists; set output.overwrite=true"):
        simulate_nvflare(config)


def test_clients_run_through_a_wrapper_command(runs, tiny_job, tmp_path):
    """engine.client_command: each client's trainer is an external process started by a wrapper
    (as FedUMM's --use_env_script activates another environment); same adapter as in-process."""
    inproc, _, _ = runs
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "launch_env.sh"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        "# would activate another environment here\n"
        f'echo "$$ $PWD $*" >> {shlex.quote(str(calls))}\n'
        f'exec {shlex.quote(sys.executable)} -u "$@"\n'
    )
    overrides = tiny_job(tmp_path / "runs", "wrapped", STRATEGY, "engine.name=nvflare", "engine.timeout=300",
                         f"engine.client_command=bash {wrapper}")
    result = simulate_nvflare(load_config(None, overrides))
    lines = calls.read_text().splitlines()
    assert len(lines) == 2  # one trainer per client, launched once for the whole job
    assert sorted(line.split()[1].rsplit("/", 1)[-1] for line in lines) == ["app_site-1", "app_site-2"]
    assert all(line.endswith("custom/fedumm_client.py") for line in lines)
    assert _max_diff(_checkpoint(Path(result.run_dir)), _checkpoint(inproc)) <= 1e-5
