"""The same job in-process and in NVIDIA FLARE's simulator: the same global adapter (and server
state), the same run folder, bytes measured on FLARE's side; clients run through a wrapper
command as external processes (environment isolation) give the same result too; a client
process that dies ends the run with an error naming the site, leaving no process behind.

SCAFFOLD exercises everything a strategy can carry: server extras (the control variate c),
client state kept across rounds (c_i), client extras (delta c_i) and server state. The wrapper
run adds a server optimizer (FedAdam: its moments are server state) and partial participation
(2 of 3 clients a round).
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402
from fedumm.engines.nvflare import simulate_nvflare  # noqa: E402
from fedumm.engines.simulation import simulate  # noqa: E402
from fedumm.errors import ConfigError, FedummError  # noqa: E402
from fedumm.validation import load_run_config  # noqa: E402

pytestmark = pytest.mark.slow

STRATEGY = "federation.strategy.name=scaffold"


def _checkpoint(run_dir: Path) -> dict[str, torch.Tensor]:
    # The server's part: FLARE's sites keep their client state, the in-process checkpoint holds it too.
    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    return {k: v for k, v in tensors.items() if k.startswith(("global/", "server/"))}


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


def _simulate_in_process(config) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the FLARE clients here; more threads than free cores only spin
    try:
        simulate(config)
    finally:
        torch.set_num_threads(threads)


def _alive(procs) -> list:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_job):
    out = tmp_path_factory.mktemp("runs")
    _simulate_in_process(load_run_config(None, tiny_job(out, "inproc", STRATEGY)))
    # Through the CLI, as a user runs it; k = 1: the sites name every label, as partition.json does in-process.
    overrides = tiny_job(
        out, "flare", STRATEGY, "engine.name=nvflare", "engine.timeout=300", "engine.min_label_count=1"
    )
    assert main(["run", *(arg for o in overrides for arg in ("--set", o))]) == 0
    return out / "inproc", out / "flare", load_run_config(None, overrides)


def test_flare_simulator_reproduces_the_in_process_adapter(runs):
    inproc, flare, _ = runs
    a, b = _checkpoint(inproc), _checkpoint(flare)
    assert any(k.startswith("server/") for k in a)  # SCAFFOLD's server control variate
    assert _max_diff(a, b) <= 1e-5


def test_run_folder_matches_the_in_process_format(runs):
    inproc, flare, config = runs
    # Every file the in-process engine writes (plus summary.txt, which the CLI adds).
    expected = {str(p.relative_to(inproc)) for p in inproc.rglob("*") if p.is_file()} | {"summary.txt"}
    assert {
        "partition.json",
        "accuracy.png",
        "checkpoints/last.safetensors",
        "adapter/adapter_model.safetensors",
    } <= expected
    assert expected <= {str(p.relative_to(flare)) for p in flare.rglob("*") if p.is_file()}
    assert load_run_config(flare / "config.yaml") == config
    assert (flare / "partition.json").read_text() == (inproc / "partition.json").read_text()
    ours, theirs = _records(flare), _records(inproc)
    assert [(r["phase"], r["round"]) for r in ours] == [(r["phase"], r["round"]) for r in theirs]
    for mine, ref in zip(ours, theirs):
        # The in-process record, plus the whole FLARE messages of each round.
        extra = {"nvflare_bytes", "nvflare_bytes.download", "nvflare_bytes.upload", "nvflare_bytes.total"}
        assert _schema(mine) == _schema(ref) | (extra if mine["round"] else set())
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
    for key in (
        "majority_answer",
        "majority_baseline_accuracy",
        "partition_skew",
        "bytes_per_round",
        "adapter_message_bytes",
        "trainable_parameters",
        "federated_final_accuracy",
    ):
        assert summary[key] == reference[key], key
    # Whole FLARE messages: the payload plus FLARE's envelope, a little more, never the base model.
    payload = summary["adapter_message_bytes"]
    for record in ours[1:]:
        wire, sent = record["nvflare_bytes"], record["bytes"]
        assert set(wire["download"]) == set(wire["upload"]) == {"0", "1"}
        assert len(set(wire["download"].values())) == 1  # one message for every client
        for cid in ("0", "1"):
            assert sent["download"][cid] < wire["download"][cid] < sent["download"][cid] + 16_384
            assert sent["upload"][cid] < wire["upload"][cid] < sent["upload"][cid] + 16_384
        assert wire["total"] == sum(wire["download"].values()) + sum(wire["upload"].values())
    wire = summary["nvflare_message_bytes"]
    assert wire == {d: max(n for r in ours[1:] for n in r["nvflare_bytes"][d].values()) for d in ("download", "upload")}
    assert payload < wire["download"] < payload + 16_384
    assert "run folder:" in (flare / "summary.txt").read_text()


def test_adapter_loads_with_peft(runs, tiny_llava_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    _, flare, _ = runs
    loaded = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_llava_path), str(flare / "adapter")
    )
    state = {
        k.removeprefix("base_model.model.").replace(".default.", "."): p.detach()
        for k, p in loaded.named_parameters()
        if "lora_" in k
    }
    final = {k.removeprefix("global/"): v for k, v in _checkpoint(flare).items() if k.startswith("global/")}
    assert _max_diff(state, final) == 0.0


def test_existing_run_folder_is_refused_before_flare_starts(runs):
    _, _, config = runs
    with pytest.raises(ConfigError, match="already exists; set output.overwrite=true"):
        simulate_nvflare(config)


def test_clients_run_through_a_wrapper_command(tiny_job, tmp_path):
    """engine.client_command: each client's trainer is an external process started by a wrapper
    (as FedUMM's --use_env_script activates another environment). With FedAdam (server
    moments) and 2 of 3 clients sampled a round: the same adapter and server state as
    in-process."""
    job = (
        "federation.num_clients=3",
        "federation.fraction_fit=0.5",
        "federation.strategy.name=fedadam",
        "data.synthetic.train_samples=90",
    )
    _simulate_in_process(load_run_config(None, tiny_job(tmp_path / "runs", "inproc-adam", *job)))
    inproc = tmp_path / "runs" / "inproc-adam"
    calls = tmp_path / "calls.txt"
    wrapper = tmp_path / "launch_env.sh"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        "# would activate another environment here\n"
        f'echo "$$ $PWD $*" >> {shlex.quote(str(calls))}\n'
        f'exec {shlex.quote(sys.executable)} -u "$@"\n'
    )
    overrides = tiny_job(
        tmp_path / "runs",
        "wrapped",
        *job,
        "engine.name=nvflare",
        "engine.timeout=300",
        f"engine.client_command=bash {wrapper}",
    )
    result = simulate_nvflare(load_run_config(None, overrides))
    lines = calls.read_text().splitlines()
    assert len(lines) == 3  # one trainer per client, launched once for the whole job
    assert sorted(line.split()[1].rsplit("/", 1)[-1] for line in lines) == ["app_site-1", "app_site-2", "app_site-3"]
    assert all(line.endswith("custom/fedumm_client.py") for line in lines)
    flare, ref = _checkpoint(Path(result.run_dir)), _checkpoint(inproc)
    assert {k for k in ref if k.startswith("server/")}  # FedAdam's moments
    assert _max_diff(flare, ref) <= 1e-5
    sampled = [r["clients"] for r in _records(Path(result.run_dir))[1:]]
    assert sampled == [r["clients"] for r in _records(inproc)[1:]]
    assert [len(c) for c in sampled] == [2, 2]
    for record in _records(Path(result.run_dir))[1:]:
        assert sorted(record["nvflare_bytes"]["upload"]) == [str(c) for c in record["clients"]]


def _kill_workers_after_round_1(metrics: Path, sites: list[str], seen: dict, killed: list[float]) -> None:
    """Kill the simulator workers of ``sites`` once round 1's record is written, remembering every
    process of the run in ``seen``."""
    me = psutil.Process()
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        for p in me.children(recursive=True):
            seen.setdefault(p.pid, p)
        if metrics.is_file() and metrics.read_text().count("\n") >= 2:  # round 1 done
            victims = []
            for p in me.children(recursive=True):
                try:
                    cmd = p.cmdline()
                except psutil.NoSuchProcess:
                    continue
                if "nvflare.private.fed.app.simulator.simulator_worker" in cmd and set(sites) & set(cmd):
                    victims.append(p)
            assert len(victims) == len(sites), victims
            for victim in victims:
                victim.kill()
            killed.append(time.monotonic())
            return
        time.sleep(0.1)


def _start_killer(workspace: Path, sites: list[str]) -> tuple[threading.Thread, dict, list[float]]:
    seen: dict[int, psutil.Process] = {}
    killed: list[float] = []
    metrics = workspace / "simulator/server/simulate_job/fedumm_run/metrics.jsonl"
    killer = threading.Thread(target=_kill_workers_after_round_1, args=(metrics, sites, seen, killed), daemon=True)
    killer.start()
    return killer, seen, killed


def test_a_dead_client_is_missing_from_later_rounds_and_the_run_completes(tiny_job, tmp_path, capfd):
    """site-2's process dies after round 1: each later round waits federation.round_timeout for it,
    aggregates site-1's reply alone (min_fit_clients=1) and records site-2 as missing; the run
    completes with its run folder, and no process is left."""
    workspace = tmp_path / "ws"
    config = load_run_config(
        None,
        tiny_job(
            tmp_path / "runs",
            "one-dead",
            "federation.rounds=3",
            "federation.round_timeout=4",
            "engine.timeout=240",
            f"engine.workspace={workspace}",
            "engine.name=nvflare",
        ),
    )
    killer, seen, killed = _start_killer(workspace, ["site-2"])
    result = simulate_nvflare(config)
    ended = time.monotonic()
    killer.join(5)
    assert killed, "site-2's worker was never killed"
    assert ended - killed[0] < 2 * 4 + 30  # two rounds without site-2, each waiting 4 s for it
    records = _records(Path(result.run_dir))
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert set(records[1]["client_metrics"]) == {"0", "1"}
    for record in records[2:]:
        assert record["clients"] == [0, 1]  # still sampled: a site may come back
        assert set(record["client_metrics"]) == set(record["bytes"]["upload"]) == {"0"}
        assert set(record["nvflare_bytes"]["upload"]) == {"0"}
        assert record["missing"] == [1]  # the loop's record of the missing clients
    assert "client site-2's process died during the job" in capfd.readouterr().err
    assert (Path(result.run_dir) / "summary.json").is_file()
    assert len(seen) >= 3  # the simulator and its two workers
    assert not _alive(seen.values()) and not _alive(psutil.Process().children(recursive=True))


def test_a_dead_client_ends_the_run_when_every_round_needs_it(tiny_job, tmp_path):
    """min_fit_clients = num_clients: after site-2's process died no round has enough replies; the
    loop keeps the global model, and max_failed_rounds rounds later the run ends with one line
    naming the loop's error and the dead site."""
    workspace = tmp_path / "ws"
    config = load_run_config(
        None,
        tiny_job(
            tmp_path / "runs",
            "needs-both",
            "federation.rounds=30",
            "federation.min_fit_clients=2",
            "federation.max_failed_rounds=2",
            "federation.round_timeout=3",
            "engine.timeout=240",
            f"engine.workspace={workspace}",
            "engine.name=nvflare",
        ),
    )
    killer, seen, killed = _start_killer(workspace, ["site-2"])
    with pytest.raises(FedummError) as info:
        simulate_nvflare(config)
    ended = time.monotonic()
    killer.join(5)
    assert killed, "site-2's worker was never killed"
    assert ended - killed[0] < 2 * 3 + 30
    message = str(info.value)
    assert "\n" not in message and "AggregationError" in message
    assert "client site-2's process died during the job" in message
    run_folder = workspace / "simulator/server/simulate_job/fedumm_run"
    assert str(run_folder) in message
    assert len(_records(run_folder)) < 31 and not (run_folder / "summary.json").exists()
    assert not _alive(seen.values()) and not _alive(psutil.Process().children(recursive=True))
    assert not (tmp_path / "runs" / "needs-both").exists()


def test_a_simulator_whose_clients_all_died_ends_naming_them(tiny_job, tmp_path, monkeypatch):
    """Every client's process dies after round 1: no round can finish, so fedumm stops the simulator
    within seconds (not after rounds of federation.round_timeout) with every process it
    started, naming the sites. Temporary files of the FLARE processes stay in the workspace."""
    outer_tmp = tmp_path / "outer-tmp"
    outer_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(outer_tmp))  # the FLARE processes must not use it
    workspace = tmp_path / "ws"
    config = load_run_config(
        None,
        tiny_job(
            tmp_path / "runs",
            "killed",
            "federation.rounds=30",
            "federation.round_timeout=600",
            "engine.timeout=240",
            f"engine.workspace={workspace}",
            "engine.name=nvflare",
        ),
    )
    killer, seen, killed = _start_killer(workspace, ["site-1", "site-2"])
    with pytest.raises(FedummError) as info:
        simulate_nvflare(config)
    ended = time.monotonic()
    killer.join(5)
    assert killed, "the workers were never killed"
    assert ended - killed[0] < 30
    message = str(info.value)
    assert "\n" not in message and "every client's process died" in message
    assert "client site-1's process died" in message and "client site-2's process died" in message
    run_folder = workspace / "simulator/server/simulate_job/fedumm_run"
    assert str(run_folder) in message
    assert [r["round"] for r in _records(run_folder)][:2] == [0, 1]  # what was finished stays
    assert len(seen) >= 3  # the simulator and its two workers
    assert not _alive(seen.values()) and not _alive(psutil.Process().children(recursive=True))
    assert not list(outer_tmp.iterdir())
    assert (workspace / "tmp").is_dir()
    assert not (tmp_path / "runs" / "killed").exists()


def test_a_dp_run_gives_the_same_epsilon_and_adapter_on_flare(tiny_job, tmp_path):
    """Client-level DP-FedAvg (Poisson sampling, adaptive clipping, central noise drawn from the
    run seed): the FLARE simulator samples the same clients, adds the same noise and spends the
    same budget as the in-process engine."""
    job = (
        "federation.num_clients=3",
        "federation.fraction_fit=0.7",
        "privacy.level=client",
        "privacy.noise_multiplier=0.8",
        "privacy.clip_norm=adaptive",
        "privacy.clipped_count_stddev=1",
        "privacy.seeded_noise=true",
        "data.synthetic.train_samples=90",
    )
    out = tmp_path / "runs"
    _simulate_in_process(load_run_config(None, tiny_job(out, "inproc-dp", *job)))
    result = simulate_nvflare(
        load_run_config(None, tiny_job(out, "flare-dp", *job, "engine.name=nvflare", "engine.timeout=300"))
    )
    flare, inproc = Path(result.run_dir), out / "inproc-dp"
    assert {k for k in _checkpoint(inproc) if k.startswith("server/privacy/")}  # the bound and the rounds
    assert _max_diff(_checkpoint(flare), _checkpoint(inproc)) <= 1e-5
    a, b = _records(flare)[1:], _records(inproc)[1:]
    assert [r["clients"] for r in a] == [r["clients"] for r in b]
    assert [r["privacy"]["epsilon"] for r in a] == pytest.approx([r["privacy"]["epsilon"] for r in b])
    summary = json.loads((flare / "summary.json").read_text())["privacy"]
    assert summary["epsilon"] == pytest.approx(b[-1]["privacy"]["epsilon"]) and summary["sample_rate"] == 0.7


def test_a_compressed_run_with_error_feedback_gives_the_same_adapter_and_bytes_on_flare(tiny_job, tmp_path):
    """int8 updates with error feedback: the sites encode with the same seeded stochastic rounding
    and keep their residuals across rounds in their state file; the server decodes the same
    deltas, so the adapter and every recorded upload match the in-process run."""
    job = ("federation.compression.codec=int8", "federation.compression.error_feedback=true")
    out = tmp_path / "runs"
    _simulate_in_process(load_run_config(None, tiny_job(out, "inproc-int8", *job)))
    result = simulate_nvflare(
        load_run_config(None, tiny_job(out, "flare-int8", *job, "engine.name=nvflare", "engine.timeout=300"))
    )
    flare, inproc = Path(result.run_dir), out / "inproc-int8"
    assert _max_diff(_checkpoint(flare), _checkpoint(inproc)) <= 1e-5
    a, b = _records(flare)[1:], _records(inproc)[1:]
    assert [r["bytes"]["upload"] for r in a] == [r["bytes"]["upload"] for r in b]
    assert all("rejected" not in r for r in a)
