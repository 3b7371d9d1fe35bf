"""EmbeddedServers: a PostgreSQL and a nats-server sharing one data directory and its lock.

Both listen on loopback and ask for a password generated on first use and kept in the data dir
(credentials.json, mode 0600), so other local users cannot reach the ledger's data. While they
run, a supervisor thread per server reaps it if it dies and starts it again, with back-off, on
the same port: the URLs stay valid and clients reconnect.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from devtools.embedded import nats, postgres
from devtools.embedded.credentials import Credentials, load_or_create_credentials, mask_password
from devtools.embedded.files import rotate_log, write_atomically
from devtools.embedded.process import EmbeddedServersError, send_signal, supervise, wait_or_kill
from devtools.embedded.system_user import pg_runas

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerUrls:
    """Where the servers can be reached (the URLs carry the credentials)."""

    database_url: str
    nats_url: str


class EmbeddedServers:
    """A PostgreSQL and a nats-server (JetStream) keeping their data in `data_dir`.

    Use as a context manager (`with EmbeddedServers(path) as urls:`) or call `start()` / `stop()`.
    Only one instance at a time may use a data directory (an advisory lock enforces it).
    """

    def __init__(self, data_dir: Path, *, write_servers_json: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.write_servers_json = write_servers_json
        self.urls: ServerUrls | None = None
        self._postgres = postgres.PostgresServer(self.data_dir)
        self._nats = nats.NatsServer(self.data_dir)
        self._lock_fd: int | None = None
        # Set while stopping, so that the supervisors do not restart what we stop; the lock
        # keeps a restart and a stop from crossing.
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()
        self._supervisors: list[threading.Thread] = []

    def __enter__(self) -> ServerUrls:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def servers_json(self) -> Path:
        """Path of the file recording the URLs of the running servers."""
        return self.data_dir / "servers.json"

    def start(self) -> ServerUrls:
        """Start both servers (initialising the data directory on first use); return their URLs."""
        if self.urls is not None:
            raise EmbeddedServersError("embedded servers already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        self._stopping = threading.Event()
        pg, ns = self._postgres, self._nats
        try:
            credentials: Credentials = load_or_create_credentials(self.data_dir / "credentials.json")
            previous = self._previous_ports()
            pg.kill_orphan()
            ns.kill_orphan()
            rotate_log(pg.log)
            rotate_log(ns.log)
            # nats-server starts while initdb/postgres get going: start-up is the slower of the two.
            nats_port = ns.spawn(credentials.nats_password, previous.get("nats_url"))
            runas = pg_runas()
            pg.init(runas, credentials.postgres_password)
            pg_port = pg.spawn(runas, previous.get("database_url"))
            nats_port = ns.wait(credentials.nats_password, nats_port)
            pg_port = pg.wait(runas, pg_port)
            pg.require_password(runas, pg_port, credentials.postgres_password)
            pg.create_database(pg_port, credentials.postgres_password)
            urls = ServerUrls(
                database_url=pg.url(credentials.postgres_password, pg_port),
                nats_url=ns.url(credentials.nats_password, nats_port),
            )
            if self.write_servers_json:
                record = {"database_url": urls.database_url, "nats_url": urls.nats_url}
                # 0600: the URLs carry the passwords.
                write_atomically(self.servers_json, json.dumps(record, indent=2) + "\n", mode=0o600)
        except BaseException:
            self._stop_processes()
            self._release_lock()
            raise
        self.urls = urls
        self._supervisors = [
            self._supervisor(
                "PostgreSQL", "postgres", lambda: pg.proc, lambda: pg.spawn(runas, pg_port, exact=True)
            ),
            self._supervisor(
                "nats-server",
                "nats",
                lambda: ns.proc,
                lambda: ns.spawn(credentials.nats_password, nats_port, exact=True),
            ),
        ]
        for thread in self._supervisors:
            thread.start()
        _log.info(
            "embedded PostgreSQL at %s, NATS at %s",
            mask_password(urls.database_url),
            mask_password(urls.nats_url),
        )
        return urls

    def stop(self) -> None:
        """Stop both servers (PostgreSQL fast shutdown, NATS graceful); safe to call twice."""
        try:
            self._stop_processes()
        finally:
            self.urls = None
            self._release_lock()

    def _supervisor(
        self,
        name: str,
        short_name: str,
        current: Callable[[], subprocess.Popen[bytes] | None],
        respawn: Callable[[], object],
    ) -> threading.Thread:
        """A thread restarting the server `current()` with `respawn` when it dies, until we stop."""
        return threading.Thread(
            target=supervise,
            args=(name, current, respawn),
            kwargs={"stopping": self._stopping, "spawn_lock": self._spawn_lock},
            name=f"embedded-{short_name}-supervisor",
            daemon=True,
        )

    # -- lock and previous run -------------------------------------------------------------

    def _acquire_lock(self) -> None:
        # flock is released by the kernel when our process dies, so a killed run never leaves a
        # stale lock; and holding it proves any server still running on this data dir is an orphan.
        fd = os.open(self.data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedServersError(
                f"{self.data_dir} is in use by another process running the embedded servers"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _previous_ports(self) -> dict[str, int]:
        """Ports of the last run, from servers.json, so that URLs stay stable across restarts."""
        try:
            recorded = json.loads(self.servers_json.read_text())
            return {
                key: port
                for key in ("database_url", "nats_url")
                if (port := urlsplit(recorded[key]).port) is not None
            }
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    # -- stopping --------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        # Signal both first, then wait: they shut down in parallel. Under the lock, with
        # `_stopping` set, so that no supervisor restarts one behind our back.
        pending: list[tuple[subprocess.Popen[bytes], float, str]] = []
        self._stopping.set()
        with self._spawn_lock:
            if self._postgres.proc is not None:
                pending.append((self._postgres.proc, postgres.STOP_TIMEOUT, "PostgreSQL"))
                send_signal(self._postgres.proc, signal.SIGINT)
            if self._nats.proc is not None:
                pending.append((self._nats.proc, nats.STOP_TIMEOUT, "nats-server"))
                send_signal(self._nats.proc, signal.SIGTERM)
        wait_or_kill(pending)
        for thread in self._supervisors:
            thread.join()
        self._supervisors = []
        self._postgres.proc = None
        self._nats.proc = None
