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
