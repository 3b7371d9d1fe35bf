"""Projections on a real PostgreSQL: they follow the log exactly once, survive crashes, rebuild.

Commands go through the real handlers; the runner follows the log as it does in the service.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from eventsourcing.persistence import StoredEvent

from domain.identities import Identity
from domain.rules import DEFAULT_RULES
from projections import rebuild as rebuild_module
from projections.balances import BalancesProjection, balance_row
from projections.liability import LiabilityProjection
from projections.members import MembersProjection, member_view
from projections.projection import MemberProjection, Touched
from projections.runner import ProjectionRunner, projection_status, rebuild
from service.config import Settings
from service.handlers import ledger, members
from service.handlers.commands import EarnPurchase, Enrol, Merge, Redeem
from service.handlers.context import CommandContext
from service.handlers.program import ensure_program
from service.handlers.results import Outcome
from service.services import Services, open_services
from service.store.log import LogReader

SCOPES = frozenset({"earn", "award", "redeem", "members", "read"})


@pytest_asyncio.fixture
async def services(database_url: str) -> AsyncIterator[Services]:
    settings = Settings(
        database_url=database_url,
        master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        db_pool_size=12,
        followers="off",  # these tests run runners of their own
    )
    async with open_services(settings) as opened:
        await ensure_program(opened)
        yield opened


R = TypeVar("R")


@dataclass
class Counter:
    """Commands at the counter, and what their responses said each member earned and spent."""

    services: Services
    earned: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    redeemed: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    last_position: int = 0

    def ctx(self, channel: str = "pos-sh-01") -> CommandContext:
        return CommandContext(
            channel=channel,
            api_key_id="test",
            now=datetime.now(UTC),
            request_id=uuid.uuid4().hex,
            scopes=SCOPES,
        )

    def _seen(self, outcome: Outcome[R]) -> R:
        self.last_position = max(self.last_position, outcome.position)
        return outcome.result

    async def enrol(
        self, phone: str | None = None, *, email: str | None = None, channel: str = "pos-sh-01"
    ) -> str:
        identities = [Identity(kind="phone", value=phone or f"+8613{secrets.randbelow(10**9):09d}")]
        if email:
            identities.append(Identity(kind="email", value=email))
        outcome = await members.enrol(self.services, self.ctx(channel), Enrol(identities=identities))
        assert outcome.status == 201
        self._seen(outcome)
        return str(outcome.result.member_id)

    async def earn(self, member_id: str, amount: str, *, channel: str = "pos-sh-01") -> int:
        cmd = EarnPurchase(
            member_id=uuid.UUID(member_id), order_ref=uuid.uuid4().hex, amount=Decimal(amount), currency="CNY"
        )
        outcome = await ledger.earn(self.services, self.ctx(channel), cmd)
        assert outcome.status == 201
        points = self._seen(outcome).points
        self.earned[member_id] += points
        return points

    async def redeem(self, member_id: str, points: int, *, channel: str = "app") -> None:
        cmd = Redeem(member_id=uuid.UUID(member_id), points=points)
        outcome = await ledger.redeem(self.services, self.ctx(channel), cmd)
        assert outcome.status == 201
        self._seen(outcome)
        self.redeemed[member_id] += points

    async def merge(self, target: str, source: str) -> None:
        cmd = Merge(target_id=uuid.UUID(target), source_id=uuid.UUID(source))
        outcome = await members.merge(self.services, self.ctx(), cmd)
        assert outcome.status == 201
        self._seen(outcome)
        self.earned[target] += self.earned.pop(source, 0)
        self.redeemed[target] += self.redeemed.pop(source, 0)

    async def shopping(self, member_ids: list[str], rounds: int) -> None:
        """Each member earns and sometimes spends, all members at once (interleaved in the log)."""

        async def one(member_id: str, i: int) -> None:
            for r in range(rounds):
                await self.earn(member_id, f"{100 + 17 * i + r}.50", channel=("pos-sh-01", "app")[r % 2])
                if r % 3 == 2:
                    await self.redeem(member_id, 50)

        await asyncio.gather(*(one(m, i) for i, m in enumerate(member_ids)))


@pytest_asyncio.fixture
async def counter(services: Services) -> Counter:
    return Counter(services)


@contextlib.asynccontextmanager
async def running(
    services: Services, database_url: str, projections: list[MemberProjection] | None = None, **kw: Any
) -> AsyncIterator[ProjectionRunner]:
    """A runner following the log, as in the service; stopped (mid-batch, if it is in one) on exit."""
    runner = ProjectionRunner(services.pool, services.store, database_url, projections=projections, **kw)
    await runner.start()
    try:
        yield runner
    finally:
        await runner.stop()


async def table(conn: Any, name: str) -> list[dict[str, Any]]:
    """Every row of a projection table, by member."""
    return [dict(r) for r in await conn.fetch(f"SELECT * FROM {name} ORDER BY member_id")]


async def head(services: Services) -> int:
    return int(await services.store.last_position())


# -- following the log ---------------------------------------------------------------------


async def test_projections_follow_commands_into_the_member_view(
    services: Services, counter: Counter, database_url: str
) -> None:
    async with running(services, database_url) as runner:
        # A member enrols at the POS, shops there and in the app, and redeems in the app.
        member = await counter.enrol("+8613800138000", email="Li.Lei@Example.com")
        await counter.earn(member, "1200.00")
        await counter.earn(member, "80.00", channel="app")
        await counter.redeem(member, 300)
        # A duplicate enrolled on the web shop is merged into it.
        duplicate = await counter.enrol(channel="web")
        await counter.earn(duplicate, "10.00", channel="web")
        await counter.merge(member, duplicate)

        assert await runner.wait_for("members", counter.last_position)
        assert await runner.wait_for("balances", counter.last_position)

        view = await member_view(services.pool, uuid.UUID(member))
        aggregate = await services.repository.member(uuid.UUID(member))
        assert aggregate is not None
        assert view is not None
        assert view.status == "active"
        assert view.merged_into is None
        assert view.identities[:2] == [
            Identity(kind="phone", value="+86*******8000"),
            Identity(kind="email", value="l***@example.com"),
        ]
        assert len(view.identities) == 3  # the duplicate's phone came along, masked
        assert view.channels == ["pos-sh-01", "app", "web"]
        assert view.tier == "silver"
        assert view.first_activity_at == aggregate.first_activity_at
        assert view.last_activity_at == aggregate.last_activity_at
        # The balance is the aggregate's own, at the record time of the member's last event.
        expected = aggregate.balance(now=aggregate.modified_on, rules=DEFAULT_RULES)
        assert view.balance == expected
        assert view.balance.lifetime_earned == counter.earned[member] == 1200 + 100 + 10
        assert view.balance.available == 1310 - 300
        # `position` is that of the member's own last event (the merge wrote the duplicate's after it).
        assert view.position == await services.pool.fetchval(
            "SELECT max(position) FROM events WHERE stream_id = $1", uuid.UUID(member)
        )
        assert view.member_id == uuid.UUID(member)

        merged = await member_view(services.pool, uuid.UUID(duplicate))
        assert merged is not None
        assert merged.status == "merged"
        assert merged.merged_into == uuid.UUID(member)

        row = await balance_row(services.pool, uuid.UUID(member))
        assert row is not None
        balance = msgspec.to_builtins(view.balance)
        expiring = balance.pop("expiring")
        assert {k: row[k] for k in balance} == balance
        assert expiring is not None
        assert (row["expiring_points"], row["expiring_at"]) == (
            view.balance.expiring.points,
            view.balance.expiring.at,
        )  # type: ignore[union-attr]
        assert row["version"] == aggregate.version

        # No clear personal value is stored in any projection.
        dump = await services.pool.fetchval("SELECT string_agg(m::text, ' ') FROM members m")
        assert "13800138000" not in dump
        assert "li.lei" not in dump.lower()

        statuses = {s.name: s for s in await runner.status()}
        assert statuses["members"].lag_events == 0
        assert statuses["members"].lag_seconds == 0
        assert statuses["members"].leading is True


async def test_the_log_reader_decodes_every_event_as_the_store_does(
    services: Services, counter: Counter
) -> None:
    member = await counter.enrol("+8613800138000", email="li.lei@example.com")
    duplicate = await counter.enrol()
    await counter.earn(member, "1200.00")
    await counter.redeem(member, 100)
    await counter.merge(member, duplicate)
    reader = LogReader(services.keyring)

    async with services.pool.acquire() as conn:
        lean = await reader.read(conn, after=0, limit=1000)  # the projections' page
        full = await reader.read_recorded(conn, after=0, limit=1000)  # the relay's page
        rows = await conn.fetch(
            "SELECT event_id, stream_id, stream_version, topic, data, channel FROM events ORDER BY position"
        )
        keys = await services.store.load_keys(conn, {r["stream_id"] for r in rows})
    theirs = [
        services.store.codec.decode(
            StoredEvent(r["stream_id"], r["stream_version"], r["topic"], r["data"]), keys[r["stream_id"]]
        )
        for r in rows
    ]

    positions = list(range(1, len(rows) + 1))
    assert [e.position for e in lean] == [e.position for e in full] == positions
    assert [e.event_id for e in full] == [r["event_id"] for r in rows]
    assert [e.channel for e in full] == [r["channel"] for r in rows]
    for mine, recorded, store in zip(lean, full, theirs, strict=True):
        assert type(mine.event) is type(recorded.event) is type(store)
        assert vars(mine.event) == vars(recorded.event) == vars(store)
    enrolled = next(e.event for e in full if e.stream_id == uuid.UUID(member) and e.stream_version == 1)
    assert "li.lei@example.com" in repr(vars(enrolled))  # decrypted with the member's own key


async def test_wait_for_is_true_once_caught_up_and_false_after_its_timeout(
    services: Services, counter: Counter, database_url: str
) -> None:
    member = await counter.enrol()
    async with running(services, database_url) as runner:
        assert await runner.wait_for("balances", counter.last_position)

        # A position nobody has written yet: the read gives up after its timeout.
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert not await runner.wait_for("balances", counter.last_position + 1, timeout=0.3)
        assert 0.3 <= loop.time() - started < 2.0

        # Once it is written, a waiter wakes when the projection applies it.
        waiting = asyncio.create_task(runner.wait_for("balances", counter.last_position + 1))
        await counter.earn(member, "10.00")
        assert await waiting
        assert runner.position("balances") >= counter.last_position


async def test_status_shows_position_and_lag_without_a_runner(
    services: Services, counter: Counter, database_url: str
) -> None:
    await counter.enrol()
    await counter.enrol()
    behind = {s.name: s for s in await projection_status(services.pool)}
    assert behind["balances"].position == 0
    assert behind["balances"].lag_events == await head(services)
    assert behind["balances"].lag_seconds > 0

    async with running(services, database_url) as runner:
        assert await runner.wait_for("balances", counter.last_position)
        assert await runner.wait_for("members", counter.last_position)

    caught_up = {s.name: s for s in await projection_status(services.pool)}
    assert caught_up["balances"].position == caught_up["balances"].head
    assert caught_up["members"].lag_events == 0
    assert caught_up["members"].lag_seconds == 0


async def test_each_event_is_applied_exactly_once(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(12)]
    # Small batches and commands arriving all the time: many batches, each its own transaction.
    async with running(services, database_url, batch=7, poll_interval=0.05) as runner:
        await counter.shopping(shoppers, rounds=6)
        assert await runner.wait_for("balances", counter.last_position, timeout=30)

    rows = {r["member_id"]: r for r in await table(services.pool, "balances")}
    versions = {
        r["stream_id"]: r["version"]
        for r in await services.pool.fetch(
            "SELECT stream_id, max(stream_version) AS version FROM events GROUP BY stream_id"
        )
    }
    for member in shoppers:
        row = rows[uuid.UUID(member)]
        assert row["lifetime_earned"] == counter.earned[member]
        assert row["lifetime_redeemed"] == counter.redeemed[member]
        assert row["version"] == versions[uuid.UUID(member)]
    tracked = await services.pool.fetchval("SELECT position FROM checkpoints WHERE name = 'balances'")
    assert tracked == await head(services)


async def test_one_instance_leads_each_projection_and_another_takes_over_when_it_stops(
    services: Services, counter: Counter, database_url: str
) -> None:
    member = await counter.enrol()
    instances = [
        ProjectionRunner(services.pool, services.store, database_url, poll_interval=0.1) for _ in range(2)
    ]
    for instance in instances:
        await instance.start()
    try:
        await counter.earn(member, "20.00")
        # Both answer min_position reads; one applies.
        for instance in instances:
            assert await instance.wait_for("balances", counter.last_position)
        leading = [next(s.leading for s in await i.status() if s.name == "balances") for i in instances]
        assert sorted(leading) == [False, True]
        leader, follower = instances if leading[0] else instances[::-1]

        await leader.stop()
        await counter.earn(member, "30.00")

        assert await follower.wait_for("balances", counter.last_position)
        assert next(s.leading for s in await follower.status() if s.name == "balances")
    finally:
        for instance in instances:
            await instance.stop()


# -- crashes -------------------------------------------------------------------------------


class FailsOnce(BalancesProjection):
    """Writes a batch's rows, then fails before the batch is tracked (once)."""

    failures = 0

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[uuid.UUID, Touched], *, after: int = 0
    ) -> None:
        await super().write(conn, touched, after=after)
        if touched and FailsOnce.failures == 0:
            FailsOnce.failures += 1
            raise RuntimeError("crash after writing part of a batch")


class Stalls(BalancesProjection):
    """Writes a batch's rows, then hangs inside the transaction until cancelled."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.inside = asyncio.Event()

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[uuid.UUID, Touched], *, after: int = 0
    ) -> None:
        await super().write(conn, touched, after=after)
        if touched:
            self.inside.set()
            await asyncio.Event().wait()


async def test_a_batch_that_fails_midway_is_retried_and_equals_a_rebuild_from_zero(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(5)]
    await counter.shopping(shoppers, rounds=4)
    FailsOnce.failures = 0

    async with running(services, database_url, [FailsOnce(services.store)]) as runner:
        assert await runner.wait_for("balances", counter.last_position, timeout=10)
    assert FailsOnce.failures == 1
    live = await table(services.pool, "balances")

    await rebuild(services.pool, services.store, "balances")

    assert await table(services.pool, "balances") == live
    assert {uuid.UUID(m) for m in shoppers} <= {r["member_id"] for r in live}


async def test_a_projection_killed_mid_batch_and_restarted_equals_a_rebuild_from_zero(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(5)]
    await counter.shopping(shoppers, rounds=4)
    stalling = Stalls(services.store)

    # Killed while its batch is written but not committed: nothing of the batch remains.
    async with running(services, database_url, [stalling], batch=20):
        await asyncio.wait_for(stalling.inside.wait(), 10)
    tracked = await services.pool.fetchval("SELECT position FROM checkpoints WHERE name = 'balances'")
    assert tracked < counter.last_position

    # Restarted: it goes on from its tracked position.
    async with running(services, database_url, [BalancesProjection(services.store)]) as runner:
        await counter.shopping(shoppers[:2], rounds=2)
        assert await runner.wait_for("balances", counter.last_position, timeout=10)
    live = await table(services.pool, "balances")

    await rebuild(services.pool, services.store, "balances")

    assert await table(services.pool, "balances") == live
    for member in shoppers:
        row = next(r for r in live if r["member_id"] == uuid.UUID(member))
        assert row["lifetime_earned"] == counter.earned[member]


class LiabilityFailsOnce(LiabilityProjection):
    """Writes a batch's items, then fails before the batch is tracked (once)."""

    failures = 0

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[uuid.UUID, Touched], *, after: int = 0
    ) -> None:
        await super().write(conn, touched, after=after)
        if touched and LiabilityFailsOnce.failures == 0:
            LiabilityFailsOnce.failures += 1
            raise RuntimeError("crash after writing part of a batch")


async def liability_tables(conn: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every item of `liability`, and the sums that are not zero."""
    items = await conn.fetch("SELECT * FROM liability ORDER BY member_id, kind, item")
    sums = await conn.fetch(
        "SELECT * FROM liability_sums WHERE points <> 0 ORDER BY kind, available_hour, expires_hour"
    )
    return [dict(r) for r in items], [dict(r) for r in sums]


async def test_liability_items_written_as_differences_equal_a_rebuild_after_a_failure_a_restart_and_a_merge(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(6)]
    await counter.shopping(shoppers, rounds=4)  # earns, and redemptions that empty lots
    LiabilityFailsOnce.failures = 0

    # A failed batch leaves its items in the projection's memory but not in the table.
    async with running(services, database_url, [LiabilityFailsOnce(services.store)], batch=15) as runner:
        assert await runner.wait_for("liability", counter.last_position, timeout=10)
    assert LiabilityFailsOnce.failures == 1
    await counter.shopping(shoppers, rounds=2)
    await counter.merge(shoppers[0], shoppers[1])

    # A new instance has written nothing yet: it reads the members' items back first.
    async with running(services, database_url, [LiabilityProjection(services.store)], batch=7) as runner:
        assert await runner.wait_for("liability", counter.last_position, timeout=10)
        await counter.shopping(shoppers[2:], rounds=3)
        assert await runner.wait_for("liability", counter.last_position, timeout=10)
    live_items, live_sums = await liability_tables(services.pool)

    await rebuild(services.pool, services.store, "liability")

    assert await liability_tables(services.pool) == (live_items, live_sums)
    assert not any(r["member_id"] == uuid.UUID(shoppers[1]) for r in live_items if r["kind"] == "lot")
    assert sum(r["points"] for r in live_items if r["kind"] == "earned") == sum(counter.earned.values())


class Broken(BalancesProjection):
    """Fails at every write while `broken` is set."""

    broken = True

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[uuid.UUID, Touched], *, after: int = 0
    ) -> None:
        await super().write(conn, touched, after=after)
        if touched and Broken.broken:
            raise RuntimeError("this projection cannot write")


async def test_the_runner_decodes_each_event_once_for_all_its_projections(
    services: Services, counter: Counter, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shoppers = [await counter.enrol() for _ in range(6)]
    await counter.shopping(shoppers, rounds=3)
    read: list[int] = []
    original = LogReader.decode

    async def counted(self: LogReader, conn: asyncpg.Connection, rows: Any) -> Any:
        events = await original(self, conn, rows)
        read.extend(e.position for e in events)
        return events

    monkeypatch.setattr(LogReader, "decode", counted)
    async with running(services, database_url) as runner:
        for name in ("balances", "members"):
            assert await runner.wait_for(name, counter.last_position, timeout=10)

    assert sorted(read) == sorted(set(read))  # never twice
    assert read[-1] == counter.last_position


async def test_a_failing_projection_does_not_hold_the_others_back_and_catches_up_after(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(5)]
    async with services.pool.acquire() as conn:
        await conn.execute("CREATE TABLE broken (LIKE balances INCLUDING ALL)")
    Broken.broken = True
    projections: list[MemberProjection] = [
        BalancesProjection(services.store),
        MembersProjection(services.store),
        Broken(services.store, name="broken", table="broken"),
    ]
    async with running(services, database_url, projections, poll_interval=0.1) as runner:
        await counter.shopping(shoppers, rounds=3)
        for name in ("balances", "members"):
            assert await runner.wait_for(name, counter.last_position, timeout=10)
        statuses = {s.name: s for s in await runner.status()}
        assert statuses["broken"].position == 0
        assert statuses["broken"].error is not None
        assert statuses["balances"].error is None

        # Mended: it catches up from its own position, behind the others, and equals them.
        Broken.broken = False
        await counter.shopping(shoppers[:2], rounds=1)
        for name in ("balances", "members", "broken"):
            assert await runner.wait_for(name, counter.last_position, timeout=15)
        # (Its progress notification may wake the wait a moment before its error is cleared.)
        for _ in range(100):
            if {s.name: s.error for s in await runner.status()}["broken"] is None:
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the mended projection still reports its error")
    assert await table(services.pool, "broken") == await table(services.pool, "balances")


# -- rebuilds ------------------------------------------------------------------------------


async def test_a_rebuild_while_commands_keep_coming_equals_the_live_projection_and_swaps_atomically(
    services: Services, counter: Counter, database_url: str
) -> None:
    shoppers = [await counter.enrol() for _ in range(20)]
    await counter.shopping(shoppers, rounds=3)
    async with services.pool.acquire() as conn:
        # References that follow the log the whole time and are never rebuilt.
        await conn.execute("CREATE TABLE balances_ref (LIKE balances INCLUDING ALL)")
        await conn.execute("CREATE TABLE members_ref (LIKE members INCLUDING ALL)")
    projections: list[MemberProjection] = [
        BalancesProjection(services.store),
        MembersProjection(services.store),
        BalancesProjection(services.store, name="balances_ref", table="balances_ref"),
        MembersProjection(services.store, name="members_ref", table="members_ref"),
    ]
    async with running(services, database_url, projections) as runner:
        assert await runner.wait_for("members", counter.last_position, timeout=10)
        stop = asyncio.Event()
        problems: list[str] = []

        async def keep_shopping() -> None:
            while not stop.is_set():
                await counter.shopping(shoppers[:4], rounds=1)

        async def keep_reading() -> None:
            # Readers see a whole table before and after the swap, never a gap or a step back.
            seen: dict[str, int] = {}
            while not stop.is_set():
                for member in shoppers[:6]:
                    view = await member_view(services.pool, uuid.UUID(member))
                    if view is None:
                        problems.append(f"{member} missing")
                    elif view.position < seen.get(member, 0):
                        problems.append(f"{member} went back")
                    else:
                        seen[member] = view.position
                count = await services.pool.fetchval("SELECT count(*) FROM balances")
                if count < len(shoppers):
                    problems.append(f"balances had {count} rows")
                await asyncio.sleep(0)

        shopping, reading = asyncio.create_task(keep_shopping()), asyncio.create_task(keep_reading())
        # One rebuilt by the service's runner, one as `loyalty projections rebuild` does it.
        balances_report = await runner.rebuild("balances")
        members_report = await rebuild(services.pool, services.store, "members")
        stop.set()
        await asyncio.gather(shopping, reading)

        for name in ("balances", "members", "balances_ref", "members_ref"):
            assert await runner.wait_for(name, counter.last_position, timeout=10)
        assert problems == []
        assert await table(services.pool, "balances") == await table(services.pool, "balances_ref")
        assert await table(services.pool, "members") == await table(services.pool, "members_ref")

    assert balances_report.events >= members_report.events - counter.last_position
    leftovers = await services.pool.fetch(
        "SELECT relname FROM pg_class WHERE relname LIKE '%rebuild%'"
        " UNION ALL SELECT name FROM checkpoints WHERE name LIKE '%rebuild%'"
    )
    assert leftovers == []
    indexes = {r["indexname"] for r in await services.pool.fetch("SELECT indexname FROM pg_indexes")}
    assert {"balances_pkey", "members_pkey"} <= indexes


async def test_a_parallel_rebuild_equals_a_single_process_one(
    services: Services, counter: Counter, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    shoppers = [await counter.enrol() for _ in range(16)]
    await counter.shopping(shoppers, rounds=3)
    await rebuild(services.pool, services.store, "members")
    single = await table(services.pool, "members")
    monkeypatch.setattr(rebuild_module, "PARALLEL_MIN_EVENTS", 1)

    report = await rebuild(services.pool, services.store, "members", database_url=database_url, workers=2)

    assert report.position == await head(services)
    assert await table(services.pool, "members") == single
