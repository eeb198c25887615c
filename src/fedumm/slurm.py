"""``fedumm slurm CONFIG [--set ...] --partition P --gpus N --time T``: an sbatch script that runs
the job on a Slurm cluster, and (``--submit``) its submission.

The script activates the environment fedumm runs in (this interpreter's virtual environment,
or ``--venv``), points the Hugging Face caches at a folder filled beforehand on a login node and
switches the libraries to offline mode (compute nodes often have no internet; FedUMM's
``scripts/slurm_run.sh`` and README do the same), then runs ``fedumm run`` with the config and
overrides. ``--array-from-sweep`` with ``--grid``/``--seeds`` (as ``fedumm sweep`` takes them)
writes an array job instead: task i runs the i-th run of that sweep into the sweep folder.

The config and every override are checked here, before anything is queued.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fedumm.errors import ConfigError
from fedumm.sweep import SweepRun

# Slurm's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{1,2}(:\d{1,2})?)?|\d+(:\d{1,2}(:\d{1,2})?)?)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,-]*$")
_SUBMITTED = re.compile(r"Submitted batch job (\d+)")


@dataclass(frozen=True)
class SlurmOptions:
    partition: str
    gpus: int
    time: str
    job_name: str
    cpus: int = 8
    mem: str = "64G"
    log_dir: str = "logs"
    venv: str | None = None  # null = the environment of this interpreter
    hf_home: str = "$HOME/.cache/huggingface"
    workdir: str | None = None  # null = the folder the script is written from

    def check(self) -> None:
        """One ConfigError line naming the first bad option."""
        if not _NAME.match(self.partition):
            raise ConfigError(f"--partition {self.partition!r}: letters, digits, '_', '.', ',' and '-' only")
        if self.gpus < 0:
            raise ConfigError(f"--gpus: must be 0 or more, got {self.gpus}")
        if not _TIME.match(self.time):
            raise ConfigError(
                f"--time {self.time!r}: expected a Slurm time such as 90, 02:00:00 or 1-12:00:00 (D-HH:MM:SS)"
            )
        if not _NAME.match(self.job_name):
            raise ConfigError(f"job name {self.job_name!r}: letters, digits, '_', '.', ',' and '-' only")
        if self.cpus < 1:
            raise ConfigError(f"--cpus: must be at least 1, got {self.cpus}")
        if any(c in self.hf_home for c in '"`\n'):
            raise ConfigError(f"--hf-home {self.hf_home!r}: no double quote, backquote or newline")
        if not re.match(r"^\d+[KMGT]?$", self.mem):
            raise ConfigError(f"--mem {self.mem!r}: expected a Slurm memory size such as 64G or 32000M")


def _environment(venv: str | None) -> str:
    prefix = venv or sys.prefix
    activate = Path(prefix) / "bin" / "activate"
    return f"source {shlex.quote(str(activate))}"


def _args(config: str | None, overrides: Sequence[str]) -> str:
    words = [*([str(Path(config).resolve())] if config else []), *(a for o in overrides for a in ("--set", o))]
    return " ".join(shlex.quote(w) for w in words)


def sbatch_script(
    config: str | None,
    overrides: Sequence[str],
    options: SlurmOptions,
    array: Sequence[SweepRun] | None = None,
) -> str:
    """The sbatch script's text (``array``: one array task per sweep run)."""
    options.check()
    log = options.log_dir.rstrip("/")
    pattern = "%x-%A_%a" if array else "%x-%j"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={options.job_name}",
        f"#SBATCH --partition={options.partition}",
        *([f"#SBATCH --gres=gpu:{options.gpus}"] if options.gpus else []),
        f"#SBATCH --time={options.time}",
        "#SBATCH --nodes=1",
        "#SBATCH --ntasks=1",
        f"#SBATCH --cpus-per-task={options.cpus}",
        f"#SBATCH --mem={options.mem}",
        f"#SBATCH --output={log}/{pattern}.out",
        f"#SBATCH --error={log}/{pattern}.err",
        *([f"#SBATCH --array=0-{len(array) - 1}"] if array else []),
        "# Written by `fedumm slurm`; submit with: sbatch <this file>",
        "set -euo pipefail",
        f"cd {shlex.quote(options.workdir or str(Path.cwd()))}",
        f"mkdir -p {shlex.quote(log)}",
        _environment(options.venv),
        "# Compute nodes often have no internet: models and data sets come from caches filled on a",
        "# login node beforehand (e.g. huggingface-cli download / datasets.load_dataset with this HF_HOME).",
        f'export HF_HOME="{options.hf_home}"',
        "export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1",
        'export FEDUMM_CACHE="${FEDUMM_CACHE:-$HF_HOME/fedumm}"',
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
    ]
    if array:
        lines.append('case "$SLURM_ARRAY_TASK_ID" in')
        for i, run in enumerate(array):
            lines.append(f"  {i}) ARGS=({_args(config, run.overrides)}) ;;  # {run.name}")
        lines.append('  *) echo "no sweep run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;')
        lines.append("esac")
    else:
        lines.append(f"ARGS=({_args(config, overrides)})")
    lines.append('srun fedumm run "${ARGS[@]}"')
    return "\n".join(lines) + "\n"


def submit(script: Path) -> str:
    """``sbatch script``; the job id Slurm answers with."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("--submit: no sbatch on PATH (run this on a Slurm login node, or submit the script by hand)")
    proc = subprocess.run([sbatch, str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ConfigError(f"--submit: sbatch {script} failed (exit {proc.returncode}): {detail[-1] if detail else ''}")
    match = _SUBMITTED.search(proc.stdout)
    if match is None:
        raise ConfigError(f"--submit: sbatch answered {proc.stdout.strip()[:200]!r}, not 'Submitted batch job <id>'")
    return match.group(1)
