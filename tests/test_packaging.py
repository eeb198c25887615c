"""``python -m build`` makes a wheel and an sdist that twine accepts, and the wheel installs into
a new virtual environment where ``fedumm`` runs its built-in default job. The new environment
borrows this one's site-packages (torch, transformers, ...) through a .pth file instead of
downloading them again; the wheel itself goes in with pip, so its files, metadata and entry
point are what is tested."""

import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_installs_and_runs_the_default_job(tmp_path):
    # Prepare: the wheel and sdist, from a copy-free build of the repo.
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    wheel, sdist = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheel) == 1 and len(sdist) == 1
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", *map(str, dist.iterdir())], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stdout.count("PASSED") == 2, check.stdout + check.stderr

    # Execute: a new venv that sees this one's dependencies, the wheel installed with pip.
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # The wheel first: with the borrowed packages visible, pip would take this repo's editable fedumm for it.
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel[0])], check=True, env=env)
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    args = [
        "--set", f"output.dir={tmp_path / 'runs'}", "--set", "federation.rounds=1", "--set", "federation.num_clients=2",
        "--set", "data.synthetic.train_samples=40", "--set", "data.synthetic.test_samples=8",
        "--set", "data.partition.min_samples=4", "--set", "train.local_steps=1", "--set", "output.progress=false",
        "--set", "eval.centralized_baseline=false",
    ]  # fmt: skip
    run = subprocess.run(
        [env_dir / "bin" / "fedumm", "run", *args], cwd=tmp_path, env=env, capture_output=True, text=True
    )

    # Assert: the installed package (not the repo's src) ran the job to its summary.
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    where = subprocess.run(
        [python, "-c", "import fedumm; print(fedumm.__file__)"], env=env, capture_output=True, text=True
    )
    assert where.stdout.startswith(site)
    assert (tmp_path / "runs" / "quickstart" / "summary.json").is_file()
    assert (tmp_path / "runs" / "quickstart" / "report.html").is_file()
