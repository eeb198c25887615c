"""The production path on loopback: provisioned startup kits, the FLARE server and three sites as
separate processes, exported jobs submitted, awaited and downloaded with the admin CLI;
each site trains on its own data (one from the job's engine.sites, one from its own local
file); a job goes on without a site that died (missing from the later rounds); every process
started is stopped at the end, after a failure or a SIGTERM too, and none of them holds a
socket on anything but loopback."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("nvflare")

from fedumm.engines.nvflare import export_job  # noqa: E402
from fedumm.engines.nvflare.poc import LoopbackDeployment, find_run_folder  # noqa: E402
from fedumm.engines.nvflare.protocol import SITE_CONFIG_FILE  # noqa: E402
from fedumm.engines.nvflare.runner import child_env  # noqa: E402
from fedumm.errors import FedummError  # noqa: E402
from fedumm.processes import stop_process_tree  # noqa: E402
from fedumm.validation import load_run_config  # noqa: E402

pytestmark = pytest.mark.slow


class _Sampler:
    """Samples, while the deployment runs, every process of its tree and every inet socket they
    hold."""

    def __init__(self, fl: LoopbackDeployment):
        self.fl, self.seen, self.sockets = fl, {}, []
        self.cmdlines: dict[int, str] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        for proc in list(self.fl.procs.values()):
            try:
                parent = psutil.Process(proc.pid)
                tree = [parent, *parent.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in tree:
                self.seen.setdefault(p.pid, p)
                try:
                    self.cmdlines.setdefault(p.pid, " ".join(p.cmdline()))
                    self.sockets += [(p.pid, c) for c in p.net_connections(kind="inet")]
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass

    def _run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            time.sleep(1.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def _is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.split("%")[0]).is_loopback


def _alive(procs) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _is_job_process(cmd: str) -> bool:
    return "app.client.worker_process" in cmd or "app.server.runner_process" in cmd


def _job_processes(procs) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if _is_job_process(" ".join(p.cmdline())):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def _wait_for_rounds(metrics: Path, records: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.is_file() and metrics.read_text().count("\n") >= records):
        assert time.monotonic() < deadline, f"{metrics}: fewer than {records} records after {timeout:g}s"
        time.sleep(0.2)


SITES = {
    "site-1": {"seed": 1, "data": {"synthetic": {"train_samples": 30, "test_samples": 8}}},
    "site-2": {"seed": 2, "data": {"synthetic": {"train_samples": 30, "test_samples": 8}}},
}
THREE_SITES = {**SITES, "site-3": {"seed": 3, "data": {"synthetic": {"train_samples": 30, "test_samples": 8}}}}
# Seconds a round of the three-site job waits for its sites: ample for the live ones on a busy
# machine, short enough that the rounds without the dead site stay quick.
ROUND_TIMEOUT = 30


def _records(metrics: Path) -> list[dict]:
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def _lines(metrics: Path) -> int:
    """Complete records in a metrics.jsonl that may be in the middle of a write."""
    return metrics.read_text().count("\n") if metrics.is_file() else 0


def _kill_site(fl: LoopbackDeployment, site: str) -> int:
    """The site is lost outright (its machine gone): SIGKILL its FLARE parent and job processes at
    once, so none of them reports anything to the server. Returns how many were killed."""
    parent = psutil.Process(fl.procs[site].pid)
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        p.kill()
    return len(procs)


def test_exported_job_runs_on_a_loopback_deployment(tmp_path, tiny_job, monkeypatch):
    """Three jobs at once: one to completion on site-1 and site-2 with secure aggregation; one
    whose site-2 job process dies after round 1 (FLARE fails the job, FINISHED:EXECUTION_EXCEPTION;
    the server's run folder keeps round 1); one on three sites whose site-3 is lost after round 1
    (the job completes, the later rounds without site-3). Then teardown after a failure: nothing ever started is left,
    and no socket was anything but loopback."""
    outer_tmp = tmp_path / "outer-tmp"
    outer_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(outer_tmp))  # the FLARE processes must not use it
    config = load_run_config(
        None,
        tiny_job(
            tmp_path / "runs",
            "poc-job",
            "engine.name=nvflare",
            f"engine.sites={json.dumps(SITES)}",
            "privacy.secure_aggregation={threshold: 2}",  # its extra steps run as FLARE tasks
        ),
    )
    job = export_job(config, tmp_path / "jobs")
    failing = export_job(
        load_run_config(
            None,
            tiny_job(
                tmp_path / "runs",
                "poc-fail",
                "engine.name=nvflare",
                "federation.rounds=100",  # killed after round 1: never reaches the end
                f"engine.sites={json.dumps(SITES)}",
            ),
        ),
        tmp_path / "jobs",
    )
    surviving = export_job(
        load_run_config(
            None,
            tiny_job(
                tmp_path / "runs",
                "poc-lost-site",
                "engine.name=nvflare",
                "federation.num_clients=3",
                "federation.rounds=3",
                "train.local_steps=8",  # rounds long enough that the kill lands before the last one
                f"federation.round_timeout={ROUND_TIMEOUT}",
                f"engine.sites={json.dumps(THREE_SITES)}",
            ),
        ),
        tmp_path / "jobs",
    )

    # After a job, FLARE's server waits for every site's outcome report before it publishes the
    # status (900 s by default); a lost site never sends one.
    env = {**os.environ, "NVFLARE_CLIENT_OUTCOME_WAIT_TIMEOUT": "10"}
    fl = LoopbackDeployment(tmp_path / "deploy", ["site-1", "site-2", "site-3"], env=env)
    sampler = _Sampler(fl)
    with pytest.raises(RuntimeError, match="a failure in the driver"):
        try:
            fl.provision()
            # site-2 owns its data: its local file replaces the job's entry for it.
            local = fl.site_workspace("site-2") / SITE_CONFIG_FILE
            local.write_text("seed: 5\ndata:\n  synthetic:\n    train_samples: 24\n    test_samples: 6\n")
            fl.start(timeout=180)
            with sampler:
                # The longest job first: FLARE's scheduler starts one job at a time.
                lost_id = fl.submit(surviving)
                fail_id = fl.submit(failing)
                job_id = fl.submit(job)
                lost_metrics = fl.kit("localhost") / lost_id / "fedumm_run" / "metrics.jsonl"
                fail_metrics = fl.kit("localhost") / fail_id / "fedumm_run" / "metrics.jsonl"
                # site-3 is lost outright once the lost-site job has evaluated round 0; site-2's job
                # process of the failing job dies (site-2 itself lives on) once its round 1 is recorded.
                deadline = time.monotonic() + 600  # generous: three jobs on 2 loaded cores
                done_at_kill = None
                victims = None
                while done_at_kill is None or victims is None:
                    assert time.monotonic() < deadline, "round 1 of the jobs to kill never came"
                    if done_at_kill is None and _lines(lost_metrics) >= 1:  # set up, round 0 evaluated
                        sampler.sample()  # what is about to be killed, for the teardown check
                        assert _kill_site(fl, "site-3") >= 2  # its FLARE parent and the job's process
                        done_at_kill = _lines(lost_metrics)
                    if victims is None and _lines(fail_metrics) >= 2:
                        site_2 = psutil.Process(fl.procs["site-2"].pid).children(recursive=True)
                        victims = [p for p in _job_processes(site_2) if fail_id in p.cmdline()]
                        assert len(victims) == 1, victims
                        victims[0].kill()
                    time.sleep(0.2)
                assert fl.wait(job_id, timeout=300) == "FINISHED:COMPLETED"
                with pytest.raises(FedummError, match=r"status FINISHED:EXECUTION_EXCEPTION"):
                    fl.wait(fail_id, timeout=120)
                assert fl.wait(lost_id, timeout=3 * ROUND_TIMEOUT + 120) == "FINISHED:COMPLETED"
                sampler.sample()
            run = find_run_folder(fl.download(job_id, tmp_path / "download"))
            failed = fl.download(fail_id, tmp_path / "download-failed")
            survived = find_run_folder(fl.download(lost_id, tmp_path / "download-lost"))
            raise RuntimeError("a failure in the driver")
        finally:
            fl.stop()
    started = list(sampler.seen.values())
    assert sum(map(_is_job_process, sampler.cmdlines.values())) >= 10  # server + 2 sites twice, server + 3 sites
    assert not _alive(started)

    # Nothing but loopback, sampled while the jobs ran.
    assert any(c.raddr and c.raddr.port == fl.port for _, c in sampler.sockets)
    for pid, conn in sampler.sockets:
        assert _is_loopback(conn.laddr.ip), (pid, conn)
        assert not conn.raddr or _is_loopback(conn.raddr.ip), (pid, conn)
    assert not list(outer_tmp.iterdir())  # temporary files stayed in the deployment

    records = _records(run / "metrics.jsonl")
    assert [(r["phase"], r["round"]) for r in records] == [("federated", 0), ("federated", 1), ("federated", 2)]
    assert records[-1]["clients"] == [0, 1]
    assert records[-1]["client_metrics"]["1"]["num_samples"] == 24  # site-2 trained on its own rows
    assert records[-1]["client_metrics"]["0"]["num_samples"] == 30  # site-1 on the job's entry for it
    assert all(r["secure_aggregation"]["survivors"] == 2 for r in records[1:])  # the server saw only the sum
    assert set(records[-1]["nvflare_bytes"]["exchange"]) == {"advertise_keys", "share_keys", "masked_input", "unmask"}
    partition = json.loads((run / "partition.json").read_text())
    assert partition["sizes"] == [30 + 8, 24 + 6]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nvflare_data_placement"] == "site" and summary["secure_aggregation"] is True
    assert summary["nvflare_clients"] == {"0": "site-1", "1": "site-2"}
    assert summary["adapter_message_bytes"] < summary["nvflare_message_bytes"]["download"]
    for name in ("config.yaml", "summary.txt", "checkpoints/last.safetensors", "adapter/adapter_model.safetensors"):
        assert (run / name).is_file(), name
    assert load_run_config(run / "config.yaml") == config

    [kept] = [p.parent for p in failed.rglob("metrics.jsonl") if p.parent.name == "fedumm_run"]
    rounds = [r["round"] for r in _records(kept / "metrics.jsonl")]
    assert rounds[:2] == [0, 1] and len(rounds) < 101 and not (kept / "summary.json").exists()

    # The lost site: every round ran; rounds recorded before the kill had site-3's reply, the
    # rounds that started after it (round done_at_kill may have had it already) do not.
    lost = _records(survived / "metrics.jsonl")
    assert [r["round"] for r in lost] == [0, 1, 2, 3]
    for record in lost[1:]:
        assert record["clients"] == [0, 1, 2]  # site-3 is still sampled: a site may come back
        answered = set(record["client_metrics"])
        assert answered == set(record["bytes"]["upload"]) == set(record["nvflare_bytes"]["upload"])
        assert {"0", "1"} <= answered  # the live sites always answered in time
        if record["round"] < done_at_kill:
            assert "2" in answered, record["round"]
        elif record["round"] > done_at_kill:
            assert "2" not in answered, record["round"]
            assert record["missing"] == [2]  # the loop's record of the missing clients
    after = [r for r in lost if r["round"] > done_at_kill]
    assert after and all("2" not in r["client_metrics"] for r in after), done_at_kill
    assert json.loads((survived / "summary.json").read_text())["nvflare_clients"]["2"] == "site-3"
    assert (survived / "adapter" / "adapter_model.safetensors").is_file()


def test_sigterm_to_the_driver_stops_every_process(tmp_path, tiny_job):
    """``python -m fedumm.engines.nvflare.poc`` gets SIGTERM in the middle of a job: it stops the
    server, the sites and their job processes before it exits."""
    config = load_run_config(
        None,
        tiny_job(
            tmp_path / "runs",
            "poc-term",
            "engine.name=nvflare",
            "federation.rounds=30",
            f"engine.sites={json.dumps(SITES)}",
        ),
    )
    job = export_job(config, tmp_path / "jobs")
    root = tmp_path / "deploy"
    out = tmp_path / "driver.out"
    with open(out, "wb") as log:
        driver = subprocess.Popen(
            [sys.executable, "-m", "fedumm.engines.nvflare.poc", str(job), "--root", str(root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(),
        )
    try:
        seen: dict[int, psutil.Process] = {}
        deadline = time.monotonic() + 240
        while len(_job_processes(seen.values())) < 3:  # the server's and both sites' job processes
            assert driver.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            for p in psutil.Process(driver.pid).children(recursive=True):
                seen.setdefault(p.pid, p)
            time.sleep(0.2)
        assert len(seen) >= 6
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=60) == 130
        gone = time.monotonic() + 5
        while _alive(seen.values()) and time.monotonic() < gone:
            time.sleep(0.2)
        assert not _alive(seen.values())
        assert "interrupted; stopped the deployment's processes" in out.read_text()
    finally:
        if driver.poll() is None:
            stop_process_tree(driver)
