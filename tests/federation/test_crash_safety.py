"""Acceptance of the crash-safe run folder: a job SIGKILLed at random instants and resumed with
``fedumm run --resume`` after each kill ends with the same final adapter, bit for bit, as the
uninterrupted run, for FedAvg, FedAdam (server optimiser state) and SCAFFOLD (client state).

Every run is a child process running ``fedumm.cli.main`` (what the ``fedumm`` command runs),
forked from a process that has already imported torch, transformers and fedumm, so a kill costs
the run (~2 s), not the ~8 s of imports. Each strategy has its own such process and chain, in a
thread: the uninterrupted reference run gives the duration D (measured under the same load);
then every step starts ``fedumm run`` (while the run folder has no config.yaml) or ``fedumm run
--resume`` and SIGKILLs it after a delay drawn uniformly from [0, D) with a seeded RNG. A delay
past the run's end still counts (the next step then resumes a finished run, which writes the
adapter and summary again without training). Where each kill landed (startup, mid-round,
finishing, after the end) is read from the run's own log lines and printed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

SRC = str(Path(__file__).resolve().parents[2] / "src")
KILLS = 20  # per strategy
STRATEGIES = ("fedavg", "fedadam", "scaffold")
ROUNDS = 6  # ~0.25 s each against ~3 s of loading: a fair share of kills lands mid-round

# The forking process: imports once, then per request forks a child that runs the CLI with its
# output in a log file, and kills it after the delay (null: waits for it); answers one JSON line.
FORKER = r"""
import json, os, signal, sys, time, traceback
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, peft, transformers
import transformers.models.llava.modeling_llava
import fedumm.cli, fedumm.engines.simulation, fedumm.models.hf_vlm
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        code = 1
        try:
            code = fedumm.cli.main(request["args"])
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    start = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            reply = {"exit": os.waitstatus_to_exitcode(status)}
            break
        elapsed = time.monotonic() - start
        if elapsed >= (300 if request["delay"] is None else request["delay"]):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            reply = {"killed": True} if request["delay"] is not None else {"exit": "hung for 300 s"}
            break
        time.sleep(0.002)
    reply["seconds"] = time.monotonic() - start
    print(json.dumps(reply), flush=True)
"""


def _job(model_path: str, out: Path, name: str, strategy: str) -> list[str]:
    sets = [
        f"name={name}",
        f"model.name_or_path={model_path}",
        "model.device=cpu",
        "model.max_new_tokens=2",
        "federation.num_clients=2",
        f"federation.rounds={ROUNDS}",
        f"federation.strategy.name={strategy}",
        "data.synthetic.train_samples=24",
        "data.synthetic.test_samples=4",
        "data.partition.min_samples=4",
        "train.batch_size=4",
        "train.local_steps=2",
        "eval.clients=false",
        "eval.max_samples=2",
        "eval.centralized_baseline=false",
        "output.progress=true",  # the round lines tell where a kill landed
        f"output.dir={out}",
        "output.overwrite=true",  # a fresh start over a folder killed before its config.yaml
    ]
    return ["run", *[arg for item in sets for arg in ("--set", item)]]


class Forker:
    def __init__(self):
        # One thread per process: three chains share two cores, and every run computes alike.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", FORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self._reply() == "ready"

    def _reply(self):
        line = self.proc.stdout.readline()
        assert line, "the forking process died"
        return json.loads(line)

    def run(self, args: list[str], log: Path, delay: float | None) -> dict:
        self.proc.stdin.write(json.dumps({"args": args, "log": str(log), "delay": delay}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def _where(log_text: str) -> str:
    """Where a killed run was: its log lines are the setup line, then one per round."""
    if "training rows over" not in log_text:
        return "startup"  # data, model, reading the checkpoint, reopening the folder
    if f"round {ROUNDS}/{ROUNDS}:" in log_text or f"all {ROUNDS} rounds are done" in log_text:
        return "finishing"  # adapter, summary, plots
    return "mid-round"


def _chain(model_path: str, out: Path, strategy: str, seed: int) -> dict:
    """The reference run, then KILLS kill instants. A run that ends before its instant ends its
    life: the next instant starts a fresh run folder, so kills keep landing in training."""
    logs = out / "logs"
    logs.mkdir(parents=True)
    forker = Forker()
    try:
        reply = forker.run(_job(model_path, out, "reference", strategy), logs / "reference.txt", None)
        assert reply["exit"] == 0, (logs / "reference.txt").read_text()[-3000:]
        duration = reply["seconds"]
        rng = random.Random(seed)
        landed: Counter[str] = Counter()
        lives: list[Path] = []
        for number in range(KILLS + 1):  # after the last instant, the current run runs to its end
            target = out / f"killed-{len(lives)}"
            if number == KILLS and not target.exists():
                break
            fresh = not (target / "config.yaml").is_file()
            args = _job(model_path, out, target.name, strategy) if fresh else ["run", "--resume", str(target)]
            log = logs / f"{number:02d}.txt"
            reply = forker.run(args, log, rng.uniform(0, duration) if number < KILLS else None)
            if reply.get("killed"):
                landed[_where(log.read_text())] += 1
                continue
            assert reply["exit"] == 0, log.read_text()[-3000:]
            if number < KILLS:
                landed["after the end"] += 1
            lives.append(target)
    finally:
        forker.close()
    return {"reference": out / "reference", "lives": lives, "landed": landed, "duration": duration}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_random_kills_and_resumes_end_with_the_uninterrupted_adapter(tmp_path, tiny_llava_path):
    # Prepare: one chain per strategy, each in its own thread.
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def work(strategy: str, seed: int) -> None:
        try:
            results[strategy] = _chain(tiny_llava_path, tmp_path / strategy, strategy, seed)
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    # Execute
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=(s, 1000 + i)) for i, s in enumerate(STRATEGIES)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    seconds = time.perf_counter() - started

    # Assert: per strategy, the final adapter and checkpoint equal the uninterrupted run's, bit for bit.
    total: Counter[str] = Counter()
    for strategy in STRATEGIES:
        result = results[strategy]
        reference = result["reference"]
        adapter = "adapter/adapter_model.safetensors"
        straight = _tensors(reference / "checkpoints" / "last.safetensors")
        expected = [json.loads(line)["global"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
        assert result["lives"], strategy
        for killed in result["lives"]:
            assert (killed / adapter).read_bytes() == (reference / adapter).read_bytes(), killed
            resumed = _tensors(killed / "checkpoints" / "last.safetensors")
            assert set(straight) == set(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight)
            if strategy == "scaffold":
                assert any(k.startswith("client/") for k in resumed)  # the clients' c_i came through every kill
            records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
            assert [r["round"] for r in records] == list(range(ROUNDS + 1))
            assert [r["global"] for r in records] == expected
            leftovers = [p for d in (killed, killed / "checkpoints") for p in d.iterdir() if p.name.endswith(".tmp")]
            assert leftovers == [], killed
            assert json.loads((killed / "summary.json").read_text())["rounds"] == ROUNDS
        total.update(result["landed"])
        print(
            f"{strategy}: run {result['duration']:.1f}s, {len(result['lives'])} runs ended equal to it; "
            f"kills landed {dict(result['landed'])}"
        )
    print(f"{sum(total.values())} kills, {total['mid-round']} mid-round, {dict(total)}; {seconds:.0f}s in all")
    assert sum(total.values()) == KILLS * len(STRATEGIES)
