"""``fedumm sweep CONFIG --grid key=v1,v2 ... --seeds N [--jobs J]``: the grid × seeds as
separate runs into one sweep folder, then their comparison with mean ± std over seeds.

Every run of the plan is checked (``load_run_config``) before the first one starts, so a bad
value in the grid fails at once, naming the run. A run is ``fedumm run`` in a child process
(its own memory, its own torch threads: ``--jobs`` runs side by side share the cores), with
``output.dir`` = the sweep folder and ``output.name`` = the run's name; its output goes to
``logs/<name>.log``. The sweep is resumable: a run whose folder holds summary.json is done
and skipped; one that started and stopped is continued with ``fedumm run --resume``; the others
start. ``sweep.json`` records the plan, and a sweep folder refuses a different plan.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from fedumm.compare import (
    RunRow,
    group_rows,
    groups_csv,
    groups_markdown,
    read_run,
    rounds_to_target,
    write_comparison,
)
from fedumm.config import apply_overrides
from fedumm.errors import ConfigError
from fedumm.validation import load_run_config

PLAN_FILE = "sweep.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+,-]+")


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["federation.strategy.name=fedavg,fedprox", "train.lr=0.01,0.005"]`` -> keys with their
    values (each parsed as YAML, as ``--set`` does). A value holding a comma can be given as a
    YAML list: ``key=[[1,2],[3,4]]``."""
    grid: list[tuple[str, list[Any]]] = []
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected key.sub=value1,value2,...")
        if key in (k for k, _ in grid):
            raise ConfigError(f"--grid {key}: given twice; list all its values in one --grid")
        try:
            parsed = yaml.safe_load(raw) if raw.strip().startswith("[") else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {item!r}: not a valid YAML list ({exc})") from None
        if isinstance(parsed, list):
            values = parsed
        else:
            values = [apply_overrides({}, [f"v={part}"])["v"] for part in raw.split(",")]
        if not values:
            raise ConfigError(f"--grid {item!r}: no values")
        grid.append((key, values))
    return grid


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its folder name, the grid values it takes, its seed and overrides."""

    name: str
    params: dict[str, Any]
    seed: int
    overrides: list[str]


def _short(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def run_name(params: dict[str, Any], seed: int) -> str:
    """A folder name from the grid values: ``name=fedprox,lr=0.01-seed43``."""
    parts = [f"{_short(k)}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in params.items()]
    return _UNSAFE.sub("_", ",".join(parts)).strip("_.") + f"-seed{seed}" if parts else f"seed{seed}"


def plan_sweep(
    config: str | None, overrides: Sequence[str], grid: Sequence[tuple[str, list[Any]]], seeds: int, out: Path
) -> list[SweepRun]:
    """The runs of the sweep, each checked as ``fedumm run`` would check it. Seeds are the
    config's seed, +1, ... +``seeds``-1."""
    if seeds < 1:
        raise ConfigError(f"--seeds: must be at least 1, got {seeds}")
    base_seed = load_run_config(config, list(overrides)).seed
    keys = [k for k, _ in grid]
    runs: list[SweepRun] = []
    for values in itertools.product(*(v for _, v in grid)):
        params = dict(zip(keys, values))
        for seed in range(base_seed, base_seed + seeds):
            name = run_name(params, seed)
            run_overrides = [
                *overrides,
                *(f"{k}={json.dumps(v)}" for k, v in params.items()),
                f"seed={seed}",
                f"output.dir={json.dumps(str(out))}",
                f"output.name={json.dumps(name)}",
                "output.progress=false",
            ]
            try:
                load_run_config(config, run_overrides)
            except ConfigError as exc:
                raise ConfigError(f"sweep run {name}: {exc}") from None
            runs.append(SweepRun(name, params, seed, run_overrides))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError("--grid: two grid points give the same run name; make the values distinct")
    return runs


def check_plan(out: Path, config: str | None, runs: Sequence[SweepRun]) -> None:
    """Write ``sweep.json``, or check that the one already there describes the same runs."""
    plan = {"config": None if config is None else str(Path(config).resolve()), "runs": [asdict(r) for r in runs]}
    path = out / PLAN_FILE
    if path.is_file():
        try:
            earlier = json.loads(path.read_text())
        except ValueError as exc:
            raise ConfigError(f"sweep: {path} is not readable JSON ({exc}); choose another --out") from None
        if earlier != plan:
            raise ConfigError(
                f"sweep: {out} holds another sweep (its {PLAN_FILE} lists other runs or another config); "
                "choose another --out to start a new one"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan, indent=2) + "\n")


def run_state(out: Path, run: SweepRun) -> str:
    """done (summary.json), started (a run folder to continue) or new."""
    folder = out / run.name
    if (folder / "summary.json").is_file():
        return "done"
    return "started" if (folder / "config.yaml").is_file() else "new"


def command(config: str | None, out: Path, run: SweepRun, python: str = sys.executable) -> list[str]:
    """The ``fedumm run`` command line of ``run`` (``--resume`` where it started before)."""
    base = [python, "-m", "fedumm.cli", "run"]
    if run_state(out, run) == "started":
        return [*base, "--resume", str(out / run.name)]
    return [*base, *([config] if config else []), *(a for o in run.overrides for a in ("--set", o))]


def _child_env(jobs: int) -> dict[str, str]:
    env = dict(os.environ)
    if jobs > 1:  # runs side by side share the cores instead of each taking all of them
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    return env


@dataclass
class SweepResult:
    rows: list[RunRow]
    failed: dict[str, str]  # run name -> its log file
    skipped: list[str]


def run_sweep(
    config: str | None,
    runs: Sequence[SweepRun],
    out: Path,
    jobs: int = 1,
    log: Callable[[str], None] = print,
    python: str = sys.executable,
) -> SweepResult:
    """Run what is not done yet (``jobs`` at a time) and read every finished run back."""
    if jobs < 1:
        raise ConfigError(f"--jobs: must be at least 1, got {jobs}")
    check_plan(out, config, runs)
    (out / "logs").mkdir(exist_ok=True)
    skipped = [r.name for r in runs if run_state(out, r) == "done"]
    todo = [r for r in runs if r.name not in skipped]
    log(f"sweep {out}: {len(runs)} runs, {len(skipped)} done, {len(todo)} to run, {jobs} at a time")
    env = _child_env(jobs)
    failed: dict[str, str] = {}

    def one(run: SweepRun) -> tuple[SweepRun, int, float]:
        start = time.perf_counter()
        with (out / "logs" / f"{run.name}.log").open("a") as fh:
            code = subprocess.run(
                command(config, out, run, python), stdout=fh, stderr=subprocess.STDOUT, env=env, check=False
            ).returncode
        return run, code, time.perf_counter() - start

    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        futures = [pool.submit(one, run) for run in todo]
        for done, future in enumerate(as_completed(futures), start=1):
            run, code, seconds = future.result()
            status = "done" if code == 0 else f"FAILED (exit {code}; see logs/{run.name}.log)"
            if code != 0:
                failed[run.name] = str(out / "logs" / f"{run.name}.log")
            log(f"[{done}/{len(todo)}] {run.name}: {status} in {seconds:.1f}s")
    finally:
        # Interrupted: the runs not started yet never start (the next sweep picks them up).
        pool.shutdown(wait=True, cancel_futures=True)
    rows = [read_run(out / r.name, params={**r.params, "seed": r.seed}) for r in runs if run_state(out, r) == "done"]
    return SweepResult(rows, failed, skipped)


def write_sweep_tables(result: SweepResult, out: Path, target: float | None = None) -> str:
    """compare.md/.csv/.png (per run) and sweep.md/.csv (mean ± std over seeds); returns sweep.md."""
    if not result.rows:
        return ""
    # The runs were read without a target: count the rounds to this one now.
    rows = [replace(row, rounds_to_target=rounds_to_target(row.curve, target)) for row in result.rows]
    write_comparison(rows, out, target)
    groups = group_rows(rows, key=lambda row: {k: v for k, v in row.params.items() if k != "seed"})
    table = groups_markdown(groups, target)
    (out / "sweep.md").write_text(table)
    (out / "sweep.csv").write_text(groups_csv(groups))
    return table
