import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedumm.compare import RunRow
from fedumm.errors import ConfigError
from fedumm.sweep import (
    SweepResult,
    SweepRun,
    check_plan,
    command,
    parse_grid,
    plan_sweep,
    run_name,
    run_state,
    write_sweep_tables,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")
# The tiny default, small enough for a few seconds a run.
TINY = [
    "model.device=cpu",
    "model.max_new_tokens=2",
    "federation.num_clients=2",
    "federation.rounds=2",
    "data.synthetic.train_samples=40",
    "data.synthetic.test_samples=8",
    "data.partition.min_samples=4",
    "train.batch_size=4",
    "train.local_steps=1",
    "eval.clients=false",
    "eval.centralized_baseline=false",
]


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        (["federation.strategy.name=fedavg,fedprox"], [("federation.strategy.name", ["fedavg", "fedprox"])]),
        (["train.lr=0.01,0.005", "seed=1"], [("train.lr", [0.01, 0.005]), ("seed", [1])]),
        (["adapter.r=[4, 8]"], [("adapter.r", [4, 8])]),
        (["data.modality.scenario=none,null,true"], [("data.modality.scenario", ["none", None, True])]),
    ],
)
def test_grid_values_are_parsed_as_yaml(items, expected):
    assert parse_grid(items) == expected


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        (["train.lr"], "expected key.sub=value1,value2"),
        (["=1,2"], "expected key.sub=value1,value2"),
        (["train.lr="], "expected key.sub=value1,value2"),
        (["seed=1", "seed=2"], "--grid seed: given twice"),
        (["adapter.r=[4, "], "not a valid YAML list"),
    ],
)
def test_bad_grids_are_one_line_errors(items, fragment):
    with pytest.raises(ConfigError) as info:
        parse_grid(items)
    assert fragment in str(info.value)


def test_run_names_are_single_folder_names():
    assert run_name({"federation.strategy.name": "fedprox", "train.lr": 0.01}, 43) == "name=fedprox,lr=0.01-seed43"
    assert run_name({"data.root": "/a b/../c"}, 1) == "root=_a_b_.._c-seed1"
    assert run_name({}, 7) == "seed7"


def test_the_plan_is_grid_times_seeds_and_each_run_is_checked(tmp_path):
    runs = plan_sweep(None, TINY, parse_grid(["federation.strategy.name=fedavg,fedprox"]), 2, tmp_path)
    assert [r.name for r in runs] == [
        "name=fedavg-seed42",
        "name=fedavg-seed43",
        "name=fedprox-seed42",
        "name=fedprox-seed43",
    ]
    assert f"output.dir={json.dumps(str(tmp_path))}" in runs[0].overrides
    with pytest.raises(ConfigError, match=r"sweep run name=nope-seed42: .*unknown strategy 'nope'"):
        plan_sweep(None, TINY, parse_grid(["federation.strategy.name=fedavg,nope"]), 1, tmp_path)
    with pytest.raises(ConfigError, match="--seeds: must be at least 1"):
        plan_sweep(None, TINY, [], 0, tmp_path)


def test_a_sweep_folder_refuses_another_plan(tmp_path):
    one = [SweepRun("a-seed1", {"x": 1}, 1, ["x=1"])]
    check_plan(tmp_path, None, one)
    check_plan(tmp_path, None, one)  # the same plan again: resumable
    with pytest.raises(ConfigError, match="holds another sweep"):
        check_plan(tmp_path, None, [SweepRun("b-seed1", {"x": 2}, 1, ["x=2"])])


def test_started_runs_resume_and_new_runs_start(tmp_path):
    run = SweepRun("r-seed1", {}, 1, ["seed=1"])
    assert run_state(tmp_path, run) == "new"
    assert command("c.yaml", tmp_path, run, "py")[-3:] == ["c.yaml", "--set", "seed=1"]
    (tmp_path / "r-seed1").mkdir()
    (tmp_path / "r-seed1" / "config.yaml").write_text("x")
    assert run_state(tmp_path, run) == "started"
    assert command("c.yaml", tmp_path, run, "py") == [
        "py",
        "-m",
        "fedumm.cli",
        "run",
        "--resume",
        str(tmp_path / "r-seed1"),
    ]
    (tmp_path / "r-seed1" / "summary.json").write_text("{}")
    assert run_state(tmp_path, run) == "done"


def _sweep_command(out: Path) -> list[str]:
    args = [sys.executable, "-m", "fedumm.cli", "sweep", "configs/quickstart.yaml"]
    args += [a for o in TINY for a in ("--set", o)]
    return args + ["--grid", "federation.strategy.name=fedavg,fedprox", "--seeds", "2", "--out", str(out)]


@pytest.mark.slow
def test_an_interrupted_sweep_finishes_only_the_missing_runs(tmp_path):
    # Prepare: start the 2 x 2 sweep and interrupt it (Ctrl-C to its process group) once a run is done.
    env = {**os.environ, "PYTHONPATH": SRC, "FEDUMM_CACHE": os.environ.get("FEDUMM_CACHE", "")}
    env = {k: v for k, v in env.items() if v}
    out = tmp_path / "sweep"
    root = Path(__file__).resolve().parents[1]
    first = subprocess.Popen(
        _sweep_command(out),
        cwd=root,
        env=env,
        start_new_session=True,
        # A shell's background job (nohup ... &) starts with SIGINT ignored, and children inherit that.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 600
    while not list(out.glob("*/summary.json")) and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)
    first_out, _ = first.communicate(timeout=120)
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/summary.json")}
    assert 1 <= len(done_before) < 4, first_out

    # Execute: the same command again.
    second = subprocess.run(_sweep_command(out), cwd=root, env=env, capture_output=True, text=True, timeout=900)

    # Assert: the finished runs were skipped (untouched), the rest ran, the table has both strategies.
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"4 runs, {len(done_before)} done, {4 - len(done_before)} to run" in second.stdout
    for name, mtime in done_before.items():
        assert (out / name / "summary.json").stat().st_mtime_ns == mtime
    assert len(list(out.glob("*/summary.json"))) == 4
    table = (out / "sweep.md").read_text()
    assert "| fedavg | 2 | vqa_accuracy |" in table and "| fedprox | 2 | vqa_accuracy |" in table
    assert len((out / "compare.csv").read_text().splitlines()) == 5


def test_the_sweep_table_counts_rounds_to_the_target_over_seeds(tmp_path):
    # Prepare: two seeds of one grid point, read without a target (as run_sweep reads them).
    def row(seed, curve):
        return RunRow(
            run=f"lr=0.1-seed{seed}",
            path=tmp_path,
            metric="vqa_accuracy",
            final=curve[-1][1],
            best=max(v for _, v in curve[1:]),
            best_round=0,
            rounds_to_target=None,
            bytes=100,
            seconds=1.0,
            epsilon=None,
            curve=tuple(curve),
            params={"train.lr": 0.1, "seed": seed},
        )

    rows = [row(1, [(0, 0.6), (1, 0.2), (2, 0.5)]), row(2, [(0, 0.0), (1, 0.55), (2, 0.4)])]
    # Execute
    table = write_sweep_tables(SweepResult(rows, {}, []), tmp_path, target=0.5)
    # Assert: seed 1 reaches 0.5 at round 2 (round 0 never counts), seed 2 at round 1: mean 1.5.
    groups = list(csv.DictReader(io.StringIO((tmp_path / "sweep.csv").read_text())))
    assert groups[0]["reached"] == "2" and float(groups[0]["rounds_to_target_mean"]) == 1.5
    assert "1.5 ± 0.7 (2/2)" in table
