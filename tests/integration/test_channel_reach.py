"""Active members per channel over a range, counted from kept returns (ADR 26), equal a distinct
count over the members' days: for every range of a span crossing four months, after batches
that add days in random order (backdated between a member's others, several a member in one
batch, on rows first written without activity), and the kept counts equal those computed afresh.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

import asyncpg
import pytest
import pytest_asyncio

from projections import channel_reach
from projections.channels import ChannelsProjection, channel_figures
from projections.projection import Touched
from service.store.log import LogEvent, LogReader
from service.store.migrate import migrate

CHANNELS = ("pos", "app", "web")
START = date(2026, 1, 20)  # a span from mid-January to early April, so ranges cross months
SPAN = 76


@dataclass
class Event:
    """What the projection reads of an event (the fields `add_event` uses)."""

    channel: str
    at: datetime
    occurred_at: datetime
    points: int = 10
    source: str = "purchase"
    amount: Decimal | None = Decimal("12.50")


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        await migrate(connection)
        yield connection
    finally:
        await connection.close()


def _at(day: date, rng: random.Random) -> datetime:
    return datetime(day.year, day.month, day.day, rng.randrange(24), rng.randrange(60), tzinfo=UTC)


@dataclass
class _Touched:
    """A touched member as the channels projection reads it (its events only)."""

    events: list[LogEvent]


async def _write(
    conn: asyncpg.Connection, projection: ChannelsProjection, batch: list[tuple[uuid.UUID, str, Event]]
) -> None:
    touched: dict[uuid.UUID, Touched] = {}
    for position, (member, kind, event) in enumerate(batch, start=1):
        t = touched.setdefault(member, cast(Touched, _Touched([])))
        t.events.append(LogEvent(position, member, position, kind, event.at, event))
    async with conn.transaction():
        await projection.write(conn, touched)


@pytest.mark.asyncio
async def test_active_members_equal_a_distinct_count_for_every_range(conn: asyncpg.Connection) -> None:
    seed = secrets.randbits(32)
    rng = random.Random(seed)
    projection = ChannelsProjection(None, reader=LogReader(None))
    members = [uuid.uuid4() for _ in range(40)]
    active: set[tuple[date, str, uuid.UUID]] = set()
    events: list[tuple[uuid.UUID, str, Event]] = []
    for _ in range(700):
        member, channel = rng.choice(members), rng.choice(CHANNELS)
        day = START + timedelta(days=rng.randrange(SPAN))
        at = _at(day, rng)
        kind = rng.choice(("points_earned", "points_earned", "points_redeemed", "member_enrolled", "award"))
        if kind == "award":  # an earn that is no purchase: a row with no activity
            events.append((member, "points_earned", Event(channel, at, at, source="award", amount=None)))
            continue
        events.append((member, kind, Event(channel, at, at)))
        if kind != "member_enrolled":
            active.add((day, channel, member))
    start = 0
    while start < len(events):  # batches of 1 to 120 events, the days in random order
        size = rng.randint(1, 120)
        await _write(conn, projection, events[start : start + size])
        start += size

    def expected(first: date | None, last: date | None) -> dict[str, int]:
        found: dict[str, set[uuid.UUID]] = defaultdict(set)
        for day, channel, member in active:
            if (first is None or day >= first) and (last is None or day <= last):
                found[channel].add(member)
        return {c: len(m) for c, m in found.items()}

    async def counted(first: date | None, last: date | None) -> dict[str, int]:
        return {
            f.channel: f.active_members for f in await channel_figures(conn, first, last) if f.active_members
        }

    days = [START - timedelta(days=3) + timedelta(days=i) for i in range(SPAN + 6)]
    ranges: list[tuple[date | None, date | None]] = [(None, None), (days[10], None), (None, days[40])]
    ranges += [(a, b) for i, a in enumerate(days) for b in days[i:] if rng.random() < 0.15]
    ranges += [(d, d) for d in days]
    try:
        for first, last in ranges:
            assert await counted(first, last) == expected(first, last), (first, last)
        # The counts kept batch by batch are those computed afresh (as at a rebuild's swap).
        kept = await _returns(conn)
        async with conn.transaction():
            for statement in channel_reach.recompute("channel_days"):
                await conn.execute(statement)
        assert await _returns(conn) == kept
        assert kept
    except AssertionError as failure:
        raise AssertionError(f"{failure} (seed {seed})") from failure


async def _returns(conn: asyncpg.Connection) -> dict[tuple[Any, ...], int]:
    rows = await conn.fetch(
        "SELECT grain, prev, day, channel, returns FROM channel_returns WHERE returns <> 0"
    )
    return {(r["grain"], r["prev"], r["day"], r["channel"]): r["returns"] for r in rows}


def test_a_range_is_cut_into_head_days_whole_months_and_tail_days() -> None:
    w = channel_reach.window(date(2026, 1, 30), date(2026, 4, 2))
    assert (w.head, w.months, w.tail) == (
        [date(2026, 1, 30), date(2026, 1, 31)],
        [date(2026, 2, 1), date(2026, 3, 1)],
        [date(2026, 4, 1), date(2026, 4, 2)],
    )
    whole = channel_reach.window(date(2026, 2, 1), date(2026, 3, 31))
    assert (whole.head, whole.months, whole.tail) == ([], [date(2026, 2, 1), date(2026, 3, 1)], [])
    inside = channel_reach.window(date(2026, 2, 3), date(2026, 2, 5))
    assert (inside.head, inside.months, inside.tail) == (
        [date(2026, 2, 3), date(2026, 2, 4), date(2026, 2, 5)],
        [],
        [],
    )
    assert channel_reach.window(date(2028, 2, 1), date(2028, 2, 29)).months == [date(2028, 2, 1)]
    year = channel_reach.window(date(2025, 11, 29), date(2026, 11, 28))
    assert (len(year.head), len(year.months), len(year.tail)) == (2, 11, 28)
