"""The exported FLARE job folder: our controller and the Client API executor, fedumm's config,
the client script, no persistor, no copied fedumm sources; each site's app carries only what
that site needs. The controller's byte counts of FLARE messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("nvflare")

from fedumm.cli import main  # noqa: E402
from fedumm.engines.nvflare import export_job  # noqa: E402
from fedumm.engines.nvflare import protocol as P  # noqa: E402
from fedumm.engines.nvflare.controller import DEFAULT_TASK_TIMEOUT  # noqa: E402
from fedumm.engines.nvflare.job import job_name  # noqa: E402
from fedumm.errors import ConfigError  # noqa: E402
from fedumm.validation import load_run_config  # noqa: E402


def _files(job: Path) -> set[str]:
    return {str(p.relative_to(job)) for p in job.rglob("*") if p.is_file()}


def test_export_for_all_sites(tmp_path):
    config = load_run_config(
        None,
        [
            "engine.name=nvflare",
            "name=demo run",
            "federation.num_clients=3",
            "federation.strategy.name=scaffold",
            "engine.task_request_interval=0.5",
        ],
    )
    job = export_job(config, tmp_path)
    assert job == tmp_path / "demo-run" == tmp_path / job_name(config)
    assert _files(job) == {
        "meta.json",
        "app/config/config_fed_server.json",
        "app/config/config_fed_client.json",
        "app/config/fedumm_config.yaml",
        "app/custom/fedumm_client.py",
    }
    meta = json.loads((job / "meta.json").read_text())
    assert meta["min_clients"] == 3 and meta["deploy_map"] == {"app": ["@ALL"]}

    server = json.loads((job / "app/config/config_fed_server.json").read_text())
    [workflow] = server["workflows"]
    assert workflow["path"] == "fedumm.engines.nvflare.controller.FedummController"
    assert workflow["args"]["data_placement"] == "site"  # auto: exported jobs read site data
    assert server["server"] == {"task_request_interval": 0.5}  # no heart_beat_timeout: FLARE ignores a job's
    # FLARE writes only arguments that differ from the constructor's defaults.
    assert workflow["args"].get("task_timeout", DEFAULT_TASK_TIMEOUT) == config.engine.task_timeout == 14_400
    assert server["components"] == []  # no persistor: the initial adapter comes from the config seed

    client = json.loads((job / "app/config/config_fed_client.json").read_text())
    [executor] = client["executors"]
    assert executor["executor"]["path"] == "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"
    args = executor["executor"]["args"]
    assert args["execution_mode"] == "in_process" and args["task_script_path"] == "fedumm_client.py"
    assert args["server_expected_format"] == "raw" and args.get("params_exchange_format", "raw") == "raw"

    # One app for the server and every site (FLARE's @ALL): the whole config.
    assert load_run_config(job / "app/config/fedumm_config.yaml") == config
    script = (job / "app/custom/fedumm_client.py").read_text()
    assert "from fedumm.engines.nvflare.client import main" in script


def test_export_per_site_with_an_external_interpreter(tmp_path):
    config = load_run_config(
        None,
        [
            "engine.name=nvflare",
            "federation.num_clients=2",
            "engine.python=/opt/envs/janus/bin/python",
            "data.synthetic.train_samples=77",
            "data.partition.label_column=answer_type",
            "engine.sites={hospital-a: {seed: 1}, hospital-b: {data: {synthetic: {train_samples: 50}}}}",
        ],
    )
    job = export_job(config, tmp_path)
    meta = json.loads((job / "meta.json").read_text())
    assert meta["deploy_map"] == {
        "app_server": ["server"],
        "app_hospital-a": ["hospital-a"],
        "app_hospital-b": ["hospital-b"],
    }
    for site, other in (("hospital-a", "hospital-b"), ("hospital-b", "hospital-a")):
        app = job / f"app_{site}"
        client = json.loads((app / "config/config_fed_client.json").read_text())
        args = client["executors"][0]["executor"]["args"]
        assert args["execution_mode"] == "external_process"
        assert args["command"] == ["/opt/envs/janus/bin/python", "-u", "custom/fedumm_client.py"]
        assert (app / "custom/fedumm_client.py").is_file()
        assert _files(app) == {
            "config/config_fed_client.json",
            "config/fedumm_config.yaml",
            "config/fedumm_site.yaml",
            "custom/fedumm_client.py",
        }
        # Nothing of the other site, nothing of the server's data.
        assert not [p for p in app.rglob("*") if p.is_file() and other in p.read_text()]
        site_config = load_run_config(app / "config/fedumm_config.yaml")
        assert site_config.engine.sites == {}
        assert site_config.data.synthetic.train_samples == 2000 != config.data.synthetic.train_samples
        assert site_config.data.partition.label_column == "answer_type"  # clients count labels over it
        assert site_config.model == config.model and site_config.train == config.train
        # The site's own entry is its job data config.
        entry, source = P.load_site_config(site, tmp_path / "no-workspace", site_config, {}, app / "config")
        assert entry == config.engine.sites[site] and source == f"engine.sites.{site}"
    assert not (job / "app_server/custom").exists()
    assert load_run_config(job / "app_server/config/fedumm_config.yaml") == config


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (
            ["engine.client_command=bash envs/launch_janus.sh"],
            "engine.client_command: relative path 'envs/launch_janus.sh'",
        ),
        (["engine.client_command=./launch.sh --x"], "engine.client_command: relative path './launch.sh'"),
        (["engine.client_command=conda run --prefix=envs/janus"], "engine.client_command: relative path 'envs/janus'"),
        (["engine.python=venv/bin/python"], "engine.python: relative path 'venv/bin/python'"),
    ],
)
def test_export_refuses_relative_trainer_paths(tmp_path, overrides, fragment):
    config = load_run_config(None, ["engine.name=nvflare", *overrides])
    with pytest.raises(ConfigError) as info:
        export_job(config, tmp_path)
    assert str(info.value).startswith(fragment) and "absolute path" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_export_keeps_absolute_paths_and_command_names(tmp_path):
    config = load_run_config(
        None, ["engine.name=nvflare", "engine.client_command=conda run -n janus --no-capture-output python -u"]
    )
    job = export_job(config, tmp_path / "a")
    args = json.loads((job / "app/config/config_fed_client.json").read_text())["executors"][0]["executor"]["args"]
    assert args["command"] == [
        "conda",
        "run",
        "-n",
        "janus",
        "--no-capture-output",
        "python",
        "-u",
        "custom/fedumm_client.py",
    ]
    config = load_run_config(None, ["engine.name=nvflare", "engine.client_command=bash /opt/envs/launch_janus.sh"])
    job = export_job(config, tmp_path / "b")
    args = json.loads((job / "app/config/config_fed_client.json").read_text())["executors"][0]["executor"]["args"]
    assert args["command"] == ["bash", "/opt/envs/launch_janus.sh", "custom/fedumm_client.py"]


def test_heartbeat_timeout_is_refused(tmp_path):
    # FLARE ignores a job's heartbeat setting, so fedumm has no key that would pretend otherwise.
    with pytest.raises(ConfigError, match=r"engine.heartbeat_timeout: unknown key"):
        load_run_config(None, ["engine.name=nvflare", "engine.heartbeat_timeout=30"])


def test_controller_serializes_a_rounds_shared_task_once(monkeypatch):
    """FLARE hands each client a shallow copy of the round's task: its size is measured once;
    every reply is measured; the round's sizes go to the record by client id."""
    import numpy as np
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import make_copy
    from nvflare.app_common.abstract.fl_model import FLModel
    from nvflare.app_common.decomposers import numpy_decomposers
    from nvflare.app_common.utils.fl_model_utils import FLModelUtils
    from nvflare.fuel.utils import fobs

    from fedumm.engines.nvflare.controller import FedummController

    numpy_decomposers.register()  # as in every FLARE process

    calls = []
    real = fobs.dumps
    monkeypatch.setattr(fobs, "dumps", lambda obj, *a, **k: calls.append(1) or real(obj, *a, **k))

    def ctx(client: str, task: str = P.TRAIN_TASK) -> FLContext:
        peer = FLContext()
        peer.set_prop(ReservedKey.IDENTITY_NAME, client)
        fl_ctx = FLContext()
        fl_ctx.set_prop(FLContextKey.TASK_NAME, task)
        fl_ctx.set_peer_context(peer)
        return fl_ctx

    controller = FedummController()
    ids = {"site-1": 0, "site-2": 1, "site-3": 2}
    task = FLModelUtils.to_shareable(FLModel(params={P.PAYLOAD_KEY: P.pack(bytes(50_000))}))
    for site in ids:
        controller._measure("download", ctx(site), make_copy(task))
    controller._measure("download", ctx("site-1", P.SETUP_TASK), make_copy(task))  # not counted
    assert len(calls) == 1
    replies = {
        site: FLModelUtils.to_shareable(FLModel(params={P.PAYLOAD_KEY: np.zeros(n, np.uint8)}))
        for site, n in (("site-1", 40_000), ("site-3", 30_000))
    }
    for site, reply in replies.items():
        controller._measure("upload", ctx(site), reply)
    assert len(calls) == 3
    wire = controller._take_wire(ids)
    size = len(real(make_copy(task)))
    assert 50_000 < size < 50_000 + 4096
    assert wire["download"] == {"0": size, "1": size, "2": size}
    assert wire["upload"] == {"0": len(real(replies["site-1"])), "2": len(real(replies["site-3"]))}
    assert 40_000 < wire["upload"]["0"] < 40_000 + 4096
    assert wire["total"] == 3 * size + sum(wire["upload"].values())
    assert controller._take_wire(ids) == {"download": {}, "upload": {}, "total": 0}  # the next round starts at 0


def test_cli_export_implies_the_flare_engine(tmp_path, capsys):
    assert (
        main(
            [
                "export",
                "--out",
                str(tmp_path),
                "--set",
                "name=cli-job",
                "--set",
                "federation.num_clients=2",
                "--set",
                "engine.sites={site-1: {}, site-2: {}}",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"NVIDIA FLARE job written to {tmp_path / 'cli-job'}" in out
    assert f"nvflare job submit -j {tmp_path / 'cli-job'}" in out
    assert load_run_config(tmp_path / "cli-job/app_server/config/fedumm_config.yaml").engine.name == "nvflare"


def test_run_with_a_missing_interpreter_fails_before_flare_starts(tmp_path, capsys):
    code = main(
        [
            "run",
            "--set",
            "engine.name=nvflare",
            "--set",
            f"engine.python={tmp_path}/nope/python",
            "--set",
            f"output.dir={tmp_path}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedumm: error: engine.python: {tmp_path}/nope/python is not an executable file"]
    assert not (tmp_path / "quickstart").exists()
