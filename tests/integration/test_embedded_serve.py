"""`loyalty serve` in embedded mode keeps its PostgreSQL and nats-server running: one that dies is
reaped (no zombie) and started again on the same URL, and the service carries on."""

from __future__ import annotations

import json
import os
import signal
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from tests.service_process import ADMIN_KEY, Service
from tests.waiting import until

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
START_WITHIN = 120.0  # initdb and two servers on a machine shared with other test runs
RESTART_WITHIN = 60.0


def state(pid: int) -> str | None:
    """The process's state letter (Z = a zombie nobody reaped), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return None


def pid_in(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def accepts_tcp(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[Service]:
    """`loyalty serve` with no server URLs: embedded servers in a data dir of its own."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    svc = Service(None, None, data_dir)
    yield svc
    if svc.process is not None and svc.process.poll() is None:
        svc.process.kill()  # its servers follow it (parent-death signal)
        svc.process.wait()


async def earned(client: httpx.AsyncClient, member_id: str) -> bool:
    response = await client.post(
        f"/v1/members/{member_id}/earn",
        json={"order_ref": uuid.uuid4().hex, "amount": "25", "currency": "CNY"},
        headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
    )
    return response.status_code == 201


async def published(service: Service, urls: dict[str, str]) -> bool:
    """The stream holds every event of the log (the relay reached NATS again)."""
    conn = await asyncpg.connect(urls["database_url"])
    try:
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    finally:
        await conn.close()
    nc = await nats.connect(urls["nats_url"])
    try:
        info = await nc.jetstream().stream_info(service.env["LOYALTY_STREAM_NAME"])
    except NotFoundError:
        return False
    finally:
        await nc.close()
    return bool(info.state.messages == head)


def zombies(service: Service) -> list[int]:
    return [pid for pid in service.children() if state(pid) == "Z"]


async def test_serve_restarts_a_killed_embedded_server_on_the_same_url(embedded_service: Service) -> None:
    service = embedded_service
    data_dir = Path(service.env["LOYALTY_DATA_DIR"])
    pid_files = {"PostgreSQL": data_dir / "postgres" / "postmaster.pid", "nats-server": data_dir / "nats.pid"}
    service.start()
    await service.ready(within=START_WITHIN)
    urls = json.loads((data_dir / "servers.json").read_text())

    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        enrolled = await client.post(
            "/v1/members",
            json={"identities": [{"kind": "app_user", "value": "embedded-1"}]},
            headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert enrolled.status_code == 201, enrolled.text
        member_id = enrolled.json()["member_id"]
        assert await earned(client, member_id)

        for name, pid_file in pid_files.items():
            killed = pid_in(pid_file)
            assert killed is not None
            assert killed in service.children()
            os.kill(killed, signal.SIGKILL)

            def restarted(pid_file: Path = pid_file, killed: int = killed) -> int | None:
                pid = pid_in(pid_file)
                return pid if pid not in (None, killed) and state(pid) not in (None, "Z") else None

            new = await until(restarted, within=RESTART_WITHIN, what=f"a new {name}")
            # Reaped: gone altogether, not left a zombie that would block PostgreSQL's restart.
            await until(lambda killed=killed: state(killed) is None, what=f"the killed {name} reaped")
            assert new in service.children()
            assert zombies(service) == []
            # Same URLs: clients (the service's pool and NATS client among them) reconnect.
            assert json.loads((data_dir / "servers.json").read_text()) == urls
            await until(lambda: accepts_tcp(urls["database_url"]) and accepts_tcp(urls["nats_url"]))
            assert await until(lambda: earned(client, member_id), what=f"an earn after {name} restarted")
            await until(lambda: published(service, urls), what=f"the relay publishing after {name} restarted")

    assert service.terminate() == 0  # and the servers stopped with it
    for pid_file in pid_files.values():
        pid = pid_in(pid_file)
        assert pid is None or state(pid) is None
