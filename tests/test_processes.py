"""The processes the FLARE engine starts end with their starter: SIGTERM becomes an interrupt,
a child gets SIGTERM when its starter dies (Linux), and the loopback deployment's Python
processes end once orphaned. No FLARE needed: plain ``sleep`` / Python children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from fedumm import processes
from fedumm.engines.nvflare.poc import ORPHAN_WATCH

SRC = str(Path(__file__).resolve().parents[3] / "src")
linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _starter(code: str, env: dict | None = None) -> tuple[subprocess.Popen, int]:
    """A Python process running ``code``, which prints the pid of the child it starts."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": SRC, **(env or {})},
    )
    child = int(proc.stdout.readline())
    return proc, child


def _reap(starter, pid: int) -> None:
    """Whatever a test asserted: no process of its outlives it."""
    starter.kill()
    starter.wait()
    if not _gone_within(pid, 0):
        os.kill(pid, signal.SIGKILL)


@linux
def test_a_child_gets_sigterm_when_its_starter_is_killed():
    starter, child = _starter("""
        import time
        from fedumm import processes
        print(processes.popen(["sleep", "60"]).pid, flush=True)
        time.sleep(60)
    """)
    try:
        assert psutil.Process(child).is_running()
        starter.kill()  # no cleanup can run
        assert _gone_within(child, 5)
    finally:
        _reap(starter, child)


def test_sigterm_interrupts_the_wait_and_the_cleanup_runs():
    starter, child = _starter("""
        import subprocess, sys, time
        from fedumm import processes
        proc = processes.popen(["sleep", "60"])
        print(proc.pid, flush=True)
        try:
            with processes.sigterm_as_interrupt():
                time.sleep(60)
        except KeyboardInterrupt:
            processes.stop_process_tree(proc, grace=5)
            print("stopped", proc.returncode, flush=True)
            sys.exit(3)
    """)
    try:
        time.sleep(0.3)
        starter.send_signal(signal.SIGTERM)
        assert starter.wait(timeout=20) == 3
        assert starter.stdout.read().split() == ["stopped", str(-signal.SIGTERM)]
        assert _gone_within(child, 1)
    finally:
        starter.kill()
        starter.wait()


def test_stop_process_tree_ends_descendants_in_their_own_sessions():
    proc = processes.popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        import subprocess, sys, time
        inner = subprocess.Popen(["sleep", "60"], start_new_session=True)
        print(inner.pid, flush=True)
        time.sleep(60)
    """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    inner = int(proc.stdout.readline())
    processes.stop_process_tree(proc, grace=5)
    assert proc.returncode == -signal.SIGTERM
    assert _gone_within(inner, 1)


def test_deployment_processes_end_once_orphaned(tmp_path):
    """The loopback deployment's sitecustomize: a Python process whose parent was killed ends."""
    (tmp_path / "sitecustomize.py").write_text(ORPHAN_WATCH)
    starter, grandchild = _starter(
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(child.pid, flush=True)
        time.sleep(60)
    """,
        env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{SRC}"},
    )
    try:
        time.sleep(1.5)  # the grandchild's watch has started
        assert psutil.Process(grandchild).is_running()
        starter.kill()
        assert _gone_within(grandchild, 5)
    finally:
        _reap(starter, grandchild)


def test_worker_watch_names_a_client_whose_process_is_gone(tmp_path):
    """The simulator runner's watch, on a stand-in simulator whose two "workers" carry FLARE's
    worker command line: one killed is reported once, after the grace period, not before, and
    not while the job's summary exists; once both are gone, every client is dead. FLARE's own
    log line is reported at once."""
    from fedumm.engines.nvflare.runner import WORKER_MODULE, WorkerWatch

    code = textwrap.dedent(f"""
        import subprocess, sys, time
        workers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "-m", "{WORKER_MODULE}",
                                     "--client", site]) for site in ("site-1", "site-2")]
        print(" ".join(str(w.pid) for w in workers), flush=True)
        time.sleep(60)
    """)
    sim = processes.popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        site_1, site_2 = map(int, sim.stdout.readline().split())
        log, done = tmp_path / "simulator.log", tmp_path / "summary.json"
        log.write_text("2026-01-01 - INFO - Finished one task run for client: site-1\n")
        watch = WorkerWatch(sim, log, done, persistent=True, grace=0.6, scan_every=0)
        assert watch.poll() == [] and watch.sites == {"site-1", "site-2"}
        os.kill(site_2, signal.SIGKILL)
        time.sleep(0.3)
        assert watch.poll() == []  # found gone; within the grace period the simulator may end on its own
        time.sleep(0.8)
        [(site, how)] = watch.poll()
        assert site == "site-2" and WORKER_MODULE in how
        assert watch.poll() == [] and not watch.all_dead(2)  # reported once; site-1 still works
        done.write_text("{}")
        os.kill(site_1, signal.SIGKILL)
        time.sleep(1.0)
        assert watch.poll() == []  # the job had finished: its workers end normally
        done.unlink()
        watch.poll()
        time.sleep(0.8)
        assert [s for s, _ in watch.poll()] == ["site-1"] and watch.all_dead(2)

        restarting = WorkerWatch(sim, log, tmp_path / "none.json", persistent=False)
        assert restarting.poll() == []  # workers come and go between rounds
        with open(log, "a") as f:
            f.write("2026-01-01 - ERROR - Communication error with client site-1: \n")
        assert restarting.poll() == [("site-1", "FLARE logged 'Communication error with client site-1'")]
        assert not restarting.all_dead(1)  # restarted workers: a client may run again next round
    finally:
        processes.stop_process_tree(sim, grace=5)
    assert _gone_within(site_1, 2)
