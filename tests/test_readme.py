"""The README is the landing page: at most ~10 KB, and every command in it works. Commands in
blocks marked ``bash runnable`` are run as written (in a scratch folder that has the repo's
configs); the other ``fedumm`` commands are checked as ``fedumm`` checks them before it runs."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from fedumm.validation import load_run_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FLAGS = {"--submit", "--debug"}  # options without a value
_BLOCK = re.compile(r"^```bash( runnable)?\n(.*?)^```", re.M | re.S)


def _commands(runnable: bool) -> list[list[str]]:
    out = []
    for match in _BLOCK.finditer(README.read_text()):
        if bool(match.group(1)) != runnable:
            continue
        for line in match.group(2).replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] == "fedumm":
                out.append(words[1:])
    return out


def _config_and_overrides(args: list[str]) -> tuple[str | None, list[str]]:
    config, overrides, words = None, [], iter(args[1:])
    for word in words:
        if word == "--set":
            overrides.append(next(words))
        elif word.startswith("--"):
            if word not in _FLAGS:
                next(words, None)  # the option's value
        elif config is None:
            config = word
    return config, overrides


def test_the_readme_is_a_landing_page_of_at_most_10_kb():
    assert len(README.read_bytes()) <= 10 * 1024
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    for page in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / page).is_file(), page


CONFIGURED = [a for a in _commands(False) if a[0] in ("run", "centralized", "partition", "export", "sweep", "slurm")]


@pytest.mark.parametrize("args", CONFIGURED, ids=[" ".join(a)[:80] for a in CONFIGURED])
def test_every_readme_command_passes_fedumm_checks(args):
    if "--resume" in args:
        pytest.skip("continues an earlier run folder")
    config, overrides = _config_and_overrides(args)
    load_run_config(ROOT / config if config else None, overrides)


@pytest.mark.slow
def test_the_runnable_readme_commands_run_as_written(tmp_path):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    commands = _commands(True)
    assert len(commands) >= 4
    for args in commands:
        proc = subprocess.run(
            [sys.executable, "-m", "fedumm.cli", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"fedumm {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert (tmp_path / "runs" / "demo" / "report.html").is_file()
    assert (tmp_path / "runs" / "compare" / "compare.md").is_file()
