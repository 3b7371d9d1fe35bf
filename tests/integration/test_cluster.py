"""Several instances on one log, on a three-node NATS cluster, losing a part of each kind.

Processes on loopback, as deploy/ runs them: two API instances (`loyalty serve` with
LOYALTY_FOLLOWERS=off) and two `loyalty follow` processes on one PostgreSQL, publishing to a
stream with three replicas on a three-node JetStream cluster. During a bounded earn load, the
stream's leader node, the follower leading the relay and one API instance are killed (SIGKILL);
holds expire meanwhile, for the clock to release. Afterwards every acknowledged earn is in the
log once, every committed event in the stream once and in order, each expired hold released
once, the hash chains verify with the checkpoints the leaders signed, the projections equal a
rebuild from the log, and the killed parts rejoin.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js.api import StreamInfo

from devtools.embedded.nats_cluster import NatsCluster
from devtools.embedded.ports import free_port
from projections.registry import PROJECTIONS
from projections.runner import rebuild
from service.bus import cloudevents
from service.store.codec import EventCodec
from service.store.event_store import EventStore
from service.store.keys import Keyring, parse_master_key
from tests.service_process import ADMIN_KEY
from tests.waiting import until

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
MEMBERS = 12
EARNS = 600  # acknowledged earns the load makes, across both API instances
WORKERS = 8
HOLDS = 6  # placed just before the kills, expiring while the clock's leader is being replaced


class Instance:
    """`loyalty serve` or `loyalty follow` as a child process with the cluster's settings."""

    def __init__(self, command: str, env: dict[str, str], log: Path) -> None:
        self.command = command
        self.port = free_port()
        variable = "LOYALTY_PORT" if command == "serve" else "LOYALTY_FOLLOWER_PORT"
        self.env = {**env, variable: str(self.port)}
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", self.command], env=self.env, stdout=out, stderr=out
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> int | None:
        """SIGTERM and wait (SIGKILL past 30 s); the exit code, None if it was not running."""
        if self.process is None or self.process.poll() is not None:
            return None
        self.process.terminate()
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None

    async def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log.read_text()[-5000:]
        async with httpx.AsyncClient(timeout=5) as client:
            try:
                return (await client.get(f"{self.url}/health/ready")).status_code == 200
            except httpx.TransportError:
                return False

    async def metric(self, name: str) -> float:
        """A sample of this instance's /metrics (the first line starting with `name`)."""
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(f"{self.url}/metrics")).text
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in /metrics of {self.command} on {self.port}")

    async def leads_everything(self) -> bool:
        """This follower leads the relay, the clock, the audit checkpoints and every projection."""
        try:
            return all([await self.metric(name) == 1 for name in LEADS])
        except httpx.TransportError:
            return False


LEADS = ["loyalty_relay_active", "loyalty_clock_active", "loyalty_audit_checkpoints_active"]
LEADS += [f'loyalty_projection_leading{{projection="{p}"}}' for p in PROJECTIONS]


async def leads_lost(follower: Instance) -> str:
    """What `follower` no longer leads, and why it stepped down (from its log)."""
    lost = [name for name in LEADS if await follower.metric(name) != 1]
    interrupted = [line for line in follower.log.read_text().splitlines() if "interrupted" in line]
    return f"lost {lost}; {interrupted[-5:]}"


async def each_led_once(followers: list[Instance]) -> bool:
    """Every lead (relay, clock, checkpoints, each projection) is held by exactly one follower."""
    return all([sum([await f.metric(name) for f in followers]) == 1 for name in LEADS])


class Load:
    """Earns on the API instances, each retried on the other instance (same key) when the one
    it went to does not answer, until EARNS of them are acknowledged."""

    def __init__(self, apis: list[Instance], members: list[str]) -> None:
        self.apis = apis
        self.members = members
        self.acknowledged: dict[str, dict[str, Any]] = {}  # order_ref -> 201 body
        self.retried = 0
        self._orders = itertools.count()

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            await asyncio.gather(*(self._worker(client, w) for w in range(WORKERS)))

    async def _worker(self, client: httpx.AsyncClient, worker: int) -> None:
        while (n := next(self._orders)) < EARNS:
            order_ref = f"cluster-{n}"
            body = {"order_ref": order_ref, "amount": "25", "currency": "CNY"}
            headers = AUTH | {"Idempotency-Key": order_ref}
            member = self.members[n % len(self.members)]
            deadline = time.monotonic() + 30
            for attempt in itertools.count():
                api = self.apis[(worker + attempt) % len(self.apis)]
                try:
                    url = f"{api.url}/v1/members/{member}/earn"
                    answer = await client.post(url, json=body, headers=headers)
                except httpx.TransportError:
                    answer = None
                if answer is not None and answer.status_code == 201:
                    self.acknowledged[order_ref] = answer.json()
                    break
                assert answer is None or answer.status_code == 503, answer.text
                assert time.monotonic() < deadline, f"{order_ref} never acknowledged"
                self.retried += 1
                await asyncio.sleep(0.05)  # the other instance, or this one after a 503


async def post(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    answer = await client.post(url, json=body, headers=AUTH | {"Idempotency-Key": uuid.uuid4().hex})
    assert answer.status_code == 201, answer.text
    result: dict[str, Any] = answer.json()
    return result


async def stream_info(nats_url: str, stream: str) -> StreamInfo:
    nc = await nats.connect(nats_url.split(","), connect_timeout=2)
    try:
        return await nc.jetstream(timeout=5).stream_info(stream)
    finally:
        await nc.close()


async def stream_messages(nats_url: str, stream: str, count: int) -> list[cloudevents.CloudEvent[Any]]:
    """Every message of the stream, in stream order."""
    nc = await nats.connect(nats_url.split(","), connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        return [
            cloudevents.decode((await js.get_msg(stream, seq=seq)).data or b"") for seq in range(1, count + 1)
        ]
    finally:
        await nc.close()


async def settled(conn: asyncpg.Connection, nats_url: str, stream: str) -> bool:
    """The relay and every projection have reached the log's head, and the stream holds it."""
    head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    behind = await conn.fetchval(
        "SELECT count(*) FROM unnest($1::text[]) AS n(name)"
        " LEFT JOIN checkpoints c USING (name) WHERE coalesce(c.position, 0) < $2",
        ["relay", *PROJECTIONS],
        head,
    )
    if behind:
        return False
    info = await stream_info(nats_url, stream)
    return bool(info.state.messages == head)


async def rejoined(nats_url: str, stream: str, peer: str) -> bool:
    """`peer` is back among the stream's replicas, current."""
    try:
        info = await stream_info(nats_url, stream)
    except Exception:
        return False
    cluster = info.cluster
    if cluster is None:
        return False
    replicas = {r.name: r.current for r in cluster.replicas or []}
    if cluster.leader == peer:
        return len(replicas) == 2 and all(replicas.values())
    return replicas.get(peer) is True


@pytest.mark.timeout(180)
async def test_a_cluster_losing_a_nats_node_the_leading_follower_and_an_api_instance_loses_nothing(
    database_url: str, tmp_path: Path
) -> None:
    master_key = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    stream = f"LOYALTY_{secrets.token_hex(6)}"
    with NatsCluster(tmp_path / "nats") as cluster:
        env = {
            **os.environ,
            "LOYALTY_DATABASE_URL": database_url,
            "LOYALTY_NATS_URL": cluster.url,
            "LOYALTY_FOLLOWERS": "off",
            "LOYALTY_STREAM_NAME": stream,
            "LOYALTY_STREAM_REPLICAS": "3",
            "LOYALTY_SUBJECT_PREFIX": f"test.{secrets.token_hex(6)}.events",
            "LOYALTY_MASTER_KEY": master_key,
            "LOYALTY_ADMIN_KEY": ADMIN_KEY,
            "LOYALTY_LOG_FORMAT": "json",
            "LOYALTY_CLOCK_INTERVAL_SECONDS": "0.2",
            "LOYALTY_AUDIT_CHECKPOINT_EVENTS": "100",
            "LOYALTY_AUDIT_CHECKPOINT_SECONDS": "0.5",
        }
        apis = [Instance("serve", env, tmp_path / f"api{i}.log") for i in range(2)]
        followers = [Instance("follow", env, tmp_path / f"follower{i}.log") for i in range(2)]
        conn = await asyncpg.connect(database_url)
        try:
            # All at once: migrations take a lock; an API instance is ready once the stream exists.
            for instance in [*apis, *followers]:
                instance.start()
            for instance in [*apis, *followers]:
                await until(instance.ready, within=60, what=f"{instance.command} on {instance.port}")
            await until(lambda: each_led_once(followers), what="each lead held by one follower")
            leader = await until(lambda: _relay_leader(followers), what="a follower leading the relay")
            survivor = next(f for f in followers if f is not leader)

            async with httpx.AsyncClient(timeout=10) as client:
                enrol = [
                    {"identities": [{"kind": "app_user", "value": f"cluster-{i}"}]} for i in range(MEMBERS)
                ]
                members = [
                    (await post(client, f"{apis[i % 2].url}/v1/members", body))["member_id"]
                    for i, body in enumerate(enrol)
                ]
                load = Load(apis, members)
                running = asyncio.create_task(load.run())
                await until(lambda: len(load.acknowledged) >= EARNS // 3 or running.done(), what="load")
                assert not running.done(), "the load ended before the kills: make it longer"

                # Holds expiring in a second, while the clock's leader is killed.
                hold = {"points": 5, "ttl_seconds": 1}
                holds = [
                    (await post(client, f"{apis[1].url}/v1/members/{m}/holds", hold))["hold_id"]
                    for m in members[:HOLDS]
                ]
                stream_leader = (await stream_info(cluster.url, stream)).cluster.leader  # type: ignore[union-attr]
                killed_node = next(i for i in range(3) if cluster.server_name(i) == stream_leader)
                cluster.kill(killed_node)
                leader.kill()
                apis[0].kill()
                await running
                # The survivors took over: one follower leads everything again.
                await until(survivor.leads_everything, what="the other follower to take over")

            # The killed parts come back and rejoin.
            leader.start()  # starting (a few seconds) while the NATS node restarts
            apis[0].start()
            cluster.restart(killed_node)
            await until(apis[0].ready, within=60, what="the killed API instance back")
            await until(leader.ready, within=60, what="the killed follower back")
            async with httpx.AsyncClient(timeout=10) as client:
                late = await post(
                    client,
                    f"{apis[0].url}/v1/members/{members[0]}/earn",
                    {"order_ref": "cluster-late", "amount": "25", "currency": "CNY"},
                )
            await until(lambda: rejoined(cluster.url, stream, stream_leader), what="the NATS node to rejoin")
            await until(lambda: settled(conn, cluster.url, stream), what="the followers to catch up")
            # The restarted follower stands by: the survivor keeps every lead.
            assert await each_led_once(followers)
            assert await survivor.leads_everything(), await leads_lost(survivor)

            # Every acknowledged earn is in the log, once; no order earned twice.
            assert len(load.acknowledged) == EARNS
            acknowledged = {body["event_id"] for body in load.acknowledged.values()} | {late["event_id"]}
            logged = await conn.fetch("SELECT event_id FROM events WHERE event_type = 'points_earned'")
            assert sorted(str(r["event_id"]) for r in logged) == sorted(acknowledged)
            assert await conn.fetchval("SELECT count(*) FROM order_refs") == EARNS + 1

            # Every committed event is in the stream once, in the log's order.
            in_log = await conn.fetch("SELECT event_id FROM events ORDER BY position")
            log_ids = [str(r["event_id"]) for r in in_log]
            messages = await stream_messages(cluster.url, stream, len(log_ids))
            assert [str(m.id) for m in messages] == log_ids
            assert [m.position for m in messages] == sorted({m.position for m in messages})
            versions: dict[str, list[int]] = {}
            for m in messages:
                versions.setdefault(m.subject, []).append(m.streamversion)
            assert all(v == list(range(1, len(v) + 1)) for v in versions.values())

            # The clock released each expired hold once, whichever follower led it.
            released = Counter(
                m.data["hold_id"] for m in messages if m.type == cloudevents.ce_type("hold_released")
            )
            assert released == Counter(holds)

            # Stopped cleanly; the hash chains hold, with the checkpoints the leaders signed.
            for instance in [*apis, *followers]:
                assert instance.stop() == 0, instance.log.read_text()[-5000:]
            verified = audit_verify(env)
            assert verified["ok"] is True, verified
            assert verified["events_checked"] == len(log_ids)
            assert verified["checkpoints_checked"] >= 2  # signed by whichever follower led

            # The projections equal a rebuild from the log.
            live = {name: await _table(conn, name) for name in PROJECTIONS}
            keyring = Keyring(parse_master_key(master_key))
            pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
            try:
                store = EventStore(pool, EventCodec(keyring), keyring)
                for name in PROJECTIONS:
                    await rebuild(pool, store, name)
            finally:
                await pool.close()
            assert {name: await _table(conn, name) for name in PROJECTIONS} == live
        finally:
            for instance in [*apis, *followers]:
                if instance.process is not None and instance.process.poll() is None:
                    instance.kill()
            await conn.close()


def audit_verify(env: dict[str, str]) -> dict[str, Any]:
    """`loyalty audit verify`: its report (exit code 0 when the chains hold)."""
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "audit", "verify"], env=env, capture_output=True, check=False
    )
    report: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert done.returncode == (0 if report["ok"] else 1), done.stderr.decode()[-3000:]
    return report


async def _relay_leader(followers: list[Instance]) -> Instance | None:
    for follower in followers:
        if await follower.metric("loyalty_relay_active") == 1:
            return follower
    return None


async def _table(conn: asyncpg.Connection, name: str) -> list[dict[str, Any]]:
    # Every column in the order: some read models hold several rows per member.
    return [dict(r) for r in await conn.fetch(f"SELECT * FROM {name} AS t ORDER BY t::text")]
