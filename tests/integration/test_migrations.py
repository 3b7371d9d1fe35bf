"""Migrations on a database that already holds data: 0005 folds the two progress tables into one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio

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
