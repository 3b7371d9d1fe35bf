"""The relay on a real PostgreSQL and nats-server: every committed event on the stream, once,
in order; nothing uncommitted; NATS outages, relay crashes and a second instance."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import json
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from domain.identities import Identity
from service.bus import cloudevents
from service.bus.relay import TRACKING_NAME, Relay
from service.config import Settings
from service.handlers import ledger, members
from service.handlers.commands import EarnPurchase, Enrol
from service.handlers.context import CommandContext
from service.handlers.errors import OrderTaken
from service.handlers.program import ensure_program
from service.services import Services, open_services
from tests.waiting import DEADLINE, until

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Bus:
    """One test's stream: a unique name and subject prefix (streams may not share subjects)."""

    stream: str
    prefix: str

    def settings(self, database_url: str, nats_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            nats_url=nats_url,
            stream_name=self.stream,
            subject_prefix=self.prefix,
            db_pool_size=6,
            followers="off",  # these tests run relays of their own
            master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        )


@pytest.fixture
def bus() -> Bus:
    tag = uuid.uuid4().hex[:10]
    return Bus(stream=f"LOYALTY_{tag}", prefix=f"t{tag}.events")


@contextlib.asynccontextmanager
async def running(
    settings: Settings, bus: Bus, **relay_options: Any
) -> AsyncIterator[tuple[Services, Relay]]:
    """The service's resources with a started relay."""
    async with open_services(settings) as services:
        await ensure_program(services)
        assert services.nats is not None
        relay = Relay(
            services.store,
            services.nats,
            settings,
            subject_prefix=bus.prefix,
            poll_interval=0.5,
            standby_interval=0.2,
            **relay_options,
        )
        await relay.start()
        try:
            yield services, relay
        finally:
            await relay.stop()


def ctx(channel: str = "pos-test") -> CommandContext:
    return CommandContext(
        channel=channel,
        api_key_id="test",
        now=datetime.now(UTC),
        request_id=uuid.uuid4().hex,
        scopes=frozenset({"earn", "members"}),
    )


async def enrol(services: Services) -> uuid.UUID:
    phone = f"+8613{secrets.randbelow(10**9):09d}"
    outcome = await members.enrol(services, ctx(), Enrol(identities=[Identity(kind="phone", value=phone)]))
    assert outcome.status == 201
    return outcome.result.member_id


async def earn(services: Services, member_id: uuid.UUID, order_ref: str | None = None) -> None:
    cmd = EarnPurchase(
        member_id=member_id, order_ref=order_ref or uuid.uuid4().hex, amount=Decimal("10.00"), currency="CNY"
    )
    outcome = await ledger.earn(services, ctx(), cmd)
    assert outcome.status == 201


async def log_ids(services: Services) -> list[str]:
    """Event ids of the whole log, in position order."""
    async with services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id FROM events ORDER BY position")
    return [str(r["event_id"]) for r in rows]


@contextlib.asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


async def stream_count(nc: Client, bus: Bus) -> int:
    try:
        info = await nc.jetstream().stream_info(bus.stream)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def stream_messages(nc: Client, bus: Bus) -> list[Any]:
    """Every message of the stream, by sequence."""
    js = nc.jetstream()
    info = await js.stream_info(bus.stream)
    return [await js.get_msg(bus.stream, seq=seq) for seq in range(1, info.state.last_seq + 1)]


async def assert_stream_is_the_log(nc: Client, bus: Bus, services: Services) -> list[Any]:
    """The stream holds exactly the log: each event once, in position order."""
    ids = await log_ids(services)
    await until(lambda: _count_is(nc, bus, len(ids)), what=f"{len(ids)} messages on the stream")
    messages = await stream_messages(nc, bus)
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ids
    positions = [cloudevents.decode(m.data).position for m in messages]
    assert positions == list(range(1, len(ids) + 1))
    return messages


async def _count_is(nc: Client, bus: Bus, expected: int) -> bool:
    count = await stream_count(nc, bus)
    assert count <= expected, f"the stream holds {count} messages, the log {expected}"
    return count == expected


async def test_every_committed_event_is_published_once_as_a_cloudevent(
    database_url: str, nats_url: str, bus: Bus
) -> None:
    settings = bus.settings(database_url, nats_url)
    async with running(settings, bus) as (services, relay), nats_client(nats_url) as nc:
        member_id = await enrol(services)
        await earn(services, member_id, order_ref="order-1")
        other = await enrol(services)
        # Refused by the appender (the order already earned, on another member): its
        # PointsEarned was built but never committed, so it must never appear.
        with pytest.raises(OrderTaken):
            await earn(services, other, order_ref="order-1")
        await earn(services, other, order_ref="order-2")
        messages = await assert_stream_is_the_log(nc, bus, services)

        async with services.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT position, event_id, stream_id, stream_version, event_type, channel, recorded_at,"
                " hash, global_hash FROM events ORDER BY position"
            )
        assert [r["event_type"] for r in rows] == [
            "program_created",
            "rules_published",
            "member_enrolled",
            "points_earned",
            "member_enrolled",
            "points_earned",
        ]
        for row, msg in zip(rows, messages, strict=True):
            body = json.loads(msg.data)
            is_program = row["event_type"] in ("program_created", "rules_published")
            token = "program" if is_program else str(row["stream_id"])
            assert msg.subject == f"{bus.prefix}.{row['event_type']}.{token}"
            assert body["specversion"] == "1.0"
            assert body["id"] == str(row["event_id"])
            assert body["source"] == "urn:loyalty-ledger"
            assert body["type"] == f"loyalty.{row['event_type']}.v1"
            assert body["subject"] == token
            assert datetime.fromisoformat(body["time"]) == row["recorded_at"]
            assert body["datacontenttype"] == "application/json"
            assert body["position"] == row["position"]
            assert (body["hash"], body["globalhash"]) == (row["hash"].hex(), row["global_hash"].hex())
            assert body["streamversion"] == row["stream_version"]
            assert body.get("channel") == row["channel"]
            assert "originator_id" not in body["data"]
            assert "timestamp" not in body["data"]

        enrolled = json.loads(messages[2].data)["data"]
        assert enrolled["identities"] == [{"kind": "phone"}]  # never the number itself
        assert "profile" not in enrolled
        earned = json.loads(messages[3].data)["data"]
        assert earned["order_ref"] == "order-1"
        assert earned["amount"] == "10.00"
        assert earned["points"] == 10
        assert b"order-1" not in b"".join(m.data for m in messages[5:])

        await until(lambda: relay.status().published_position == len(rows), what="the relay's position")
        status = relay.status()
        assert status.active
        assert status.nats_connected
        assert status.published_position == status.head_position == len(rows)
        assert status.ack_latency_count == len(rows)
        assert status.ack_latency_p99 is not None
        async with services.pool.acquire() as conn:
            checkpoint = await conn.fetch("SELECT position FROM checkpoints WHERE name = $1", TRACKING_NAME)
        assert [r["position"] for r in checkpoint] == [len(rows)]  # one row per follower, not per batch


# -- NATS down --------------------------------------------------------------------------------


class NatsServer:
    """A nats-server of this test's own, restartable on the same port and store directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = Path(sys.executable).parent / "nats-server"
        # First start: let the server pick a free port (read from the ports file); restarts
        # reuse it so that clients reconnect to the same URL.
        port = ["-p", str(self.port)] if self.port else ["-p", "-1", "--ports_file_dir", str(self.directory)]
        self.proc = subprocess.Popen(
            [str(binary), "-js", "-sd", str(self.directory / "store"), "-a", "127.0.0.1", *port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while self.port is None:
            for file in self.directory.glob("*.ports"):
                with contextlib.suppress(ValueError, KeyError, IndexError):
                    self.port = int(json.loads(file.read_text())["nats"][0].rsplit(":", 1)[1])
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not write its ports file")
            time.sleep(0.02)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path)
    server.start()
    yield server
    server.stop()


async def commit_many(services: Services, member_ids: list[uuid.UUID], per_member: int) -> None:
    """Earns for each member concurrently (sequential per member, as a till would)."""

    async def one(member_id: uuid.UUID) -> None:
        for _ in range(per_member):
            await earn(services, member_id)

    await asyncio.gather(*(one(m) for m in member_ids))


async def test_events_committed_while_nats_is_down_are_published_in_order_when_it_returns(
    database_url: str, own_nats: NatsServer, bus: Bus
) -> None:
    settings = bus.settings(database_url, own_nats.url)
    async with running(settings, bus) as (services, relay):
        member_ids = [await enrol(services) for _ in range(20)]
        before = await services.store.last_position()
        await until(lambda: relay.status().published_position == before, what="the relay to catch up")

        own_nats.stop()
        await until(lambda: not relay.status().nats_connected, what="the relay to see NATS down")
        started = time.monotonic()
        await commit_many(services, member_ids, per_member=50)  # commands never wait for NATS
        committed_in = time.monotonic() - started
        head = await services.store.last_position()
        assert head == before + 1000
        await until(lambda: relay.status().head_position == head, what="the status to see the head")
        assert relay.status().lag_events == 1000
        assert relay.status().published_position == before

        own_nats.start()
        async with nats_client(own_nats.url) as nc:
            messages = await assert_stream_is_the_log(nc, bus, services)
        assert len(messages) == head
        status = relay.status()
        assert status.lag_events == 0
        assert status.published_position == head
    print(f"\n1,000 commits with NATS down in {committed_in:.2f} s")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_nats_dying_while_the_backlog_is_published_leaves_it_in_order_and_once(
    database_url: str, own_nats: NatsServer, bus: Bus, sig: signal.Signals
) -> None:
    settings = bus.settings(database_url, own_nats.url)
    async with running(settings, bus, batch_size=100) as (services, relay):
        acks = relay._acks

        async def slowly(sent: Any) -> Any:
            await asyncio.sleep(0.02)  # so that the kill surely lands midway, on any machine
            return await acks(sent)

        relay._acks = slowly  # type: ignore[method-assign]
        member_ids = [await enrol(services) for _ in range(20)]
        own_nats.stop()
        await commit_many(services, member_ids, per_member=100)
        head = await services.store.last_position()
        own_nats.start()
        # Midway through the backlog (many batches in flight), the server dies.
        await until(lambda: relay.status().published_position > 300, what="the backlog to start")
        own_nats.stop(sig)
        assert relay.status().published_position < head, "the backlog finished before the kill"
        own_nats.start()
        async with nats_client(own_nats.url) as nc:
            await assert_stream_is_the_log(nc, bus, services)


# -- the relay killed mid-batch ---------------------------------------------------------------


async def set_checkpoint(services: Services, position: int) -> None:
    async with services.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            TRACKING_NAME,
            position,
        )


@pytest.mark.parametrize("align", [True, False], ids=["aligned-with-stream", "dedupe-only"])
async def test_relay_killed_between_acks_and_recording_leaves_nothing_twice_on_the_stream(
    database_url: str, nats_url: str, bus: Bus, align: bool
) -> None:
    settings = bus.settings(database_url, nats_url)
    async with (
        open_services(settings) as services,
        nats_client(nats_url) as nc,
        contextlib.AsyncExitStack() as stack,
    ):
        assert services.nats is not None
        await ensure_program(services)
        member_ids = [await enrol(services) for _ in range(5)]
        await commit_many(services, member_ids, per_member=20)

        def relay() -> Relay:
            assert services.nats is not None
            started = Relay(
                services.store,
                services.nats,
                settings,
                subject_prefix=bus.prefix,
                poll_interval=0.2,
            )
            stack.push_async_callback(started.stop)
            return started

        # The first relay dies with a batch acknowledged but its position not yet recorded.
        reached = asyncio.Event()

        async def crash_here(position: int) -> None:
            reached.set()
            await asyncio.Event().wait()  # hangs until the task is cancelled: a kill

        first = relay()
        first.before_record = crash_here
        await first.start()
        await asyncio.wait_for(reached.wait(), DEADLINE)
        await first.stop(drain_timeout=0)
        first_batch = await services.store.last_position()
        assert await stream_count(nc, bus) == first_batch
        assert await checkpoint(services) is None

        # Restarted: either it continues after what the stream holds, or it republishes the
        # batch and the stream's de-duplication answers each repeat with its first sequence.
        second = relay()
        second.align_with_stream = align
        await second.start()
        await commit_many(services, member_ids[:2], per_member=5)
        await assert_stream_is_the_log(nc, bus, services)
        head = await services.store.last_position()
        await until(lambda: second.status().published_position == head, what="the second relay's position")
        assert second.status().duplicates == (0 if align else first_batch)
        await second.stop()

        # Tracking set back (a crash earlier in a batch, a restored row): still nothing twice.
        await set_checkpoint(services, 17)
        third = relay()
        third.align_with_stream = align
        await third.start()
        await commit_many(services, member_ids[:1], per_member=3)
        await assert_stream_is_the_log(nc, bus, services)
        head = await services.store.last_position()
        await until(lambda: third.status().published_position == head, what="the third relay's position")
        republished = head - 3 - 17
        assert third.status().duplicates == (0 if align else republished)


async def test_a_tail_the_stream_lost_after_acknowledging_it_is_published_again(
    database_url: str, nats_url: str, bus: Bus
) -> None:
    """NATS acknowledges before its disk has the message: a crashed server may come back
    without the last ones. The relay lines up with the stream's last message on start (and
    after each reconnection) and publishes the missing tail again."""
    settings = bus.settings(database_url, nats_url)
    async with running(settings, bus) as (services, relay), nats_client(nats_url) as nc:
        member_ids = [await enrol(services) for _ in range(4)]
        await assert_stream_is_the_log(nc, bus, services)
        await relay.stop()
        await commit_many(services, member_ids, per_member=5)
        held = await stream_count(nc, bus)
        head = await services.store.last_position()
        await set_checkpoint(services, head)  # as if it had all been acknowledged, then lost
        await relay.start()
        await assert_stream_is_the_log(nc, bus, services)
        await until(lambda: relay.status().published_position == head, what="the tail")
        assert held < head
        assert relay.status().duplicates == 0


async def checkpoint(services: Services) -> int | None:
    async with services.pool.acquire() as conn:
        return await conn.fetchval("SELECT position FROM checkpoints WHERE name = $1", TRACKING_NAME)


# -- late subscribers ---------------------------------------------------------------------------


def load_example() -> Any:
    path = ROOT / "docs" / "guides" / "subscriber_example.py"
    spec = importlib.util.spec_from_file_location("subscriber_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


async def test_a_late_subscriber_replays_the_whole_history(
    database_url: str, nats_url: str, bus: Bus
) -> None:
    example = load_example()
    settings = bus.settings(database_url, nats_url)
    async with running(settings, bus) as (services, _relay), nats_client(nats_url) as nc:
        member_ids = [await enrol(services) for _ in range(3)]
        await commit_many(services, member_ids, per_member=4)
        ids = await log_ids(services)
        await until(lambda: _count_is(nc, bus, len(ids)), what="the history on the stream")

        # The guide's subscriber, started after everything happened, with a durable consumer.
        seen: list[cloudevents.CloudEvent[Any]] = []
        await example.consume(
            nats_url,
            stream=bus.stream,
            durable="late-reader",
            handle=seen.append,
            subjects=[f"{bus.prefix}.>"],
            stop_when_idle=True,
        )
        assert [str(e.id) for e in seen] == ids

        # Durable: a second run only gets what is new.
        await earn(services, member_ids[0])
        await until(lambda: _count_is(nc, bus, len(ids) + 1), what="the new event on the stream")
        more: list[cloudevents.CloudEvent[Any]] = []
        await example.consume(
            nats_url,
            stream=bus.stream,
            durable="late-reader",
            handle=more.append,
            subjects=[f"{bus.prefix}.>"],
            stop_when_idle=True,
        )
        assert [e.type for e in more] == ["loyalty.points_earned.v1"]

        # Filtered: one member's events only, and one event type only.
        one_member: list[cloudevents.CloudEvent[Any]] = []
        await example.consume(
            nats_url,
            stream=bus.stream,
            durable="one-member",
            handle=one_member.append,
            subjects=[f"{bus.prefix}.*.{member_ids[1]}"],
            stop_when_idle=True,
        )
        expected = ["loyalty.member_enrolled.v1"] + ["loyalty.points_earned.v1"] * 4
        assert [e.type for e in one_member] == expected
        enrolments: list[cloudevents.CloudEvent[Any]] = []
        await example.consume(
            nats_url,
            stream=bus.stream,
            durable="enrolments",
            handle=enrolments.append,
            subjects=[f"{bus.prefix}.member_enrolled.*"],
            stop_when_idle=True,
        )
        assert sorted(e.subject for e in enrolments) == sorted(str(m) for m in member_ids)


# -- several instances ----------------------------------------------------------------------


async def test_two_relays_on_one_database_only_one_publishes_and_the_other_takes_over(
    database_url: str, nats_url: str, bus: Bus
) -> None:
    settings = bus.settings(database_url, nats_url)
    async with running(settings, bus) as (services, first), nats_client(nats_url) as nc:
        assert services.nats is not None
        second = Relay(
            services.store,
            services.nats,
            settings,
            subject_prefix=bus.prefix,
            poll_interval=0.2,
            standby_interval=0.2,
        )
        await second.start()
        try:
            await until(lambda: first.status().active or second.status().active, what="a leader")
            leader, standby = (first, second) if first.status().active else (second, first)
            member_ids = [await enrol(services) for _ in range(3)]
            await commit_many(services, member_ids, per_member=10)
            await assert_stream_is_the_log(nc, bus, services)
            assert not standby.status().active
            assert standby.status().published == 0
            # The standby reports the leader's progress (from its checkpoint).
            head = await services.store.last_position()
            await until(lambda: standby.status().published_position == head, what="the standby's status")

            await leader.stop()
            await until(lambda: standby.status().active, what="the standby to take over")
            await commit_many(services, member_ids, per_member=5)
            await assert_stream_is_the_log(nc, bus, services)
            assert standby.status().duplicates == 0
        finally:
            await second.stop()
