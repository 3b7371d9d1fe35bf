"""A JetStream cluster of nats-servers on loopback, for the tests of a cluster losing a node.

Each node is a `NatsServer` (devtools/embedded/nats.py) with a `ClusterNode`: its own store and
log under `data_dir/<name>`, fixed client, route and monitoring ports (so that a killed node
restarts where its peers and clients look for it), one password shared by all. Production runs
on a cluster of its own (deploy/ has the three-node one for Compose and Kubernetes).
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from devtools.embedded import nats
from devtools.embedded.credentials import load_or_create_credentials
from devtools.embedded.files import tail
from devtools.embedded.nats import ClusterNode, NatsServer
from devtools.embedded.ports import HOST, free_port
from devtools.embedded.process import POLL, START_TIMEOUT, EmbeddedServersError, send_signal, wait_or_kill

CLUSTER_NAME = "loyalty"


class NatsCluster:
    """`size` nats-servers with JetStream, routed to each other; a context manager.

    `url` names every node (comma-separated, as LOYALTY_NATS_URL accepts), so a client reaches
    whichever is up. `kill(i)` and `restart(i)` take a node down and bring it back on its ports.
    """

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._password = load_or_create_credentials(self.data_dir / "credentials.json").nats_password
        self._size = size
        self._configure()

    def _configure(self) -> None:
        """Each node's store, ports and routes (new ports each time: see `start`)."""
        size = self._size
        route_ports = tuple(free_port() for _ in range(size))
        self.nodes = [
            NatsServer(
                self.data_dir / f"n{i + 1}",
                ClusterNode(
                    cluster=CLUSTER_NAME,
                    server_name=f"n{i + 1}",
                    route_port=route_ports[i],
                    routes=route_ports,
                    monitor_port=free_port(),
                ),
            )
            for i in range(size)
        ]
        self.ports = [free_port() for _ in range(size)]

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Every node's client URL with the credentials, comma-separated."""
        return ",".join(self.node_url(i) for i in range(len(self.nodes)))

    def node_url(self, index: int) -> str:
        return self.nodes[index].url(self._password, self.ports[index])

    def server_name(self, index: int) -> str:
        node = self.nodes[index].node
        assert node is not None
        return node.server_name

    def start(self) -> None:
        """Start every node and wait until JetStream is up on each (a meta leader elected);
        on failure stop the nodes started (`__exit__` does not run when `__enter__` raised).

        A cluster that has not formed is started once more, afresh on new ports: one CI run in
        about thirty saw three healthy-looking nodes never elect a JetStream meta leader in 30 s,
        and this is the tests' scaffolding, not the service under test. The first attempt's
        state goes to stderr, so that a second occurrence can be diagnosed.
        """
        try:
            self._start_once()
        except EmbeddedServersError as first:
            print(f"NATS cluster did not form; starting it afresh. {first}", file=sys.stderr)
            for server in self.nodes:
                shutil.rmtree(server.data_dir, ignore_errors=True)
            self._configure()
            self._start_once()

    def _start_once(self) -> None:
        try:
            for index, server in enumerate(self.nodes):
                server.data_dir.mkdir(exist_ok=True)
                server.spawn(self._password, self.ports[index], exact=True)
            for index in range(len(self.nodes)):
                self._wait(index)
        except BaseException:
            self.stop()
            raise

    def kill(self, index: int) -> None:
        """SIGKILL one node: no goodbye to its peers or clients, as when a machine dies."""
        proc = self.nodes[index].proc
        if proc is not None:
            send_signal(proc, signal.SIGKILL)
            proc.wait()

    def restart(self, index: int) -> None:
        """Start a stopped node again on its ports and store; wait until it has rejoined."""
        self.nodes[index].spawn(self._password, self.ports[index], exact=True)
        self._wait(index)

    def stop(self) -> None:
        """Stop every node (gracefully, then SIGKILL one that overstays)."""
        pending = []
        for server in self.nodes:
            if server.proc is not None:
                send_signal(server.proc, signal.SIGTERM)
                pending.append((server.proc, nats.STOP_TIMEOUT, f"nats-server {server.data_dir.name}"))
        wait_or_kill(pending)
        for server in self.nodes:
            server.proc = None

    def _wait(self, index: int) -> None:
        """Until the node accepts clients and its /healthz says JetStream is current."""
        server = self.nodes[index]
        server.wait(self._password, self.ports[index])
        assert server.node is not None
        healthz = f"http://{HOST}:{server.node.monitor_port}/healthz"
        deadline = time.monotonic() + START_TIMEOUT
        said = ""
        while True:
            try:
                with urllib.request.urlopen(healthz, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except urllib.error.HTTPError as refused:  # 503 while it has no meta leader or is catching up
                said = refused.read().decode(errors="replace")
            except (urllib.error.URLError, OSError) as unreachable:
                said = repr(unreachable)
            if server.proc is not None and server.proc.poll() is not None:
                raise EmbeddedServersError(f"nats-server {server.data_dir.name} exited:\n{tail(server.log)}")
            if time.monotonic() > deadline:
                raise EmbeddedServersError(
                    f"nats-server {server.data_dir.name} not healthy within {START_TIMEOUT:.0f} s"
                    f" (/healthz: {said})\n--- {server.log} ---\n{tail(server.log)}"
                )
            time.sleep(POLL)
