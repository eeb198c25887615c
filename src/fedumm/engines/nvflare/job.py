"""Build fedumm's NVIDIA FLARE job (FedJob API) and export it as a job folder.

The job has two parts:
- server: ``FedummController`` (fedumm's Server and strategy; see controller.py) with FLARE's
  server settings tuned for short rounds (task request interval, heartbeat timeout);
- clients: a ``ClientAPIExecutor`` (what FLARE's ScriptRunner wraps) running
  ``custom/fedumm_client.py`` with raw exchange formats on both sides, so FLARE passes
  fedumm's safetensors payload through untouched. In-process by default; an external process
  with ``engine.python`` or ``engine.client_command`` (environment isolation, like FedUMM's
  ``--use_env_script`` wrappers).
Both apps get the resolved run config as ``config/fedumm_config.yaml``. fedumm itself is not
copied into the job (``set_app_packages``): every site needs it installed, next to nvflare.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
from pathlib import Path

from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.client.config import ExchangeFormat, TransferType
from nvflare.job_config.api import FedJob

from fedumm.config import RunConfig, save_config
from fedumm.engines.nvflare import protocol as P
from fedumm.engines.nvflare.controller import FedummController

CLIENT_SCRIPT_SOURCE = Path(__file__).with_name(P.CLIENT_SCRIPT)


def job_name(config: RunConfig) -> str:
    """A FLARE job name from the run name (letters, digits, '-' and '_')."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", config.output.name or config.name).strip("-_") or "fedumm"
    return name if name[0].isalpha() else f"fedumm-{name}"


def client_command(config: RunConfig) -> list[str] | None:
    """argv that launches the external trainer, or None for in-process clients."""
    engine = config.engine
    if engine.python:
        prefix = [engine.python, "-u"]
    elif engine.client_command:
        prefix = shlex.split(engine.client_command)
    else:
        return None
    return prefix + [f"custom/{P.CLIENT_SCRIPT}"]


def build_job(config: RunConfig, staging: Path, exported: bool) -> FedJob:
    """The FedJob for ``config``. ``staging`` holds files the job copies at export time."""
    engine = config.engine
    placement = P.resolve_placement(config, exported)
    job = FedJob(name=job_name(config), min_clients=config.federation.num_clients)
    job.set_app_packages(["fedumm"])

    controller = FedummController(
        config_file=P.CONFIG_FILE,
        data_placement=placement,
        task_timeout=engine.task_timeout,
        task_check_period=engine.task_check_period,
    )
    job.to_server(controller, id="fedumm_controller")
    # FLARE server settings (config_fed_server.json "server" block). The request interval is
    # how long an idle client waits before asking again: FLARE's 2 s default would add up to 2 s
    # to every round.
    job.to_server({"server": {"task_request_interval": engine.task_request_interval,
                              "heart_beat_timeout": engine.heartbeat_timeout}})

    command = client_command(config)
    common = dict(params_exchange_format=ExchangeFormat.RAW, server_expected_format=ExchangeFormat.RAW,
                  params_transfer_type=TransferType.FULL, train_task_name=P.TRAIN_TASK)
    if command is None:
        executor_args = dict(execution_mode=ExecutionMode.IN_PROCESS, task_script_path=P.CLIENT_SCRIPT, **common)
    else:
        executor_args = dict(execution_mode=ExecutionMode.EXTERNAL_PROCESS, command=command, launch_once=True,
                             **common)
    targets = sorted(engine.sites) if exported and placement == "site" and engine.sites else [None]
    for target in targets:
        executor = ClientAPIExecutor(**executor_args)
        if target is None:
            job.to_clients(executor, id="fedumm_executor", tasks=["*"])
        else:
            job.to(executor, target, id="fedumm_executor", tasks=["*"])

    config_path = staging / P.CONFIG_FILE
    save_config(config, config_path)
    job.add_file_to_server(str(config_path), app_folder_type="config")
    for target in targets:
        site = target or "@ALL"
        job.add_file_to(str(config_path), site, app_folder_type="config")
        job.add_file_to(str(CLIENT_SCRIPT_SOURCE), site, app_folder_type="custom")
    return job


def export_job(config: RunConfig, out: str | Path) -> Path:
    """Write the job folder ``<out>/<job name>`` for ``nvflare job submit``; returns its path."""
    out = Path(out)
    staging = Path(tempfile.mkdtemp(prefix="fedumm-job-"))
    try:
        job = build_job(config, staging, exported=True)
        job.export_job(str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / job.name
