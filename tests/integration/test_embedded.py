"""The embedded PostgreSQL + nats-server pair behind `loyalty serve` and the test fixtures."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import nats
import nats.errors
import psutil
import pytest

from devtools.embedded import EmbeddedServers, EmbeddedServersError, ServerUrls

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.05)


def process_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def accepts_tcp(url: str) -> bool:
    parts = urlsplit(url)
    assert parts.hostname
    assert parts.port
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def processes_using(data_dir: Path) -> list[int]:
    """Live processes with data_dir in their command line."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(str(data_dir) in a for a in cmdline):
            found.append(proc.pid)
    return found


def spawn(cmd: list[str], *, pipes: bool = False, as_owner_of: Path | None = None) -> subprocess.Popen[bytes]:
    """Start a helper process (optionally as the user owning a file, when we are root)."""
    kwargs: dict[str, Any] = {}
    if as_owner_of is not None and os.geteuid() == 0:
        owner = as_owner_of.stat()
        kwargs.update(user=owner.st_uid, group=owner.st_gid)
    if pipes:
        kwargs.update(stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": pythonpath}, **kwargs)


def server_pids(data_dir: Path) -> tuple[int, int]:
    """(postmaster pid, nats-server pid) of servers running on data_dir."""
    postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
    return postmaster, int((data_dir / "nats.pid").read_text().split()[0])


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[EmbeddedServers]:
    """An embedded pair of its own (not the session's), stopped after the test."""
    embedded = EmbeddedServers(tmp_path / "data")
    try:
        yield embedded
    finally:
        embedded.stop()


async def write_row(urls: ServerUrls, value: str) -> None:
    conn = await asyncpg.connect(urls.database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS kept (value text NOT NULL)")
        await conn.execute("INSERT INTO kept VALUES ($1)", value)
    finally:
        await conn.close()


async def read_rows(urls: ServerUrls) -> list[str]:
    conn = await asyncpg.connect(urls.database_url)
    try:
        return [r["value"] for r in await conn.fetch("SELECT value FROM kept ORDER BY value")]
    finally:
        await conn.close()


async def test_servers_start_and_serve(servers: EmbeddedServers) -> None:
    urls = servers.start()

    assert urls.database_url.startswith("postgresql://postgres:")
    assert urlsplit(urls.database_url).hostname == "127.0.0.1"
    assert urls.database_url.endswith("/loyalty")
    assert urls.nats_url.startswith("nats://loyalty:")
    assert urlsplit(urls.nats_url).hostname == "127.0.0.1"

    conn = await asyncpg.connect(urls.database_url)
    try:
        assert await conn.fetchval("SELECT 41 + 1") == 42
        assert await conn.fetchval("SELECT current_database()") == "loyalty"
        # Durable commits are part of the contract.
        assert await conn.fetchval("SHOW fsync") == "on"
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        assert await conn.fetchval("SHOW max_connections") == "200"
    finally:
        await conn.close()

    nc = await nats.connect(urls.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="EMBEDDED", subjects=["embedded.>"])
        ack = await js.publish("embedded.hello", b"hi", headers={"Nats-Msg-Id": "one"})
        assert (ack.stream, ack.seq) == ("EMBEDDED", 1)
    finally:
        await nc.close()

    recorded = json.loads((servers.data_dir / "servers.json").read_text())
    assert recorded == {"database_url": urls.database_url, "nats_url": urls.nats_url}

    servers.stop()
    assert not accepts_tcp(urls.database_url)
    assert not accepts_tcp(urls.nats_url)


async def test_servers_json_can_be_skipped(tmp_path: Path) -> None:
    with EmbeddedServers(tmp_path, write_servers_json=False) as urls:
        assert accepts_tcp(urls.database_url)
    assert not (tmp_path / "servers.json").exists()


async def test_data_and_urls_survive_restart(servers: EmbeddedServers) -> None:
    first = servers.start()
    await write_row(first, "before restart")
    nc = await nats.connect(first.nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="KEPT", subjects=["kept.>"])
        await js.publish("kept.one", b"1")
    finally:
        await nc.close()
    servers.stop()

    second = servers.start()
    # The previous ports were free again, so the URLs (and servers.json) did not change.
    assert second == first
    assert await read_rows(second) == ["before restart"]
    nc = await nats.connect(second.nats_url)
    try:
        info = await nc.jetstream().stream_info("KEPT")
        assert info.state.messages == 1
    finally:
        await nc.close()


@pytest.mark.parametrize("from_thread", [False, True], ids=["main-thread", "worker-thread"])
async def test_start_after_owner_was_killed(tmp_path: Path, from_thread: bool) -> None:
    """A SIGKILLed owner leaves no server behind that blocks the next start.

    From the main thread the children get PR_SET_PDEATHSIG and shut down by themselves; from a
    worker thread they are orphaned, and the next start stops them.
    """
    data_dir = tmp_path / "data"
    script = (
        "import json, sys, threading\n"
        "from pathlib import Path\n"
        "from devtools.embedded import EmbeddedServers\n"
        "servers = EmbeddedServers(Path(sys.argv[1]))\n"
        "out = {}\n"
        "def start(): out['urls'] = servers.start()\n"
        f"if {from_thread}:\n"
        "    t = threading.Thread(target=start); t.start(); t.join()\n"
        "else:\n"
        "    start()\n"
        "print(json.dumps(out['urls'].__dict__), flush=True)\n"
        "sys.stdin.read()\n"  # block until killed
    )
    owner = spawn([sys.executable, "-c", script, str(data_dir)], pipes=True)
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, "the owner process failed to start the servers"
        first = ServerUrls(**json.loads(line))
        await write_row(first, "written by the killed owner")
        postmaster, nats_server = server_pids(data_dir)
    finally:
        owner.kill()
        owner.wait()
        for pipe in (owner.stdin, owner.stdout):
            assert pipe is not None
            pipe.close()

    if from_thread:
        assert not process_gone(postmaster)
        assert not process_gone(nats_server)
    elif sys.platform.startswith("linux"):
        wait_until(lambda: process_gone(postmaster), what="PostgreSQL to follow its owner")
        wait_until(lambda: process_gone(nats_server), what="nats-server to follow its owner")

    with EmbeddedServers(data_dir) as second:
        assert process_gone(postmaster)
        assert process_gone(nats_server)
        assert await read_rows(second) == ["written by the killed owner"]


async def test_stale_postmaster_pid_naming_a_live_process(servers: EmbeddedServers) -> None:
    """postmaster.pid left by a crash, whose pid now belongs to an unrelated process.

    PostgreSQL itself would refuse to start if that process is its own user's.
    """
    urls = servers.start()
    await write_row(urls, "before crash")
    postmaster, _ = server_pids(servers.data_dir)
    pid_file = servers.data_dir / "postgres" / "postmaster.pid"
    stale = pid_file.read_bytes()
    os.kill(postmaster, signal.SIGKILL)
    wait_until(lambda: process_gone(postmaster), what="the postmaster to die")
    servers.stop()

    owner = pid_file.stat()
    # An unrelated long-running process of PostgreSQL's user takes over the pid's role.
    squatter = spawn(["sleep", "300"], as_owner_of=pid_file)
    try:
        lines = stale.decode().splitlines()
        lines[0] = str(squatter.pid)
        pid_file.write_text("\n".join(lines) + "\n")
        os.chown(pid_file, owner.st_uid, owner.st_gid)

        urls = servers.start()
        assert await read_rows(urls) == ["before crash"]
    finally:
        squatter.kill()
        squatter.wait()


def test_second_owner_of_a_data_dir_is_refused(servers: EmbeddedServers) -> None:
    servers.start()
    with pytest.raises(EmbeddedServersError, match="in use"):
        EmbeddedServers(servers.data_dir).start()


def test_start_failure_reports_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with EmbeddedServers(data_dir):
        pass
    # A broken configuration makes PostgreSQL exit at once.
    conf = data_dir / "postgres" / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nno_such_setting = 1\n")
    servers = EmbeddedServers(data_dir)
    with pytest.raises(EmbeddedServersError, match="no_such_setting"):
        servers.start()
    # Nothing is left running, and the data dir is not left locked.
    assert servers.urls is None
    assert processes_using(data_dir) == []
    conf.write_text(conf.read_text().replace("no_such_setting = 1", ""))
    with EmbeddedServers(data_dir) as urls:
        assert accepts_tcp(urls.database_url)


async def test_fixtures_give_an_empty_database_and_nats(database_url: str, nats_url: str) -> None:
    assert urlsplit(database_url).path.startswith("/test_")
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE mine (id int)")
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    try:
        assert nc.is_connected
    finally:
        await nc.close()


def without_password(url: str) -> str:
    """`url` with its user but no password."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}@{hostport}"))


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo.partition(':')[0]}:{password}@{hostport}"))


async def refused_by_postgres(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidAuthorizationSpecificationError:  # includes InvalidPasswordError
        return True
    await conn.close()
    return False


async def refused_by_nats(url: str) -> bool:
    async def quiet(_: Exception) -> None:
        pass

    nc = nats.NATS()
    try:
        await nc.connect(
            url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5, error_cb=quiet
        )
    except nats.errors.Error as exc:
        return "Authorization Violation" in str(exc)
    finally:
        await nc.close()  # also the socket of a refused attempt, which connect() leaves open
    return False


async def test_servers_refuse_connections_without_the_generated_credentials(
    servers: EmbeddedServers,
) -> None:
    urls = servers.start()

    assert await refused_by_postgres(without_password(urls.database_url))
    assert await refused_by_postgres(with_password(urls.database_url, "guessed"))
    assert await refused_by_nats(without_password(urls.nats_url))
    assert await refused_by_nats(with_password(urls.nats_url, "guessed"))
    assert not await refused_by_postgres(urls.database_url)
    assert not await refused_by_nats(urls.nats_url)

    # The secrets are in files only their owner reads, and not on any command line `ps` shows.
    for name in ("credentials.json", "servers.json", "nats.conf"):
        assert stat.S_IMODE((servers.data_dir / name).stat().st_mode) == 0o600, name
    password = urlsplit(urls.nats_url).password
    assert password
    postmaster, nats_server = server_pids(servers.data_dir)
    for pid in (postmaster, nats_server):
        assert not any(password in arg for arg in psutil.Process(pid).cmdline())


async def test_a_data_dir_initialised_without_passwords_gets_them(servers: EmbeddedServers) -> None:
    """Data dirs made before credentials existed: initdb --auth=trust, no credentials.json."""
    first = servers.start()
    await write_row(first, "from a trusting time")
    servers.stop()
    hba = servers.data_dir / "postgres" / "pg_hba.conf"
    owner = hba.stat()
    hba.write_text("host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n")
    os.chown(hba, owner.st_uid, owner.st_gid)
    (servers.data_dir / "credentials.json").unlink()

    second = servers.start()

    assert second.database_url != first.database_url  # a new password was generated
    assert await refused_by_postgres(without_password(second.database_url))
    assert await refused_by_postgres(first.database_url)
    assert await read_rows(second) == ["from a trusting time"]
    assert "trust" not in hba.read_text()
