"""Acceptance of the crash-safe run folder: a job SIGKILLed at random instants and resumed with
``fedumm run --resume`` after each kill ends with the same final adapter, bit for bit, as the
uninterrupted run, for FedAvg, FedAdam (server optimiser state) and SCAFFOLD (client state).

Each strategy runs one chain in its own thread (they share the 2 cores, so the uninterrupted
reference is measured under the same load): the reference run gives the duration D; then every
kill starts ``fedumm run`` (while the run folder has no config.yaml yet) or ``fedumm run
--resume`` and SIGKILLs it after a delay drawn uniformly from [0, D) with a seeded RNG. A delay
past the process's end still counts (the process finished; the next start is a resume of a
finished run, which writes the adapter and summary again without training). Where each kill
landed (startup, mid-round, finishing, after the end) is read from the process's own log lines
and printed.
"""

from __future__ import annotations

import json
import os
import random
import signal
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
KILLS = 20  # in all, spread over the strategies
STRATEGIES = ("fedavg", "fedadam", "scaffold")
ROUNDS = 6  # rounds are ~0.3 s each against ~8 s of imports: enough of them that some kills land mid-round


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


def _env() -> dict[str, str]:
    # One thread per process: three chains share two cores, and every run computes alike.
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "fedumm.cli", *args], stdout=fh, stderr=subprocess.STDOUT, env=_env()
        )


def _where(log_text: str) -> str:
    """Where a killed process was: its log lines are the setup line, then one per round."""
    if "training rows over" not in log_text:
        return "startup"  # imports, data, model, reading the checkpoint, reopening the folder
    if f"round {ROUNDS}/{ROUNDS}:" in log_text or f"all {ROUNDS} rounds are done" in log_text:
        return "finishing"  # adapter, summary, plots
    return "mid-round"


def _chain(model_path: str, out: Path, strategy: str, kills: int, seed: int) -> dict:
    reference, killed = out / "reference", out / "killed"
    log = out / "logs"
    log.mkdir(parents=True)
    start = time.perf_counter()
    proc = _start(_job(model_path, out, "reference", strategy), log / "reference.txt")
    assert proc.wait(timeout=300) == 0, (log / "reference.txt").read_text()[-3000:]
    duration = time.perf_counter() - start

    rng = random.Random(seed)
    landed: Counter[str] = Counter()
    for number in range(kills + 1):  # the last start runs to its end
        fresh = not (killed / "config.yaml").is_file()
        args = _job(model_path, out, "killed", strategy) if fresh else ["run", "--resume", str(killed)]
        text_log = log / f"{number:02d}.txt"
        proc = _start(args, text_log)
        if number == kills:
            assert proc.wait(timeout=300) == 0, text_log.read_text()[-3000:]
            break
        try:
            code = proc.wait(timeout=rng.uniform(0, duration))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            landed[_where(text_log.read_text())] += 1
        else:
            assert code == 0, text_log.read_text()[-3000:]
            landed["after the end"] += 1
    return {"reference": reference, "killed": killed, "landed": landed, "duration": duration}


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_random_kills_and_resumes_end_with_the_uninterrupted_adapter(tmp_path, tiny_llava_path):
    # Prepare: kills spread over the strategies (7, 7, 6), each chain in its own thread.
    shares = {s: KILLS // len(STRATEGIES) + (i < KILLS % len(STRATEGIES)) for i, s in enumerate(STRATEGIES)}
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def work(strategy: str, seed: int) -> None:
        try:
            results[strategy] = _chain(tiny_llava_path, tmp_path / strategy, strategy, shares[strategy], seed)
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
        reference, killed = result["reference"], result["killed"]
        adapter = "adapter/adapter_model.safetensors"
        assert (killed / adapter).read_bytes() == (reference / adapter).read_bytes(), strategy
        straight, resumed = (_tensors(d / "checkpoints" / "last.safetensors") for d in (reference, killed))
        assert set(straight) == set(resumed) and all(torch.equal(straight[k], resumed[k]) for k in straight), strategy
        if strategy == "scaffold":
            assert any(k.startswith("client/") for k in resumed)  # the clients' c_i came through every kill
        records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
        expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in records] == list(range(ROUNDS + 1))
        assert [r["global"] for r in records] == [r["global"] for r in expected]
        leftovers = [p.name for d in (killed, killed / "checkpoints") for p in d.iterdir() if p.name.endswith(".tmp")]
        assert leftovers == [], strategy
        assert json.loads((killed / "summary.json").read_text())["rounds"] == ROUNDS
        total.update(result["landed"])
        print(f"{strategy}: run {result['duration']:.1f}s, kills landed {dict(result['landed'])}")
    print(f"{sum(total.values())} kills, {total['mid-round']} mid-round, {dict(total)}; {seconds:.0f}s in all")
    assert sum(total.values()) == KILLS
