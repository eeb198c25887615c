"""The exported FLARE job folder: our controller and the Client API executor, fedumm's config,
the client script, no persistor, no copied fedumm sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402
from fedumm.config import load_config  # noqa: E402
from fedumm.engines.nvflare import export_job  # noqa: E402
from fedumm.engines.nvflare.job import job_name  # noqa: E402


def _files(job: Path) -> set[str]:
    return {str(p.relative_to(job)) for p in job.rglob("*") if p.is_file()}


def test_export_for_all_sites(tmp_path):
    config = load_config(None, ["engine.name=nvflare", "name=demo run", "federation.num_clients=3",
                                "federation.strategy.name=scaffold", "engine.task_request_interval=0.5"])
    job = export_job(config, tmp_path)
    assert job == tmp_path / "demo-run" == tmp_path / job_name(config)
    assert _files(job) == {"meta.json", "app/config/config_fed_server.json", "app/config/config_fed_client.json",
                           "app/config/fedumm_config.yaml", "app/custom/fedumm_client.py"}
    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 3 and meta["deploy_map"] == {"app": ["@ALL"]}

    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    [workflow] = server["workflows"]
    assert workflow["path"] == "fedumm.engines.nvflare.controller.FedummController"
    assert workflow["args"]["data_placement"] == "site"  # auto: exported jobs read site data
    assert server["server"]["task_request_interval"] == 0.5
    assert server["components"] == []  # no persistor: the initial adapter comes from the config seed

    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    [executor] = client["executors"]
    assert executor["executor"]["path"] == "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
    args = executor["executor"]["args"]
    assert args["execution_mode"] == "in_process" and args["task_script_path"] == "fedumm_client.py"
    assert args["server_expected_format"] == "raw" and args.get("params_exchange_format", "raw") == "raw"

    assert load_config(job / "app/config/fedumm_config.yaml") == config
    script = (job / "app/custom/fedumm_client.py").read_text()
    assert "from fedumm.engines.nvflare.client import main" in script


def test_export_per_site_with_an_external_interpreter(tmp_path):
    config = load_config(None, [
        "engine.name=nvflare", "federation.num_clients=2", "engine.python=/opt/envs/janus/bin/python",
        "engine.sites={hospital-a: {seed: 1}, hospital-b: {data: {synthetic: {train_samples: 50}}}}",
    ])
    job = export_job(config, tmp_path)
    meta = json.loads((job / "meta.json").read_text())
    assert meta["deploy_map"] == {"app_server": ["server"], "app_hospital-a": ["hospital-a"],
                                  "app_hospital-b": ["hospital-b"]}
    for site in ("hospital-a", "hospital-b"):
        client = json.loads((job / f"app_{site}/config/config_fed_client.json").read_text())
        args = client["executors"][0]["executor"]["args"]
        assert args["execution_mode"] == "external_process"
        assert args["command"] == ["/opt/envs/janus/bin/python", "-u", "custom/fedumm_client.py"]
        assert (job / f"app_{site}/custom/fedumm_client.py").is_file()
    assert not (job / "app_server/custom").exists()
    exported = load_config(job / "app_server/config/fedumm_config.yaml")
    assert exported.engine.sites["hospital-b"].data.synthetic.train_samples == 50


def test_cli_export_implies_the_flare_engine(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path), "--set", "name=cli-job",
                 "--set", "federation.num_clients=2", "--set", "engine.sites={site-1: {}, site-2: {}}"]) == 0
    out = capsys.readouterr().out
    assert f"NVIDIA FLARE job written to {tmp_path / 'cli-job'}" in out
    assert f"nvflare job submit -j {tmp_path / 'cli-job'}" in out
    assert load_config(tmp_path / "cli-job/app_server/config/fedumm_config.yaml").engine.name == "nvflare"


def test_run_with_a_missing_interpreter_fails_before_flare_starts(tmp_path, capsys):
    code = main(["run", "--set", "engine.name=nvflare", "--set", f"engine.python={tmp_path}/nope/python",
                 "--set", f"output.dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedumm: error: engine.python: {tmp_path}/nope/python is not an executable file"]
    assert not (tmp_path / "quickstart").exists()
