"""The follower process that `loyalty serve` starts beside itself (LOYALTY_FOLLOWERS=process).

The relay and the projections follow the log in a `loyalty follow` child, on the machine's other
core, instead of sharing the request process's event loop. The child competes for the leads like
any instance (advisory locks), so a child that dies loses nothing: the supervisor starts another
one (another instance's follower may lead meanwhile), and on shutdown it is stopped last, after
the requests have drained, so that it publishes what they committed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from service.config import Settings

log = logging.getLogger(__name__)

PARENT_PIPE_VARIABLE = "LOYALTY_FOLLOWER_STDIN_IS_PARENT"
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)  # after each unexpected exit in a row; the last repeats
STABLE_SECONDS = 30.0  # a child that lived this long starts the delays over
STOP_TIMEOUT = 20.0


class Supervised:
    """A child process (`python -m service.cli ARGV`) that is restarted when it dies and never
    outlives its parent: `loyalty follow`, or a request process of `loyalty serve` (ADR 25)."""

    def __init__(
        self, argv: list[str], env: dict[str, str], *, name: str, pass_fds: tuple[int, ...] = ()
    ) -> None:
        self._argv = argv
        self._env = env
        self._name = name
        self._pass_fds = pass_fds
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name=f"{name}-supervisor", daemon=True)

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def terminate(self) -> None:
        """Stop restarting it and SIGTERM the child (it drains), without waiting."""
        self._stopping.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()

    def stop(self) -> None:
        """SIGTERM the child (it drains) and wait for it; SIGKILL if it hangs."""
        self.terminate()
        with self._lock:
            child = self._child
        if child is None:
            return
        try:
            child.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop; killing it", self._name, extra={"pid": child.pid})
            child.kill()
            child.wait()
        # Its exit code says whether it stopped cleanly (0) or crashed on the way out.
        log.info("%s stopped", self._name, extra={"pid": child.pid, "exit_code": child.returncode})
        self._thread.join(timeout=STOP_TIMEOUT)

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            # Its own session: a Ctrl-C on the terminal reaches only `serve`, which stops the
            # child after the requests have drained. The pipe on its stdin is never written;
            # the child exits when it closes, i.e. when `serve` is gone, even killed (-9).
            self._child = subprocess.Popen(  # noqa: S603 - our own interpreter and subcommand
                [sys.executable, "-m", "service.cli", *self._argv],
                env={**self._env, PARENT_PIPE_VARIABLE: "1"},
                stdin=subprocess.PIPE,
                start_new_session=True,
                pass_fds=self._pass_fds,
            )
        log.info("%s started", self._name, extra={"pid": self._child.pid})

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            child = self._child
            if child is None:
                return
            started = time.monotonic()
            code = child.wait()
            if child.stdin is not None:
                child.stdin.close()  # our end of its pipe, or one would leak with each restart
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
            log.warning("%s exited; restarting", self._name, extra={"exit_code": code, "restart_in_s": delay})
            if self._stopping.wait(delay):
                return
            self._spawn()


class FollowerProcess(Supervised):
    """Runs `loyalty follow` with the resolved settings and restarts it when it dies."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(["follow"], _child_environment(settings), name="follower process")


def _child_environment(settings: Settings) -> dict[str, str]:
    """The parent's environment with every setting as `serve` resolved it (the embedded servers'
    URLs and master key, flags given on the command line, the follower port)."""
    if settings.database_url is None or settings.nats_url is None or settings.master_key is None:
        raise ValueError("the follower process needs resolved server URLs and the master key")
    resolved = settings.with_overrides(follower_port=settings.follower_http_port)
    return {**os.environ, **resolved.to_env()}


def exit_with_parent() -> None:
    """In the child: SIGTERM ourselves (a graceful stop) when the parent's pipe closes."""
    if os.environ.get(PARENT_PIPE_VARIABLE) != "1":
        return

    # os.read on a duplicate of fd 0, not sys.stdin: a daemon thread blocked inside the
    # BufferedReader holds its lock, and the interpreter's shutdown then aborts on that lock
    # ("Fatal Python error: _enter_buffered_busy") at every clean stop. os.read holds no
    # Python-level lock, and the duplicate stays valid whatever happens to sys.stdin.
    fd = os.dup(sys.stdin.fileno())

    def watch() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        log.warning("serve process gone; follower stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
