"""Migrations on a database that already holds data: 0005 folds the two progress tables into one,
0015 counts the returns of the channel rows already there."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest
import pytest_asyncio

from projections.channels import channel_figures
from service.store.migrate import _migrations, migrate


async def migrate_up_to(conn: asyncpg.Connection, version: int) -> None:
    """The schema as it was after `version`, recorded as `migrate` records it."""
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for number, name, sql in _migrations():
        if number <= version:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", number, name)


@pytest_asyncio.fixture
async def at_0004(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database migrated up to 0004 (before checkpoints)."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await migrate_up_to(conn, 4)
        yield conn
    finally:
        await conn.close()


async def table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def test_0005_moves_every_follower_into_checkpoints(at_0004: asyncpg.Connection) -> None:
    # Given the relay's and a library process's tracking rows (a row per position, as 0001 kept
    # them) and the projections' positions, one of them mid-rebuild.
    conn = at_0004
    await conn.executemany(
        "INSERT INTO tracking (name, position) VALUES ($1, $2)",
        [("relay", 5), ("relay", 9), ("relay", 7), ("upstream_app", 3)],
    )
    balances_at = datetime(2026, 11, 1, 12, 30, tzinfo=UTC)
    await conn.executemany(
        "INSERT INTO projection_positions (name, position, updated_at) VALUES ($1, $2, $3)",
        [("balances", 12, balances_at), ("members", 10, balances_at), ("balances__rebuild", 4, balances_at)],
    )

    # When the pending migrations run.
    applied = await migrate(conn)

    # Then each follower has one checkpoint at its furthest position, and the old tables are gone.
    assert applied[0] == "0005_checkpoints.sql"
    rows = await conn.fetch("SELECT name, position, updated_at FROM checkpoints")
    assert {r["name"]: r["position"] for r in rows} == {
        "relay": 9,
        "upstream_app": 3,
        "balances": 12,
        "members": 10,
        "balances__rebuild": 4,
    }
    assert {r["name"]: r["updated_at"] for r in rows}["balances"] == balances_at
    assert not await table_exists(conn, "tracking")
    assert not await table_exists(conn, "projection_positions")


async def test_0005_refuses_a_name_followed_in_both_old_tables(at_0004: asyncpg.Connection) -> None:
    # Given one name in both tables: two followers under one name, whose position is unknowable.
    conn = at_0004
    await conn.execute("INSERT INTO tracking (name, position) VALUES ('balances', 3)")
    await conn.execute("INSERT INTO projection_positions (name, position) VALUES ('balances', 12)")

    # When the migration runs, it fails on the one name and leaves the database as it was.
    with pytest.raises(asyncpg.UniqueViolationError):
        await migrate(conn)
    assert await table_exists(conn, "tracking")
    assert await table_exists(conn, "projection_positions")
    assert not await table_exists(conn, "checkpoints")
    assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 4


async def test_0015_counts_the_returns_of_the_channel_days_already_there(database_url: str) -> None:
    # Given channel rows written before 0015 (their totals too), some without activity.
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        await migrate_up_to(conn, 14)
        member_a, member_b = uuid.uuid4(), uuid.uuid4()
        rows = [
            (date(2026, 1, 30), "pos", member_a, 1, 0),
            (date(2026, 2, 2), "pos", member_a, 0, 1),
            (date(2026, 2, 3), "pos", member_a, 0, 0),  # an enrolment or an award only
            (date(2026, 3, 9), "pos", member_a, 2, 0),
            (date(2026, 2, 2), "pos", member_b, 1, 0),
            (date(2026, 2, 2), "app", member_a, 1, 0),
        ]
        await conn.executemany(
            "INSERT INTO channel_days (day, channel, member_id, purchases, redemptions)"
            " VALUES ($1, $2, $3, $4, $5)",
            rows,
        )
        await conn.execute(
            "INSERT INTO channel_totals (day, channel, purchases, redemptions)"
            " SELECT day, channel, sum(purchases), sum(redemptions) FROM channel_days GROUP BY 1, 2"
        )

        # When 0015 runs.
        assert await migrate(conn) == ["0015_channel_returns.sql"]

        # Then the active members of any range are those of the rows.
        def distinct(first: date, last: date) -> dict[str, int]:
            found: dict[str, set[uuid.UUID]] = {}
            for day, channel, member, purchases, redemptions in rows:
                if first <= day <= last and purchases + redemptions > 0:
                    found.setdefault(channel, set()).add(member)
            return {c: len(m) for c, m in found.items()}

        days = [date(2026, 1, 28) + timedelta(days=i) for i in range(45)]
        for first in days:
            for last in days[days.index(first) :: 4]:
                figures = await channel_figures(conn, first, last)
                assert {f.channel: f.active_members for f in figures if f.active_members} == distinct(
                    first, last
                ), (first, last)
        assert await conn.fetchval("SELECT count(*) FROM channel_returns WHERE grain = 'dd'") == 2
    finally:
        await conn.close()
