import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedumm.cli import main
from fedumm.errors import ConfigError
from fedumm.slurm import SlurmOptions, sbatch_script

OPTIONS = SlurmOptions(partition="gpu-a100", gpus=2, time="1-02:00:00", job_name="fedumm-vqa", venv="/opt/envs/fedumm")


def _bash_syntax_ok(text: str, tmp_path: Path) -> None:
    script = tmp_path / "check.sbatch"
    script.write_text(text)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_the_script_requests_the_resources_and_runs_fedumm_offline(tmp_path):
    # Execute
    text = sbatch_script("configs/quickstart.yaml", ["federation.rounds=3", "name=it's a run"], OPTIONS)

    # Assert: resources, logs, environment, offline caches and the quoted fedumm command.
    _bash_syntax_ok(text, tmp_path)
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for expected in (
        "#SBATCH --partition=gpu-a100",
        "#SBATCH --gres=gpu:2",
        "#SBATCH --time=1-02:00:00",
        "#SBATCH --job-name=fedumm-vqa",
        "#SBATCH --output=logs/%x-%j.out",
        "source /opt/envs/fedumm/bin/activate",
        "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1",
    ):
        assert expected in lines
    config = str(Path("configs/quickstart.yaml").resolve())
    assert f"ARGS=({config} --set federation.rounds=3 --set 'name=it'\"'\"'s a run')" in lines
    assert lines[-1] == 'srun fedumm run "${ARGS[@]}"'


def test_the_args_array_expands_to_the_exact_words(tmp_path):
    # The quoting survives bash: echo each word of ARGS on its own line.
    text = sbatch_script(None, ["name=a b", "x=$HOME", 'y="q"'], OPTIONS)
    args_line = next(line for line in text.splitlines() if line.startswith("ARGS=("))
    proc = subprocess.run(["bash", "-c", f'{args_line}; printf "%s\\n" "${{ARGS[@]}}"'], capture_output=True, text=True)
    assert proc.stdout.splitlines() == ["--set", "name=a b", "--set", "x=$HOME", "--set", 'y="q"']


def test_no_gpus_requests_no_gres():
    text = sbatch_script(None, [], SlurmOptions(partition="cpu", gpus=0, time="90", job_name="j"))
    assert "--gres" not in text and "#SBATCH --time=90" in text


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"time": "2 hours"}, "--time '2 hours': expected a Slurm time"),
        ({"time": "1:2:3:4"}, "--time '1:2:3:4'"),
        ({"partition": "gpu;rm -rf /"}, "--partition 'gpu;rm -rf /'"),
        ({"gpus": -1}, "--gpus: must be 0 or more"),
        ({"mem": "lots"}, "--mem 'lots'"),
        ({"hf_home": '/x"; rm -rf /'}, "--hf-home"),
        ({"job_name": "a b"}, "job name 'a b'"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(change, fragment):
    options = SlurmOptions(**{**OPTIONS.__dict__, **change})
    with pytest.raises(ConfigError) as info:
        sbatch_script(None, [], options)
    assert fragment in str(info.value)


def _stand_in_sbatch(tmp_path: Path, answer: str, code: int = 0) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/sbatch-args\necho "{answer}"\nexit {code}\n')
    sbatch.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_submit_hands_the_script_to_sbatch_and_prints_the_job_id(tmp_path, monkeypatch, capsys):
    # Prepare: a stand-in sbatch on PATH that records its arguments.
    for key, value in _stand_in_sbatch(tmp_path, "Submitted batch job 4242").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "job.sbatch"

    # Execute
    code = main(["slurm", "--partition", "gpu", "--gpus", "1", "--time", "02:00:00", "--out", str(script), "--submit"])

    # Assert
    assert code == 0
    assert (tmp_path / "sbatch-args").read_text().strip() == str(script)
    assert "submitted: Slurm job 4242" in capsys.readouterr().out
    assert (tmp_path / "logs").is_dir()  # Slurm opens the log files before the script runs
    _bash_syntax_ok(script.read_text(), tmp_path)


def test_a_failing_sbatch_is_one_error_line(tmp_path, monkeypatch, capsys):
    for key, value in _stand_in_sbatch(tmp_path, "sbatch: error: invalid partition specified: gpu", 1).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    code = main(["slurm", "--partition", "gpu", "--gpus", "1", "--time", "60", "--submit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "sbatch" in err[0] and "failed (exit 1)" in err[0]


def test_an_array_job_runs_one_sweep_run_per_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "sweep.sbatch"
    code = main(
        [
            "slurm",
            "--partition",
            "gpu",
            "--gpus",
            "1",
            "--time",
            "60",
            "--out",
            str(script),
            "--array-from-sweep",
            str(tmp_path / "sw"),
            "--grid",
            "federation.strategy.name=fedavg,fedprox",
            "--seeds",
            "2",
        ]
    )
    assert code == 0 and "(4 array tasks)" in capsys.readouterr().out
    text = script.read_text()
    _bash_syntax_ok(text, tmp_path)
    assert "#SBATCH --array=0-3" in text and "#SBATCH --output=logs/%x-%A_%a.out" in text
    tasks = [line.strip() for line in text.splitlines() if line.strip()[:2] in ("0)", "1)", "2)", "3)")]
    assert len(tasks) == 4
    assert 'federation.strategy.name="fedprox"' in tasks[3] and "seed=43" in tasks[3]
    assert tasks[3].endswith("# name=fedprox-seed43")


def test_grid_without_array_is_refused(capsys):
    code = main(["slurm", "--partition", "gpu", "--gpus", "1", "--time", "60", "--grid", "seed=1,2"])
    assert code == 2 and "only with --array-from-sweep" in capsys.readouterr().err


def test_a_bad_config_fails_before_the_script_is_written(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "fedumm.cli", "slurm", "--partition", "gpu", "--gpus", "1", "--time", "60"]
        + ["--out", str(tmp_path / "s.sbatch"), "--set", "federation.rounds=0"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    assert proc.returncode == 2 and "federation.rounds" in proc.stderr
    assert not (tmp_path / "s.sbatch").exists()
