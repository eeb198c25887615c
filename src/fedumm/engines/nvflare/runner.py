"""``fedumm run`` with ``engine.name=nvflare``: the job in FLARE's simulator, then the run folder.

The simulator runs the exported job folder in a child process (the same module FLARE's
``FedJob.simulator_run`` and ``SimEnv`` start), with its output in
``<workspace>/simulator.log``; the server and every client are separate processes. While it
runs, the round lines are printed from the controller's metrics.jsonl. Afterwards the run
folder the controller wrote into its job workspace is copied to ``runs/<name>/``, and, when
the data was partitioned centrally, the centralized baseline runs in this process as the
in-process engine runs it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

import fedumm
from fedumm.config import RunConfig
from fedumm.data.federated import build_federated_data
from fedumm.engines.nvflare import protocol as P
from fedumm.errors import ConfigError, FedummError
from fedumm.federation import ModelHost, PhaseResult, RunResult
from fedumm.federation.job import phase_summary, run_centralized, write_summary
from fedumm.federation.loop import round_line
from fedumm.models import tiny
from fedumm.models.compose import composed_checkpoint
from fedumm.processes import popen, sigterm_as_interrupt, stop_process_tree
from fedumm.runlog import RunFolder, read_checkpoint

SIMULATOR_MODULE = "nvflare.private.fed.app.simulator.simulator"  # what FedJob.simulator_run runs
SIM_JOB_ID = "simulate_job"  # the simulator's fixed job id


# ---------------------------------------------------------------------------- preflight


def _resolve_executable(value: str, key: str) -> str:
    found = shutil.which(value)
    if found is None or not os.access(found, os.X_OK):
        if os.sep in value or value.startswith("."):
            raise ConfigError(f"{key}: {value} is not an executable file")
        raise ConfigError(f"{key}: {value!r} not found on PATH")
    return str(Path(found).resolve()) if os.sep in value else found


def local_engine_config(config: RunConfig) -> RunConfig:
    """Check the engine settings that must hold on this machine and make paths absolute (the
    external trainer starts in the client's app folder, not here)."""
    engine = config.engine
    config = config.model_copy(deep=True)
    if engine.python is not None:
        config.engine.python = _resolve_executable(engine.python, "engine.python")
    if engine.client_command is not None:
        try:
            argv = shlex.split(engine.client_command)
        except ValueError as exc:
            raise ConfigError(f"engine.client_command: {exc}") from None
        argv[0] = _resolve_executable(argv[0], "engine.client_command")
        argv = [argv[0]] + [
            str(Path(a).resolve()) if not a.startswith("-") and Path(a).exists() else a for a in argv[1:]
        ]
        config.engine.client_command = shlex.join(argv)
    if engine.threads is not None and engine.threads > config.federation.num_clients:
        config.engine.threads = config.federation.num_clients
    if engine.torch_threads is None:
        # Clients train at the same time: share the cores instead of oversubscribing them.
        parallel = config.engine.threads or config.federation.num_clients
        config.engine.torch_threads = max(1, (os.cpu_count() or 1) // parallel)
    return config


def _site_names(config: RunConfig) -> list[str] | None:
    """Simulated client names: site-1..site-K, or the names of engine.sites."""
    if P.resolve_placement(config, exported=False) == "site" and config.engine.sites:
        return sorted(config.engine.sites, key=P._natural_key)
    return None


def child_env(base: dict[str, str] | None = None, tmpdir: str | Path | None = None) -> dict[str, str]:
    """The environment of FLARE processes we start: ours, with this fedumm importable (a
    source checkout need not be installed); with ``tmpdir``, their temporary files go there
    (created), not to the machine's /tmp."""
    env = dict(os.environ if base is None else base)
    root = str(Path(fedumm.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths and "site-packages" not in root:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    env.setdefault("PYTHONUNBUFFERED", "1")
    if tmpdir is not None:
        Path(tmpdir).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(tmpdir)
    return env


def _warm_model_cache(config: RunConfig) -> None:
    """Build an embedded tiny model (or model.compose's composed checkpoint) once here, not in
    every FLARE process at the same time."""
    if config.model.compose is not None:
        composed_checkpoint(config.model.compose)
    elif config.model.name_or_path in getattr(tiny, "TINY_MODELS", {}):
        tiny.resolve_model_path(config.model.name_or_path)


# ---------------------------------------------------------------------------- process control


def first_error(workspace: Path) -> str | None:
    """The first line of a fedumm error file left by a client (the usual root cause) or the
    controller."""
    paths = sorted(workspace.rglob("fedumm_error.txt"), key=lambda p: (P.RUN_FOLDER in p.parts, str(p)))
    for path in paths:
        line = path.read_text().splitlines()[0] if path.stat().st_size else ""
        if line:
            return f"{line} (see {path})"
    return None


# What FLARE's simulator logs when a client's worker process ends in the middle of the job (its
# SimulatorClientRunner.do_one_task); the simulator never restarts that client.
_WORKER_DIED = re.compile(r"(Communication error with client|Subprocess died for client) ([A-Za-z0-9._-]+?)[:,\s]")
WORKER_MODULE = "nvflare.private.fed.app.simulator.simulator_worker"


class WorkerWatch:
    """Notices simulated clients whose process died. FLARE's simulator does not bring them back:
    the controller's rounds go on without them (each waits ``federation.round_timeout`` for
    them), and once every client is gone nothing can progress.

    Two signals: the simulator's own log line for a worker it lost (any ``engine.threads``), and
    the worker processes themselves (psutil): with one thread per client each worker lives
    for the whole job, so one that is gone before the job's summary exists, with the
    simulator still running ``grace`` seconds later, died."""

    def __init__(
        self,
        proc: subprocess.Popen,
        log: Path,
        done: Path,
        persistent: bool,
        grace: float = 10.0,
        scan_every: float = 1.0,
    ):
        self.proc, self.log, self.done, self.persistent = proc, log, done, persistent
        self.grace, self.scan_every = grace, scan_every
        self.offset = 0
        self.workers: dict[int, tuple[str, object]] = {}  # pid -> (site, psutil.Process)
        self.sites: set[str] = set()  # every site whose worker was seen
        self.gone: dict[str, float] = {}  # site -> when its worker was found gone
        self.dead: dict[str, str] = {}  # site -> how its death was noticed
        self.last_scan = 0.0

    def _log_deaths(self) -> list[tuple[str, str]]:
        try:
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1  # whole lines only
        self.offset += end
        text = chunk[:end].decode(errors="replace")
        return [(m.group(2), f"FLARE logged '{m.group(1)} {m.group(2)}'") for m in _WORKER_DIED.finditer(text)]

    def _scan(self) -> None:
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for child in children:
            if child.pid in self.workers:
                continue
            try:
                cmd = child.cmdline()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if WORKER_MODULE in cmd and "--client" in cmd[:-1]:
                site = cmd[cmd.index("--client") + 1]
                self.workers[child.pid] = (site, child)
                self.sites.add(site)

    def _process_deaths(self) -> list[tuple[str, str]]:
        now = time.monotonic()
        if not self.persistent or now - self.last_scan < self.scan_every:
            return []
        self.last_scan = now
        self._scan()
        if self.done.is_file():
            return []
        for pid, (site, process) in list(self.workers.items()):
            try:
                alive = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                alive = False
            if not alive:
                self.gone.setdefault(site, now)
                del self.workers[pid]
        return [
            (site, f"its process ({WORKER_MODULE}) ended before the job did")
            for site, since in self.gone.items()
            if now - since >= self.grace and not self.done.is_file()
        ]

    def poll(self) -> list[tuple[str, str]]:
        """``(site, how it was noticed)`` for each client found dead since the last call."""
        new = []
        for site, how in [*self._log_deaths(), *self._process_deaths()]:
            if site not in self.dead:
                self.dead[site] = how
                new.append((site, how))
        return new

    def all_dead(self, num_clients: int) -> bool:
        """Every simulated client's worker died (persistent workers only: nothing can progress)."""
        return self.persistent and len(self.sites) >= num_clients and self.sites <= set(self.dead)


def _deaths(dead: dict[str, str]) -> str:
    return "; ".join(f"client {site}'s process died during the job ({how})" for site, how in sorted(dead.items()))


class _RoundPrinter:
    """Prints the controller's rounds as they land in its metrics.jsonl."""

    def __init__(self, metrics: Path, config: RunConfig):
        self.metrics, self.config, self.seen = metrics, config, 0
        self.metric = config.eval.evaluation().primary_metric

    def poll(self) -> None:
        if not self.metrics.is_file():
            return
        text = self.metrics.read_text()
        complete = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # skip a partial line
        for line in complete[self.seen :]:
            record = json.loads(line)
            if record["round"] > 0:
                print(round_line(record, self.config.federation.rounds, self.metric, "federated/nvflare"), flush=True)
        self.seen = len(complete)


def run_simulator(config: RunConfig, workspace: Path, progress: bool = False) -> Path:
    """Export the job, run it in FLARE's simulator and return the server's run folder."""
    from fedumm.engines.nvflare.job import build_job  # noqa: PLC0415 (nvflare is optional: job needs it)

    staging = Path(tempfile.mkdtemp(prefix="fedumm-job-"))
    try:
        job = build_job(config, staging, exported=False)
        job.export_job(str(staging / "jobs"))
        job_dir = staging / "jobs" / job.name
        # FLARE's simulator empties its workspace: the log lives next to it.
        workspace.mkdir(parents=True, exist_ok=True)
        sim_ws = workspace / "simulator"
        sites = _site_names(config)
        num_clients = config.federation.num_clients
        cmd = [
            sys.executable,
            "-m",
            SIMULATOR_MODULE,
            str(job_dir),
            "-w",
            str(sim_ws),
            "-t",
            str(config.engine.threads or num_clients),
        ]
        cmd += ["-c", ",".join(sites)] if sites else ["-n", str(num_clients)]
        result_dir = sim_ws / "server" / SIM_JOB_ID / P.RUN_FOLDER
        printer = _RoundPrinter(result_dir / "metrics.jsonl", config)
        deadline = time.monotonic() + config.engine.timeout if config.engine.timeout else None
        log_path = workspace / "simulator.log"
        threads = config.engine.threads or num_clients
        with open(log_path, "wb") as log, sigterm_as_interrupt():
            proc = popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(tmpdir=workspace / "tmp"),
            )
            watch = WorkerWatch(proc, log_path, result_dir / "summary.json", persistent=threads >= num_clients)
            round_timeout = config.federation.round_timeout
            wait = (
                f"federation.round_timeout={round_timeout:g}s"
                if round_timeout
                else f"engine.task_timeout={config.engine.task_timeout}s (0 = forever; federation.round_timeout: null)"
            )
            try:
                while proc.poll() is None:
                    if progress:
                        printer.poll()
                    for site, how in watch.poll():
                        # Not fatal: the controller's rounds go on without it (the loop records it
                        # as missing) until the run completes or ends for too few replies.
                        print(
                            f"NVIDIA FLARE simulator: client {site}'s process died during the job ({how}); "
                            f"the rounds go on without it, each waiting {wait} for it",
                            file=sys.stderr,
                            flush=True,
                        )
                    if watch.all_dead(num_clients):
                        raise FedummError(
                            f"NVIDIA FLARE simulator: every client's process died, no round can finish "
                            f"({_deaths(watch.dead)}); stopped the simulator; the rounds finished so far are "
                            f"in {result_dir} (log: {log_path})"
                        )
                    if deadline is not None and time.monotonic() > deadline:
                        died = f"; {_deaths(watch.dead)}" if watch.dead else ""
                        raise FedummError(
                            f"engine.timeout: the FLARE simulator ran longer than "
                            f"{config.engine.timeout:g}s{died} (log: {log_path})"
                        )
                    time.sleep(0.25)
            finally:
                if proc.poll() is None:
                    stop_process_tree(proc)
                else:
                    stop_process_tree(proc, grace=2.0)  # stray children of a finished simulator
        if progress:
            printer.poll()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (result_dir / "summary.json").is_file():
        reason = first_error(workspace) or f"simulator exit status {proc.returncode}"
        died = f"; {_deaths(watch.dead)}; the rounds finished so far are in {result_dir}" if watch.dead else ""
        raise FedummError(f"NVIDIA FLARE job failed: {reason}{died}; log: {workspace / 'simulator.log'}")
    return result_dir


# ---------------------------------------------------------------------------- fedumm run


def simulate_nvflare(config: RunConfig, *, centralized: bool | None = None) -> RunResult:
    """Run the federated job in FLARE's simulator and write ``runs/<name>/`` like ``simulate``;
    with data placement ``partition`` the centralized baseline then runs here, in-process."""
    RunFolder.check_available(config)
    local = local_engine_config(config)
    _warm_model_cache(config)
    if local.engine.workspace:
        workspace, temporary = Path(local.engine.workspace).resolve(), False
    else:
        workspace, temporary = Path(tempfile.mkdtemp(prefix="fedumm-nvflare-")), True
    if config.output.progress:
        print(
            f"NVIDIA FLARE simulator: {config.federation.num_clients} clients, "
            f"{config.federation.rounds} rounds (workspace {workspace})",
            flush=True,
        )
    result_dir = run_simulator(local, workspace, config.output.progress)

    run = RunFolder.create(config)  # config.yaml = the config as given
    for item in result_dir.iterdir():
        if item.name in ("config.yaml", "fedumm_error.txt"):
            continue
        target = run.path / item.name
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    summary: dict[str, Any] = json.loads((run.path / "summary.json").read_text())
    summary["run_dir"] = str(run.path)
    final_state = read_checkpoint(run.path).global_state
    federated = PhaseResult("federated", summary["metric"], run.read_metrics(), final_state)
    cen_result = None
    placement = P.resolve_placement(config, exported=False)
    if (centralized if centralized is not None else config.eval.centralized_baseline) and placement == "partition":
        data = build_federated_data(config.data, config.federation.num_clients, config.seed, task=config.eval.task)
        host = ModelHost(config)
        cen_result = run_centralized(
            config,
            host,
            data.pooled_train,
            data.global_test,
            run,
            "centralized_adapter",
            print if config.output.progress else None,
        )
        summary.update(phase_summary(cen_result, host.evaluation))
    write_summary(run, summary)
    if temporary:
        shutil.rmtree(workspace, ignore_errors=True)
    return RunResult(str(run.path), federated, cen_result, summary["majority_baseline_accuracy"], summary)
