"""The production path on loopback: provisioned startup kits, the FLARE server and two sites as
separate processes, the exported job submitted, awaited and downloaded with the admin CLI;
each site trains on its own data (one from the job's engine.sites, one from its own local
file); every process started is stopped at the end."""

from __future__ import annotations

import ipaddress
import json

import psutil
import pytest

pytest.importorskip("nvflare")

from fedumm.config import load_config  # noqa: E402
from fedumm.engines.nvflare import export_job  # noqa: E402
from fedumm.engines.nvflare.poc import LoopbackDeployment, find_run_folder  # noqa: E402
from fedumm.engines.nvflare.protocol import SITE_CONFIG_FILE  # noqa: E402

pytestmark = pytest.mark.slow


def _tree(procs) -> list[psutil.Process]:
    out = []
    for proc in procs:
        try:
            parent = psutil.Process(proc.pid)
            out += [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    return out


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def test_exported_job_runs_on_a_loopback_deployment(tmp_path, tiny_job):
    sites = {"site-1": {"seed": 1, "data": {"synthetic": {"train_samples": 30, "test_samples": 8}}},
             "site-2": {"seed": 2, "data": {"synthetic": {"train_samples": 30, "test_samples": 8}}}}
    config = load_config(None, tiny_job(tmp_path / "runs", "poc-job", "engine.name=nvflare",
                                        f"engine.sites={json.dumps(sites)}"))
    job = export_job(config, tmp_path / "jobs")

    fl = LoopbackDeployment(tmp_path / "deploy", ["site-1", "site-2"])
    started = []
    try:
        fl.provision()
        # site-2 owns its data: its local file replaces the job's entry for it.
        local = fl.site_workspace("site-2") / SITE_CONFIG_FILE
        local.write_text("seed: 5\ndata:\n  synthetic:\n    train_samples: 24\n    test_samples: 6\n")
        fl.start(timeout=180)
        started = _tree(fl.procs.values())
        job_id = fl.submit(job)
        assert fl.wait(job_id, timeout=300) == "FINISHED:COMPLETED"
        started += _tree(fl.procs.values())
        # Nothing but loopback: every socket of the deployment's processes.
        for proc in _tree(fl.procs.values()):
            try:
                conns = proc.net_connections(kind="inet")
            except psutil.NoSuchProcess:
                continue
            for conn in conns:
                assert _is_loopback(conn.laddr.ip), (proc.cmdline()[:4], conn)
                assert not conn.raddr or _is_loopback(conn.raddr.ip), (proc.cmdline()[:4], conn)
        run = find_run_folder(fl.download(job_id, tmp_path / "download"))
    finally:
        fl.stop()
    assert started and not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["round"]) for r in records] == [("federated", 0), ("federated", 1), ("federated", 2)]
    assert records[-1]["clients"] == [0, 1]
    assert records[-1]["client_metrics"]["1"]["num_samples"] == 24  # site-2 trained on its own rows
    partition = json.loads((run / "partition.json").read_text())
    assert partition["sizes"] == [30 + 8, 24 + 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nvflare_data_placement"] == "site"
    assert summary["nvflare_clients"] == {"0": "site-1", "1": "site-2"}
    assert summary["adapter_message_bytes"] < summary["nvflare_message_bytes"]["download"]
    for name in ("config.yaml", "summary.txt", "checkpoints/last.safetensors", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.yaml") == config
