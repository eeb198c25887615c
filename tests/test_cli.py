import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedumm.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run_cli(*args):
    # The package may be importable only through pytest's pythonpath; pass it on.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "fedumm.cli", *args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--set", "federation.num_clint=3"], "federation.num_clint: unknown key"),
        (["run", "/no/such/config.yaml"], "config file not found: /no/such/config.yaml"),
        (["run", "--set", "model.backend=llama9"], "model.backend: unknown backend 'llama9'"),
        (["run", "--set", "model.name_or_path=./missing-model"], "model.name_or_path: no such folder"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, fragment, tmp_path):
    proc = _run_cli(*args, "--set", f"output.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedumm: error: ") and fragment in lines[0]
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    proc = _run_cli("run", "--debug", "--set", "federation.num_clint=3")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_config_command_prints_resolved_yaml(capsys):
    assert main(["config", "--set", "federation.rounds=9"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 9" in out and "backend: hf_vlm" in out


def test_partition_command_shows_and_saves_the_split_without_training(tmp_path, capsys):
    import json

    code = main(
        [
            "partition",
            "--set",
            "data.synthetic.train_samples=120",
            "--set",
            "data.partition.alpha=0",
            "--set",
            "federation.num_clients=3",
            "--out",
            str(tmp_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    saved = json.loads((tmp_path / "partition.json").read_text())
    assert saved["sizes"] == [40, 40, 40]  # IID: 120 rows over 3 clients
    assert "3 clients, label skew" in out and " total   120" in out
    assert (tmp_path / "partition.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_uses_the_run_folders_config_and_fails_early(tmp_path, capsys):
    import torch

    from fedumm.config import save_config
    from fedumm.runlog import RunFolder
    from fedumm.validation import load_run_config

    # Prepare: a run folder whose checkpoint is past its config's rounds (no model needed to refuse it).
    run_dir = tmp_path / "runs" / "done"
    run_dir.mkdir(parents=True)
    save_config(
        load_run_config(None, ["federation.rounds=1", f"output.dir={tmp_path / 'runs'}", "output.name=done"]),
        run_dir / "config.yaml",
    )
    (run_dir / "metrics.jsonl").write_text("")
    RunFolder(run_dir).save_checkpoint(2, {"w": torch.zeros(1)}, {}, strategy="fedavg", num_clients=4)
    # Execute / Assert: its own config is used (rounds = 1), so nothing is left to run.
    assert main(["run", "--resume", str(run_dir)]) == 2
    assert "is at round 2 and federation.rounds is 1: nothing left to run" in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                "--resume",
                str(run_dir),
                "--set",
                "federation.strategy.name=fedadam",
                "--set",
                "federation.rounds=3",
            ]
        )
        == 2
    )
    assert "written by strategy 'fedavg', but federation.strategy.name is 'fedadam'" in capsys.readouterr().err
    assert main(["run", "configs/quickstart.yaml", "--resume", str(run_dir)]) == 2
    assert "give no config file" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "is not a run folder (no config.yaml)" in capsys.readouterr().err


def test_partition_command_writes_the_skipped_rows_messages(tmp_path, capsys):
    import json

    from PIL import Image

    # Prepare: 8 good rows and one whose image file does not exist, skipped by policy.
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    rows = [{"image": "a.png", "question": "what color?", "answer": "red"}] * 8
    rows.insert(3, {"image": "gone.png", "question": "what color?", "answer": "red"})
    table = tmp_path / "t.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "split"
    # Execute
    code = main(
        [
            "partition",
            "--set",
            "data.source=table",
            "--set",
            f"data.table.path={table}",
            "--set",
            "data.table.on_error=skip",
            "--set",
            "federation.num_clients=2",
            "--set",
            "data.partition.method=iid",
            "--set",
            "data.partition.min_samples=1",
            "--out",
            str(out),
        ]
    )
    # Assert
    printed = capsys.readouterr().out
    assert code == 0 and "1 rows skipped" in printed
    problems = (out / "load_problems.txt").read_text().splitlines()
    assert len(problems) == 1 and "line 4" in problems[0] and "gone.png" in problems[0]
    assert json.loads((out / "partition.json").read_text())["skipped_rows_by_file"] == {str(table): 1}


@pytest.mark.parametrize("branch", [False, True])
def test_resume_before_the_first_checkpoint_starts_the_run_over(tmp_path, capsys, monkeypatch, branch):
    import fedumm.cli as cli
    from fedumm.runlog import RunFolder
    from fedumm.validation import load_run_config

    # Prepare: a run folder killed before its first checkpoint (a branch of another run: resume_from
    # names that one), and a stand-in engine that records its config.
    source = ["federation.resume_from=runs/source"] if branch else []
    config = load_run_config(None, [f"output.dir={tmp_path}", "output.name=early", "federation.rounds=2", *source])
    run = RunFolder.create(config)
    (run.path / "metrics.jsonl").write_text('{"phase": "federated", "ro')
    seen = []

    def fake_simulate(config):
        seen.append(config)
        RunFolder.create(config).path.joinpath("summary.txt").write_text("done\n")
        return type("Result", (), {"run_dir": str(RunFolder.path_for(config))})()

    monkeypatch.setattr(cli, "simulate", fake_simulate)
    # Execute
    assert main(["run", "--resume", str(run.path)]) == 0
    # Assert: the same folder, started from round 0 (a branch: from its source), the folder replaced.
    (resumed,) = seen
    assert resumed.federation.resume_from == ("runs/source" if branch else None) and resumed.federation.rounds == 2
    assert RunFolder.path_for(resumed) == run.path and resumed.output.overwrite
    start = "federation.resume_from (runs/source)" if branch else "round 0"
    assert f"has no checkpoint yet: starting it over from {start}" in capsys.readouterr().err
    assert not (run.path / "metrics.jsonl").exists()


def test_resume_of_a_folder_without_marker_or_checkpoint_is_no_start_over(tmp_path, capsys):
    from fedumm.config import save_config
    from fedumm.validation import load_run_config

    # Prepare: an earlier version's run folder (no marker) that never reached a checkpoint.
    folder = tmp_path / "old"
    folder.mkdir()
    save_config(load_run_config(None, [f"output.dir={tmp_path}", "output.name=old"]), folder / "config.yaml")
    (folder / "notes.txt").write_text("keep")
    # Execute / Assert: it is not replaced; the missing checkpoint is named.
    assert main(["run", "--resume", str(folder)]) == 2
    assert "no checkpoint at" in capsys.readouterr().err and (folder / "notes.txt").read_text() == "keep"
