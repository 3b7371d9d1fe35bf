"""A PostgreSQL restart under load: 503s meanwhile, nothing acknowledged lost, ready again by itself.

The test runs a PostgreSQL of its own (stopping it must not disturb the session's servers) and
`loyalty serve` as a child (its request process watches the followers, which lead in a process
of their own): the shape of a production instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools.embedded import EmbeddedServers, postgres_bin
from tests.service_process import ADMIN_KEY, Service
from tests.waiting import until

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
OUTAGE_SECONDS = 3.0
WORKERS = 4  # one member each
EARNS_AROUND_OUTAGE = 40  # acknowledged before the outage, and again after it
MAX_REQUESTS = 1_500  # the load's hard bound in count (and LOAD_DEADLINE in time)
LOAD_DEADLINE = 60.0
READY_AGAIN_WITHIN = 15.0


class Postgres:
    """pg_ctl on a data directory that EmbeddedServers created, as the user who owns it, with
    the options EmbeddedServers last started it with (port, listen address, settings)."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        opts = shlex.split((pgdata / "postmaster.opts").read_text())[1:]  # without the binary
        self._options = [o for i, o in enumerate(opts) if o != "-D" and (i == 0 or opts[i - 1] != "-D")]
        self.running = False

    def stop(self) -> None:
        self._pg_ctl("stop", "-m", "fast", "-w")
        self.running = False

    def start(self) -> None:
        # Logs inside the data directory: the one place its user may write to.
        self._pg_ctl("start", "-w", "-l", str(self.pgdata / "restarted.log"), "-o", shlex.join(self._options))
        self.running = True

    def _pg_ctl(self, *args: str) -> None:
        owner = self.pgdata.stat()
        kwargs: dict[str, Any] = {}
        if os.geteuid() != owner.st_uid:  # root: PostgreSQL runs as an unprivileged user
            kwargs.update(user=owner.st_uid, group=owner.st_gid, extra_groups=[])
        subprocess.run(
            [str(postgres_bin() / "pg_ctl"), *args, "-D", str(self.pgdata)],
            cwd=self.pgdata,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
            capture_output=True,
            check=True,
            timeout=60,
            **kwargs,
        )


@dataclass
class OwnServers:
    database_url: str
    postgres: Postgres


@pytest.fixture
def own_postgres() -> Iterator[OwnServers]:
    """A PostgreSQL for this test alone, which it may stop and start.

    EmbeddedServers initialises it (user, password, database) and starts it once; then it runs
    under pg_ctl, since EmbeddedServers restarts a server of its that stops (the outage would
    last half a second).
    """
    # Not under pytest's basetemp (see tests/conftest.py: the postgres user must reach it).
    data_dir = Path(tempfile.mkdtemp(prefix="loyalty-outage-"))
    try:
        servers = EmbeddedServers(data_dir, write_servers_json=False)
        try:
            urls = servers.start()
        finally:
            servers.stop()  # its NATS too: the test uses the session's
        postgres = Postgres(data_dir / "postgres")
        postgres.start()
        try:
            yield OwnServers(urls.database_url, postgres)
        finally:
            if not postgres.running:
                postgres.start()  # so that it stops cleanly below, whatever happened
            postgres.stop()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class Load:
    """Earns sent by WORKERS clients, each to its member, until stopped or bounded."""

    client: httpx.AsyncClient
    members: list[str]
    sent: dict[str, tuple[str, httpx.Response | None]] = field(default_factory=dict)  # ref: member, answer
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    _numbers: Iterator[int] = field(default_factory=itertools.count)

    def acknowledged(self) -> int:
        return sum(1 for _, r in self.sent.values() if r is not None and r.status_code == 201)

    async def run(self) -> None:
        deadline = time.monotonic() + LOAD_DEADLINE
        await asyncio.gather(*(self._worker(m, deadline) for m in self.members))

    async def _worker(self, member_id: str, deadline: float) -> None:
        while not self.stop.is_set() and len(self.sent) < MAX_REQUESTS and time.monotonic() < deadline:
            ref = f"O-{next(self._numbers)}"
            response: httpx.Response | None = None  # a transport error: the test fails on it
            with contextlib.suppress(httpx.TransportError):
                response = await earn(self.client, member_id, ref)
            self.sent[ref] = (member_id, response)
            if response is None or response.status_code != 201:
                # What a client does on a 503: wait as told (capped, to keep the test short).
                await asyncio.sleep(min(float(retry_after(response) or 1), 0.5))


def retry_after(response: httpx.Response | None) -> str | None:
    return None if response is None else response.headers.get("retry-after")


async def earn(client: httpx.AsyncClient, member_id: str, ref: str) -> httpx.Response:
    return await client.post(
        f"/v1/members/{member_id}/earn",
        json={"order_ref": ref, "amount": "10", "currency": "CNY"},
        headers=AUTH | {"Idempotency-Key": ref},  # a retry with the same key counts once
    )


async def readiness(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/health/ready")


async def test_a_postgres_restart_under_load_loses_no_acknowledged_write(
    own_postgres: OwnServers, nats_url: str, tmp_path: Path
) -> None:
    service = Service(own_postgres.database_url, nats_url, tmp_path)
    service.start()
    try:
        await service.ready()
        async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
            members = []
            for i in range(WORKERS):
                enrolled = await client.post(
                    "/v1/members",
                    json={"identities": [{"kind": "app_user", "value": f"outage-{i}"}]},
                    headers=AUTH | {"Idempotency-Key": f"enrol-{i}"},
                )
                assert enrolled.status_code == 201, enrolled.text
                members.append(enrolled.json()["member_id"])

            load = Load(client, members)
            running = asyncio.create_task(load.run())
            try:
                await until(lambda: load.acknowledged() >= EARNS_AROUND_OUTAGE, what="earns before")
                before = len(load.sent)
                await asyncio.to_thread(own_postgres.postgres.stop)
                while_down = await readiness(client)
                await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself: the one deliberate pause
                during = dict(itertools.islice(load.sent.items(), before, None))
                await asyncio.to_thread(own_postgres.postgres.start)
                restarted = time.monotonic()
                await until(lambda: _ready(client), within=READY_AGAIN_WITHIN, what="ready after the restart")
                ready_after = time.monotonic() - restarted
                acknowledged = load.acknowledged()
                await until(
                    lambda: load.acknowledged() >= acknowledged + EARNS_AROUND_OUTAGE, what="earns after"
                )
            finally:
                load.stop.set()
                await running

            # Readiness while PostgreSQL was down: a 503 with the failing checks, not a 500.
            assert while_down.status_code == 503, while_down.text
            assert while_down.json()["checks"]["database"]["ok"] is False
            print(  # the timings, for `pytest -s`
                f"{len(load.sent)} earns sent, {load.acknowledged()} acknowledged, {len(during)} during"
                f" the outage; ready {ready_after:.2f} s after PostgreSQL accepted connections again"
            )

            # No transport errors: the service answered every request, during the outage too.
            assert all(r is not None for _, r in load.sent.values())

            # Every acknowledged earn is in the log exactly once.
            histories = {m: await _earned(client, m) for m in members}
            for ref, (member_id, response) in load.sent.items():
                if response is not None and response.status_code == 201:
                    event_id = response.json()["event_id"]
                    assert histories[member_id].count(event_id) == 1, (ref, event_id)
            # Retried with their keys, the unacknowledged ones count once too: no earn twice.
            for ref, (member_id, response) in load.sent.items():
                if response is None or response.status_code != 201:
                    retried = await earn(client, member_id, ref)
                    assert retried.status_code == 201, retried.text
            for member_id in members:
                earned = await _earned(client, member_id)
                sent = [ref for ref, (m, _) in load.sent.items() if m == member_id]
                assert len(earned) == len(set(earned)) == len(sent)

            # The outage was seen as such: 503s that tell the client to come back (and only then).
            answers = [r for _, r in load.sent.values() if r is not None]
            assert {r.status_code for r in answers} <= {201, 503}, [
                (r.status_code, r.text) for r in answers if r.status_code not in (201, 503)
            ]
            refused = [r for _, r in during.values() if r is not None and r.status_code != 201]
            assert refused, "no request failed during the outage"
            for response in refused:
                assert response.status_code == 503, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
                assert retry_after(response) is not None
    finally:
        try:
            service.terminate()
        except Exception:
            assert service.process is not None
            service.process.kill()
            service.process.wait()


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await readiness(client)).status_code == 200


async def _earned(client: httpx.AsyncClient, member_id: str) -> list[str]:
    """The event ids of the member's points_earned events, from the log."""
    response = await client.get(f"/v1/members/{member_id}/history", params={"limit": 1000}, headers=AUTH)
    assert response.status_code == 200, response.text
    return [e["event_id"] for e in response.json()["events"] if e["type"] == "points_earned"]
