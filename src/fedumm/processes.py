"""Child processes fedumm starts (FLARE's simulator, a loopback deployment's server and sites,
the ``nvflare`` CLI) and how they end: with their starter, on SIGTERM, or stopped with every
descendant. No nvflare import here.

- ``popen``: ``subprocess.Popen`` in a new session whose child gets SIGTERM when the starting
  thread ends (Linux ``PR_SET_PDEATHSIG``), so a driver killed with SIGKILL does not leave the
  FLARE server behind. The signal reaches the direct child (FLARE's start scripts and the
  simulator ``exec`` Python, which then stops its own job processes).
- ``sigterm_as_interrupt``: SIGTERM raises KeyboardInterrupt in the main thread, so the
  ``finally`` / ``with`` blocks that stop the processes run.
- ``stop_process_tree``: SIGTERM the group and every descendant, SIGKILL what is left.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import psutil

STOP_GRACE_SECONDS = 10.0
_PR_SET_PDEATHSIG = 1


def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


# Looked up here, once: the forked child only calls the function (no dlopen between fork and exec).
_PRCTL = _load_prctl()


def die_with_parent_preexec():
    """A ``preexec_fn`` making the child get SIGTERM when the thread that starts it ends (None
    where prctl is unavailable)."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def popen(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start ``cmd`` in its own session, dying with the starting thread (see module doc)."""
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=die_with_parent_preexec(), **kwargs)


def run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for short CLI calls, dying with the starting thread too."""
    return subprocess.run(cmd, timeout=timeout, preexec_fn=die_with_parent_preexec(), **kwargs)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside: SIGTERM raises KeyboardInterrupt (as Ctrl-C does), so the cleanup around
    the wait runs and stops the processes. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_process_tree(proc: subprocess.Popen, grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the process's group and every descendant (job processes, external trainers in
    their own sessions), then SIGKILL whatever is left after ``grace`` seconds. ``proc`` itself
    is reaped through Popen, so its ``returncode`` says how it ended."""
    try:
        procs = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
    except psutil.NoSuchProcess:
        procs = []
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # its session's group: also strays of a finished process
    except (ProcessLookupError, PermissionError):
        if proc.poll() is None:
            proc.terminate()
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
