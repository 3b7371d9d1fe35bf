"""`loyalty serve` runs the relay and the projections in a follower process of its own, which it
restarts when it dies and which never outlives it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
from nats.js.errors import NotFoundError

from tests.service_process import ADMIN_KEY, Service
from tests.waiting import until

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped has finished: it is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def command_line(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


async def earn(client: httpx.AsyncClient, member_id: str) -> int:
    response = await client.post(
        f"/v1/members/{member_id}/earn",
        json={"order_ref": uuid.uuid4().hex, "amount": "25", "currency": "CNY"},
        headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


async def projected(client: httpx.AsyncClient, member_id: str, position: int) -> bool:
    """The member view, read at `min_position`, has reached the event (the follower applied it)."""
    response = await client.get(f"/v1/members/{member_id}", params={"min_position": position}, headers=AUTH)
    assert response.status_code in (200, 503), response.text
    return response.status_code == 200


async def published(service: Service, nats_url: str, database_url: str) -> bool:
    """The stream holds every event of the log."""
    conn = await asyncpg.connect(database_url)
    try:
        head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    finally:
        await conn.close()
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(service.env["LOYALTY_STREAM_NAME"])
    except NotFoundError:
        return False
    finally:
        await nc.close()
    assert info.state.messages <= head
    return bool(info.state.messages == head)


async def test_the_follower_process_publishes_and_projects_and_is_restarted_when_killed(
    service: Service, database_url: str, nats_url: str
) -> None:
    service.start()
    await service.ready()
    [follower] = await until(service.children, what="the follower process")
    assert command_line(follower)[-1] == "follow"

    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        enrolled = await client.post(
            "/v1/members",
            json={"identities": [{"kind": "app_user", "value": "follower-1"}]},
            headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
        )
        assert enrolled.status_code == 201, enrolled.text
        member_id = enrolled.json()["member_id"]
        position = await earn(client, member_id)
        assert await projected(client, member_id, position)
        await until(lambda: published(service, nats_url, database_url), what="every event on the stream")
        async with httpx.AsyncClient(base_url=service.follower_url, timeout=10) as follower_client:
            ready = (await follower_client.get("/health/ready")).json()
        assert ready["checks"]["relay"]["active"] is True

        os.kill(follower, signal.SIGKILL)
        # Commands do not need the follower; what they commit meanwhile is caught up later.
        positions = [await earn(client, member_id) for _ in range(5)]
        [restarted] = await until(
            lambda: [pid for pid in service.children() if pid != follower], what="a new follower process"
        )
        # Found maybe between fork and exec, while it still has serve's command line.
        await until(lambda: command_line(restarted)[-1] == "follow", what="the new follower's exec")
        await until(lambda: projected(client, member_id, positions[-1]), what="the projection catching up")
        await until(lambda: published(service, nats_url, database_url), what="the backlog on the stream")

    assert service.terminate() == 0
    assert not alive(restarted)


async def test_the_follower_process_does_not_outlive_a_killed_serve(service: Service) -> None:
    service.start()
    await service.ready()
    [follower] = await until(service.children, what="the follower process")
    assert service.process is not None
    service.process.kill()  # no chance to stop its child
    service.process.wait()
    try:
        await until(lambda: not alive(follower), what="the orphaned follower to exit")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(follower, signal.SIGKILL)


def log_records(service: Service) -> list[dict[str, Any]]:
    """The JSON log lines of `serve` and its follower (they share the log file)."""
    records = []
    for line in service.log.read_text().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


async def follower_serving(service: Service) -> bool:
    async with httpx.AsyncClient(base_url=service.follower_url, timeout=5) as client:
        try:
            return (await client.get("/health/live")).status_code == 200
        except httpx.TransportError:
            return False


async def test_a_stopped_serve_stops_its_follower_cleanly(service: Service) -> None:
    service.start()
    await service.ready()
    [follower] = await until(service.children, what="the follower process")
    await until(lambda: follower_serving(service), what="the follower to serve /health")

    assert service.terminate() == 0

    assert not alive(follower)
    # The follower's stderr goes to the same file: an interpreter that aborted on its way out
    # (a daemon thread holding stdin's lock) would print this and exit with SIGABRT.
    assert "Fatal Python error" not in service.log.read_text()
    [stopped] = [r for r in log_records(service) if r.get("message") == "follower process stopped"]
    assert (stopped["pid"], stopped["exit_code"]) == (follower, 0)
