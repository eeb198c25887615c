"""nvflare is optional: fedumm imports, configures and runs in-process without it, the engine
says how to install it, and no module outside engines/nvflare imports it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[3] / "src")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_fedumm_works_without_nvflare(tmp_path):
    proc = _python(f"""
import sys
sys.modules["nvflare"] = None  # as if it were not installed
import fedumm, fedumm.cli, fedumm.engines.simulation, fedumm.engines.nvflare
from fedumm.engines.nvflare import protocol, runner
from fedumm.validation import load_run_config
from fedumm.errors import ConfigError
config = load_run_config(None, ["engine.name=nvflare", "output.dir={tmp_path}"])
try:
    fedumm.engines.nvflare.simulate_nvflare(config)
except ConfigError as exc:
    print("ERR", exc)
code = fedumm.cli.main(["run", "--set", "engine.name=nvflare", "--set", "output.dir={tmp_path}"])
print("EXIT", code)
""")
    assert proc.returncode == 0, proc.stderr
    assert "ERR engine.name=nvflare needs NVIDIA FLARE: pip install 'fedumm[nvflare]'" in proc.stdout
    assert "EXIT 2" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith("fedumm: error: engine.name=nvflare needs NVIDIA FLARE")


def test_only_the_engine_package_imports_nvflare():
    proc = _python("""
import importlib, pkgutil, sys
import fedumm
skip = ("fedumm.engines.nvflare.",)
for mod in pkgutil.walk_packages(fedumm.__path__, "fedumm."):
    if not mod.name.startswith(skip):
        importlib.import_module(mod.name)
for name in ("fedumm.engines.nvflare.protocol", "fedumm.engines.nvflare.runner", "fedumm.engines.nvflare.client"):
    importlib.import_module(name)
print(sorted(m for m in sys.modules if m == "nvflare" or m.startswith("nvflare.")))
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
