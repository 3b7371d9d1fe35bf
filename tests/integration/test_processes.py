"""`loyalty serve` with two request processes on one port (LOYALTY_PROCESSES=2, ADR 25).

Earns for many members over many connections to the one port: each member's commands are
served by the one process that owns it (the `X-Loyalty-Process` header of every answer), the
other process forwarding what it received for them. One request process is killed during the
load: its members are served by its sibling until it is back, and it is restarted. Then SIGTERM
stops every process after it has answered what it accepted, and every acknowledged earn is in
the log once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid
from collections import defaultdict
from pathlib import Path

import asyncpg
import httpx

from service.routing import owner_of
from tests.service_process import ADMIN_KEY, Service
from tests.waiting import until

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MEMBERS = 24
CONNECTIONS = 8


def metric(text: str, name: str, process: int) -> float:
    """A sample of the aggregated /metrics (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(f'{name}{{process="{process}"}} '):
            return float(line.rpartition(" ")[2])
    return 0.0


async def both_up(client: httpx.AsyncClient) -> bool:
    text = (await client.get("/metrics")).text
    return all(metric(text, "loyalty_request_process_up", p) == 1.0 for p in (0, 1))


def request_processes(service: Service) -> list[int]:
    """The pids of `serve`'s children running `serve` (not the follower process)."""
    pids = service.children()
    return sorted(p for p in pids if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[-2] == b"serve")


def running_process(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


class Load:
    """Earns over CONNECTIONS connections, each to whichever process accepted it, until stopped;
    an earn whose connection failed is retried (same key) on a new connection."""

    def __init__(self, url: str, members: list[str]) -> None:
        self.url = url
        self.members = members
        self.acknowledged: dict[str, tuple[str, str, int]] = {}  # order_ref -> (member, event, process)
        self.failed_connections = 0
        self.running = True
        self._orders = itertools.count()

    async def run(self) -> None:
        await asyncio.gather(*(self._connection() for _ in range(CONNECTIONS)))

    async def _connection(self) -> None:
        limits = httpx.Limits(max_connections=1)
        client = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)
        try:
            while self.running:
                n = next(self._orders)
                member, order_ref = self.members[n % len(self.members)], f"order-{n}"
                while True:
                    try:
                        answer = await client.post(
                            f"/v1/members/{member}/earn",
                            json={"order_ref": order_ref, "amount": "25", "currency": "CNY"},
                            headers=AUTH | {"Idempotency-Key": order_ref},
                        )
                        break
                    except httpx.TransportError:
                        # Its process stopped or was killed: a new connection, the same key (or,
                        # once the service is stopping, nothing more to send).
                        self.failed_connections += 1
                        await client.aclose()
                        if not self.running:
                            return
                        client = httpx.AsyncClient(base_url=self.url, timeout=30, limits=limits)
                assert answer.status_code == 201, answer.text
                process = int(answer.headers["x-loyalty-process"])
                self.acknowledged[order_ref] = (member, answer.json()["event_id"], process)
        finally:
            await client.aclose()

    def served_by(self) -> dict[str, set[int]]:
        processes: dict[str, set[int]] = defaultdict(set)
        for member, _, process in self.acknowledged.values():
            processes[member].add(process)
        return processes


async def test_two_request_processes_serve_each_member_from_one_and_lose_no_earn(
    service: Service, database_url: str
) -> None:
    service.env["LOYALTY_PROCESSES"] = "2"
    service.start()
    await service.ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        await until(lambda: both_up(client), what="both request processes")
        members: list[str] = []
        for _ in range(MEMBERS):
            answer = await client.post(
                "/v1/members",
                json={"identities": [{"kind": "email", "value": f"{uuid.uuid4().hex}@example.com"}]},
                headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex},
            )
            assert answer.status_code == 201, answer.text
            members.append(answer.json()["member_id"])
        assert {owner_of(f"/v1/members/{m}/earn", 2) for m in members} == {0, 1}

        # Steady load: every member's earns are served by its owner, whichever process the
        # connection landed on.
        load = Load(service.url, members)
        running = asyncio.create_task(load.run())
        await until(lambda: len(load.acknowledged) >= 200, what="200 earns")
        assert load.failed_connections == 0
        for member, processes in load.served_by().items():
            assert processes == {owner_of(f"/v1/members/{member}/earn", 2)}, member
        text = (await client.get("/metrics")).text
        forwarded = [metric(text, "loyalty_requests_forwarded_total", p) for p in (0, 1)]
        assert sum(forwarded) > 0  # connections on both processes, members of both
        assert all(metric(text, "loyalty_requests_forward_failed_total", p) == 0 for p in (0, 1))

        # Request process 1 killed: its members are served by process 0 until it is restarted.
        first, second = request_processes(service)
        os.kill(second, signal.SIGKILL)
        before = len(load.acknowledged)
        await until(lambda: len(load.acknowledged) >= before + 100, what="earns while one is down")
        await until(lambda: len(request_processes(service)) == 2, what="the killed process restarted")
        assert first in request_processes(service)
        await until(lambda: both_up(client), what="both request processes again")

        # SIGTERM during the load: every process drains, the service exits cleanly.
        before = len(load.acknowledged)
        await until(lambda: len(load.acknowledged) >= before + 50, what="earns after the restart")
        children = service.children()
        load.running = False
        assert service.terminate() == 0
        await running
        assert not [pid for pid in children if running_process(pid)]

    conn = await asyncpg.connect(database_url)
    try:
        logged = await conn.fetch("SELECT event_id FROM events WHERE event_type = 'points_earned'")
        orders = await conn.fetchval("SELECT count(*) FROM order_refs")
    finally:
        await conn.close()
    assert sorted(str(r["event_id"]) for r in logged) == sorted(e for _, e, _ in load.acknowledged.values())
    assert orders == len(load.acknowledged)
