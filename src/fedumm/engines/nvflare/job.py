"""Build fedumm's NVIDIA FLARE job (FedJob API) and export it as a job folder.

The job has two parts:
- server: ``FedummController`` (fedumm's Server and strategy; see controller.py) with FLARE's
  task request interval tuned for short rounds;
- clients: a ``ClientAPIExecutor`` (what FLARE's ScriptRunner wraps) running
  ``custom/fedumm_client.py`` with raw exchange formats on both sides, so FLARE passes
  fedumm's safetensors payload through untouched. In-process by default; an external process
  with ``engine.python`` or ``engine.client_command`` (environment isolation, like FedUMM's
  ``--use_env_script`` wrappers).
The server app gets the resolved run config as ``config/fedumm_config.yaml``. With
``engine.sites`` the export has one app per site, carrying what that client needs: the config
without ``engine.sites`` and, when sites load their own data, without the server's ``data.*``
(its held-out set), plus its own ``engine.sites`` entry as ``config/fedumm_site.yaml``
(nothing of the other sites). Without ``engine.sites``, FLARE deploys one app to the server and
every site ("@ALL"), so every site sees the whole config. fedumm
itself is not copied into the job (``set_app_packages``): every site needs it installed, next
to nvflare.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
from pathlib import Path

import yaml
from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor, ExecutionMode
from nvflare.client.config import ExchangeFormat, TransferType
from nvflare.job_config.api import FedJob

from fedumm.config import RunConfig, save_config
from fedumm.data.config import DataConfig, PartitionConfig
from fedumm.engines.nvflare import protocol as P
from fedumm.engines.nvflare.controller import FedummController
from fedumm.errors import ConfigError

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


def check_exported_command(config: RunConfig) -> None:
    """An exported job's trainer command runs on each site, in the site's app folder
    (``<site workspace>/<job id>/app_<site>``): a relative path would resolve there, not where
    the job was exported, so it is refused. Absolute paths (as they are on the sites) and bare
    command names (looked up on the site's PATH) are kept as written."""
    for key in ("python", "client_command"):
        value = getattr(config.engine, key)
        if value is None:
            continue
        try:
            argv = shlex.split(value)
        except ValueError as exc:
            raise ConfigError(f"engine.{key}: {exc}") from None
        for arg in argv if key == "client_command" else [value]:
            path = arg.split("=", 1)[-1] if arg.startswith("-") else arg
            if os.sep in path and not os.path.isabs(path):
                raise ConfigError(
                    f"engine.{key}: relative path {path!r} in an exported job would resolve in each site's app "
                    f"folder; give the absolute path it has on the sites"
                )


def client_config(config: RunConfig, placement: str) -> RunConfig:
    """The run config a client app carries: no other site's data config, and, when sites load
    their own data, none of the server's ``data.*`` (the partition's label column stays: the
    client reports its label counts over it)."""
    config = config.model_copy(deep=True)
    config.engine.sites = {}
    if placement == "site":
        label_column = config.data.partition.label_column
        config.data = DataConfig(partition=PartitionConfig(label_column=label_column))
    return config


def build_job(config: RunConfig, staging: Path, exported: bool) -> FedJob:
    """The FedJob for ``config``. ``staging`` holds files the job copies at export time."""
    engine = config.engine
    if exported:
        check_exported_command(config)
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
    job.to_server({"server": {"task_request_interval": engine.task_request_interval}})

    command = client_command(config)
    common = dict(
        params_exchange_format=ExchangeFormat.RAW,
        server_expected_format=ExchangeFormat.RAW,
        params_transfer_type=TransferType.FULL,
        train_task_name=P.TRAIN_TASK,
    )
    if command is None:
        executor_args = dict(execution_mode=ExecutionMode.IN_PROCESS, task_script_path=P.CLIENT_SCRIPT, **common)
    else:
        executor_args = dict(execution_mode=ExecutionMode.EXTERNAL_PROCESS, command=command, launch_once=True, **common)
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
    if targets != [None]:
        # Per-site apps (exported, engine.sites): each gets the client config and its own entry.
        clients_path = staging / "_clients" / P.CONFIG_FILE  # "_": no site name starts so
        clients_path.parent.mkdir()
        save_config(client_config(config, placement), clients_path)
    else:
        # One app for the server and every client (FLARE's "@ALL": the server's app is the
        # clients' app), or the simulator's clients, which share this machine and engine.sites.
        clients_path = config_path
    for target in targets:
        site = target or "@ALL"
        job.add_file_to(str(clients_path), site, app_folder_type="config")
        job.add_file_to(str(CLIENT_SCRIPT_SOURCE), site, app_folder_type="custom")
        if target is not None:
            site_path = staging / "_sites" / target / P.JOB_SITE_FILE
            site_path.parent.mkdir(parents=True)
            site_path.write_text(yaml.safe_dump(engine.sites[target].model_dump(mode="json"), sort_keys=False))
            job.add_file_to(str(site_path), target, app_folder_type="config")
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
