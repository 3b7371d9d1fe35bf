"""`loyalty serve` with several request processes on one port (LOYALTY_PROCESSES, ADR 25).

The parent binds the port once and starts N children (`loyalty serve` again, told by
REQUEST_PROCESS_VARIABLE which one it is), each accepting on the inherited socket and listening
on a Unix socket of its own for what its siblings forward to it (service/routing.py). The
parent serves nothing: it supervises the children (restarted when they die, like the follower
process) and, on SIGTERM or Ctrl-C, stops them all at once and waits for each to drain.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from service.config import Settings
from service.followers import Supervised, _child_environment

log = logging.getLogger(__name__)

# Set by the parent in each child's environment: "INDEX LISTEN_FD SOCKETS_DIR".
REQUEST_PROCESS_VARIABLE = "LOYALTY_REQUEST_PROCESS"


@dataclass(frozen=True, slots=True)
class RequestProcess:
    """Who this request process is among its siblings, and where each of them listens."""

    index: int
    count: int
    listen_fd: int
    sockets_dir: Path

    def socket_path(self, index: int) -> str:
        """The Unix socket request process `index` listens on for forwarded requests."""
        return str(self.sockets_dir / f"{index}.sock")

    @property
    def own_socket_path(self) -> str:
        return self.socket_path(self.index)

    def listener(self) -> socket.socket:
        """The port's listening socket, inherited from the parent."""
        return socket.socket(fileno=self.listen_fd)


def this_request_process(settings: Settings) -> RequestProcess | None:
    """In a child started by `serve_processes`: which one it is; None in any other process."""
    raw = os.environ.get(REQUEST_PROCESS_VARIABLE)
    if not raw:
        return None
    index, fd, directory = raw.split(" ", 2)
    return RequestProcess(int(index), settings.processes, int(fd), Path(directory))


def bind(settings: Settings) -> socket.socket:
    """The port's listening socket, bound once by the parent and shared by the children."""
    sock = socket.create_server((settings.host, settings.port), backlog=2048, reuse_port=False)
    sock.set_inheritable(True)
    return sock


def serve_processes(settings: Settings) -> None:
    """Run `settings.processes` request processes on the port until SIGTERM/SIGINT, then stop
    them together (each finishes its requests in flight) and return."""
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    listener = bind(settings)
    sockets_dir = Path(tempfile.mkdtemp(prefix="loyalty-processes-"))
    env = _child_environment(settings)
    children = [
        Supervised(
            ["serve"],
            {**env, REQUEST_PROCESS_VARIABLE: f"{index} {listener.fileno()} {sockets_dir}"},
            name=f"request process {index}",
            pass_fds=(listener.fileno(),),
        )
        for index in range(settings.processes)
    ]
    previous = {sig: signal.signal(sig, stopping) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for child in children:
            child.start()
        log.info(
            "serving with request processes",
            extra={"processes": settings.processes, "port": settings.port, "host": settings.host},
        )
        while not stop.wait(1.0):
            pass
    finally:
        # All at once: each drains its own requests, and a request forwarded to a sibling that is
        # stopping too is still answered (a stopping process finishes what it has accepted).
        for child in children:
            child.terminate()
        listener.close()  # the children's copies keep it open until they have all stopped
        for child in children:
            child.stop()
        shutil.rmtree(sockets_dir, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
