"""A real FLARE deployment on loopback: provisioned startup kits, the server and every site as
separate processes started from their kits' start scripts, jobs submitted, awaited and
downloaded with the ``nvflare`` CLI and an admin startup kit. The production path, on one
machine, contacting no address but 127.0.0.1.

    with LoopbackDeployment(root, ["site-1", "site-2"]) as fl:
        job_id = fl.submit(job_dir)
        fl.wait(job_id, timeout=600)
        result = fl.download(job_id, root / "results")

Everything lives under ``root`` (startup kits, workspaces, FLARE's job and snapshot stores,
HOME for the CLI's settings, TMPDIR for every process's temporary files), and ``stop`` (also
on leaving the ``with`` block, whatever happened, SIGTERM included) ends every process this
object started, their children included. The processes also get SIGTERM when the thread that
started them ends (Linux), so a driver killed outright does not leave the server behind: use
the deployment from the thread that starts it. FLARE's job processes (children of the server
and the sites) end once orphaned: every Python process of the deployment watches its parent
(a ``sitecustomize`` on the deployment's PYTHONPATH).

``python -m fedumm.engines.nvflare.poc JOB_DIR`` runs a job folder this way (``make nvflare-poc``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from fedumm import processes
from fedumm.engines.nvflare.protocol import RUN_FOLDER
from fedumm.engines.nvflare.runner import child_env
from fedumm.errors import FedummError
from fedumm.processes import sigterm_as_interrupt, stop_process_tree

ADMIN = "admin@fedumm.local"
SERVER = "localhost"  # a loopback name: FLARE's server then listens on 127.0.0.1 only
PROJECT = "fedumm_loopback"
# Classes of fedumm a site must allow when jobs carry no custom code (see README, NVIDIA FLARE).
FEDUMM_CLASSES = ["fedumm.engines.nvflare.", "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor"]


# Loaded by every Python process of the deployment (PYTHONPATH): once its parent is gone (the
# driver, or the FLARE parent of a job process, was killed outright), the process ends too.
ORPHAN_WATCH = """\
# written by fedumm.engines.nvflare.poc: end this process when its parent is gone
import os, signal, threading, time

def _fedumm_orphan_watch(parent=os.getppid()):
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(15.0)
    os.kill(os.getpid(), signal.SIGKILL)

threading.Thread(target=_fedumm_orphan_watch, name="fedumm-orphan-watch", daemon=True).start()
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def authorize_fedumm(local_dir: Path, storage_root: Path | None = None) -> Path:
    """Write the site's ``local/resources.json`` from its default, allowing fedumm's FLARE
    classes; with ``storage_root``, FLARE's job and snapshot stores move there (server)."""
    default = local_dir / "resources.json.default"
    target = local_dir / "resources.json"
    resources = json.loads((target if target.is_file() else default).read_text())
    allow = resources.setdefault("class_allow_list", [])
    if "*" not in allow:
        allow += [c for c in FEDUMM_CLASSES if c not in allow]
    if storage_root is not None:
        for comp in resources.get("components", []):
            if comp.get("id") == "job_manager":
                comp.setdefault("args", {})["uri_root"] = str(storage_root / "jobs-storage")
        persistor = resources.get("snapshot_persistor", {}).get("args", {}).get("storage", {}).get("args")
        if persistor is not None:
            persistor["root_dir"] = str(storage_root / "snapshot-storage")
    target.write_text(json.dumps(resources, indent=4))
    return target


class LoopbackDeployment:
    def __init__(
        self,
        root: str | Path,
        sites: Sequence[str],
        *,
        python: str = sys.executable,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log: Callable[[str], None] = lambda msg: None,
    ):
        self.root = Path(root).resolve()
        self.sites = list(sites)
        self.python = python
        self.port = port or free_port()
        self.log = log
        self.procs: dict[str, subprocess.Popen] = {}
        self._env = child_env(env)
        self._signals = contextlib.ExitStack()

    # ------------------------------------------------------------------ layout

    def kit(self, name: str) -> Path:
        return self.root / "prod" / PROJECT / "prod_00" / name

    @property
    def admin_kit(self) -> Path:
        return self.kit(ADMIN)

    def site_workspace(self, site: str) -> Path:
        return self.kit(site)

    def env(self) -> dict[str, str]:
        """The kits' start scripts run ``python3``: ours, first on PATH. HOME and TMPDIR are
        private so the CLI's settings (~/.nvflare) and FLARE's temporary files (job uploads,
        streamed logs) stay inside the deployment."""
        env = dict(self._env)
        env["PATH"] = os.pathsep.join([str(self.root / "bin"), env.get("PATH", "")])
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(self.root / "pyhooks"), env.get("PYTHONPATH", "")] if p)
        env["HOME"] = str(self.root / "home")
        env["TMPDIR"] = str(self.root / "tmp")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------------ provision / start / stop

    def provision(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "home").mkdir(exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        bin_dir = self.root / "bin"
        bin_dir.mkdir(exist_ok=True)
        # A wrapper, not a symlink: a virtual environment's python must be started by its own path.
        wrapper = bin_dir / "python3"
        wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(self.python)} "$@"\n')
        wrapper.chmod(0o755)
        (self.root / "pyhooks").mkdir(exist_ok=True)
        (self.root / "pyhooks" / "sitecustomize.py").write_text(ORPHAN_WATCH)
        project = {
            "api_version": 3,
            "name": PROJECT,
            "description": "fedumm loopback deployment",
            "participants": [
                {
                    "name": SERVER,
                    "type": "server",
                    "org": "fedumm",
                    "default_host": "127.0.0.1",
                    "fed_learn_port": self.port,
                    "admin_port": self.port,
                },
                {"name": ADMIN, "type": "admin", "org": "fedumm", "role": "project_admin"},
                *({"name": site, "type": "client", "org": "fedumm"} for site in self.sites),
            ],
            "builders": [
                {
                    "path": "nvflare.lighter.impl.workspace.WorkspaceBuilder",
                    "args": {"template_file": "master_template.yml"},
                },
                {"path": "nvflare.lighter.impl.static_file.StaticFileBuilder", "args": {"config_folder": "config"}},
                {"path": "nvflare.lighter.impl.cert.CertBuilder"},
                {"path": "nvflare.lighter.impl.signature.SignatureBuilder"},
            ],
        }
        project_file = self.root / "project.yml"
        project_file.write_text(yaml.safe_dump(project, sort_keys=False))
        shutil.rmtree(self.root / "prod", ignore_errors=True)
        self._cli(["provision", "-p", str(project_file), "-w", str(self.root / "prod"), "--force"], timeout=120)
        authorize_fedumm(self.kit(SERVER) / "local", storage_root=self.root / "storage")
        for site in self.sites:
            authorize_fedumm(self.kit(site) / "local")
        self.log(f"provisioned {PROJECT} on 127.0.0.1:{self.port} under {self.root / 'prod'}")

    def _start(self, name: str) -> None:
        script = self.kit(name) / "startup" / "sub_start.sh"
        with open(self.root / f"{name}.out", "ab") as out:
            # --once: the kit's script execs FLARE directly (no restart loop); new session so
            # stop() can end the whole group.
            self.procs[name] = processes.popen(
                ["bash", str(script), "--once"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env(),
            )

    def start(self, timeout: float = 120) -> None:
        self._start(SERVER)
        deadline = time.monotonic() + timeout
        while not self._port_open():
            self._check_alive(SERVER)
            if time.monotonic() > deadline:
                raise FedummError(
                    f"FLARE server did not listen on 127.0.0.1:{self.port} within {timeout:g}s "
                    f"(log: {self.root / (SERVER + '.out')})"
                )
            time.sleep(0.5)
        for site in self.sites:
            self._start(site)
        while not all(self._registered(site) for site in self.sites):
            for name in self.procs:
                self._check_alive(name)
            if time.monotonic() > deadline:
                raise FedummError(f"FLARE sites did not register within {timeout:g}s (logs under {self.root})")
            time.sleep(0.5)
        self.log(f"server and {len(self.sites)} sites running")

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def _registered(self, site: str) -> bool:
        out = self.root / f"{site}.out"
        return out.is_file() and "Successfully registered client" in out.read_text(errors="replace")

    def _check_alive(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise FedummError(f"FLARE {name} exited with status {proc.returncode} (log: {self.root / (name + '.out')})")

    def stop(self) -> None:
        """End every process started here (sites first, then the server) and their children."""
        for name in [*reversed(self.sites), SERVER]:
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop_process_tree(proc)
        self.procs.clear()

    def __enter__(self) -> LoopbackDeployment:
        # SIGTERM while inside the block ends it like Ctrl-C: __exit__ stops every process.
        self._signals.enter_context(sigterm_as_interrupt())
        try:
            self.provision()
            self.start()
        except BaseException:
            try:
                self.stop()
            finally:
                self._signals.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._signals.close()

    # ------------------------------------------------------------------ admin CLI

    def _cli(self, args: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [self.python, "-m", "nvflare.cli", *args]
        try:
            proc = processes.run(cmd, timeout, capture_output=True, text=True, env=self.env(), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise FedummError(f"nvflare {' '.join(args[:2])} did not finish within {timeout:g}s") from None
        if check and proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
            raise FedummError(f"nvflare {' '.join(args[:2])} failed ({proc.returncode}): {' | '.join(tail)}")
        return proc

    def _admin(self, args: list[str], timeout: float) -> dict:
        proc = self._cli(["--format", "json", *args, "--startup-kit", str(self.admin_kit)], timeout, check=False)
        try:
            reply = json.loads(proc.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise FedummError(
                f"nvflare {' '.join(args[:2])}: no JSON reply ({(proc.stdout + proc.stderr)[-300:]})"
            ) from None
        return reply

    def submit(self, job_dir: str | Path) -> str:
        reply = self._admin(["job", "submit", "-j", str(job_dir)], timeout=120)
        if reply.get("status") != "ok":
            raise FedummError(f"nvflare job submit: {reply.get('message')}")
        job_id = reply["data"]["job_id"]
        self.log(f"submitted {job_dir} as job {job_id}")
        return job_id

    def wait(self, job_id: str, timeout: float) -> str:
        """Wait for the job to end; returns its final status, raises if it did not finish OK."""
        reply = self._admin(
            ["job", "wait", job_id, "--timeout", str(int(timeout)), "--interval", "1"], timeout=timeout + 60
        )
        status = (reply.get("data") or {}).get("status", "")
        if reply.get("status") != "ok":
            raise FedummError(f"FLARE job {job_id}: {reply.get('message')} (status {status or '?'})")
        self.log(f"job {job_id}: {status}")
        return status

    def download(self, job_id: str, dest: str | Path) -> Path:
        dest = Path(dest)
        reply = self._admin(["job", "download", job_id, "-o", str(dest), "--force"], timeout=300)
        if reply.get("status") != "ok":
            raise FedummError(f"nvflare job download: {reply.get('message')}")
        return dest

    def abort(self, job_id: str) -> None:
        self._admin(["job", "abort", job_id, "--force"], timeout=60)


def find_run_folder(download: Path) -> Path:
    """The fedumm run folder inside a downloaded job result (the server's job workspace)."""
    found = sorted(p.parent for p in download.rglob("summary.json") if p.parent.name == RUN_FOLDER)
    if not found:
        raise FedummError(f"no {RUN_FOLDER}/summary.json in the downloaded job {download}")
    return found[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedumm.engines.nvflare.poc", description=__doc__.splitlines()[0])
    parser.add_argument("job", help="exported job folder (fedumm export --out DIR)")
    parser.add_argument("--root", default=None, help="deployment folder (default: a temporary one, removed)")
    parser.add_argument("--sites", default="site-1,site-2", help="comma-separated site names")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the job")
    parser.add_argument("--out", default=None, help="copy the job's fedumm run folder here")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="fedumm-poc-"))
    try:
        with sigterm_as_interrupt(), LoopbackDeployment(root, args.sites.split(","), log=print) as fl:
            job_id = fl.submit(args.job)
            fl.wait(job_id, args.timeout)
            run = find_run_folder(fl.download(job_id, root / "download"))
        print((run / "summary.txt").read_text())
        if args.out:
            shutil.copytree(run, args.out, dirs_exist_ok=True)
            summary_path = Path(args.out) / "summary.json"
            summary = json.loads(summary_path.read_text())
            summary["run_dir"] = str(Path(args.out))
            summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
            print(f"run folder copied to {args.out}")
    except FedummError as exc:
        print(f"fedumm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedumm: interrupted; stopped the deployment's processes", file=sys.stderr)
        return 130
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
