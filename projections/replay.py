"""Every projection as it was at a past instant or position, in a schema of its own.

`loyalty replay --until T` folds the log up to T into fresh copies of the projection tables in
a scratch schema (never the live tables, checkpoints or outboxes): the same projection classes
and the same fold as the runner and a rebuild, read up to the position instead of the head.
An instant is the last position recorded at or before it; the rows are then decided at that
instant, as a reader of the live tables would have been answered then: a member whose balance
had changed with time since its last event (`next_change_at` passed: a lot unlocked or
expired, an earn left the tier window) is written again at the instant. So the replayed
`balances` row of a member equals `GET /v1/members/{id}/balance?as_of=T`.

Personal data: the log is read with the members' keys as they are now, so a member forgotten
since reads as forgotten then too (no identities, no profile): a replay never brings back
what was shredded.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service.store.event_store import EventStore
from service.store.log import LogReader

from .projection import REBUILD_CACHE_SIZE, LogFold, MemberProjection, Touched, fewer_collections
from .registry import PROJECTIONS
from .segments import SegmentsProjection, reevaluate_table

REPLAY_BATCH = 20_000
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """A finished replay: where it stopped, and the tables it wrote."""

    schema: str
    position: int
    at: datetime | None  # the instant the rows were decided at (None: at each member's last event)
    events: int
    tables: list[str]
    seconds: float


async def position_at(conn: Any, at: datetime) -> int:
    """The last position recorded at or before `at` (0: none)."""
    return int(
        await conn.fetchval("SELECT coalesce(max(position), 0) FROM events WHERE recorded_at <= $1", at)
    )


async def replay_until(
    pool: asyncpg.Pool,
    store: EventStore,
    *,
    schema: str,
    position: int | None = None,
    at: datetime | None = None,
    batch: int = REPLAY_BATCH,
) -> ReplayReport:
    """Build every registered projection up to `position` (or the instant `at`) in `schema`.

    The schema's tables of the projections' names are replaced; nothing else is touched.
    """
    if (position is None) == (at is None):
        raise ValueError("give either a position or an instant")
    if _SCHEMA.match(schema) is None or schema in ("public", "pg_catalog", "information_schema"):
        raise ValueError(f"not a scratch schema name: {schema!r}")
    started = time.perf_counter()
    async with pool.acquire() as conn:
        until = position if position is not None else await position_at(conn, at)  # type: ignore[arg-type]
        live_schema = await conn.fetchval("SELECT current_schema()")
        if live_schema == schema:
            raise ValueError(f"{schema!r} is the live schema")
        reader = LogReader(store.keyring, until=until)
        fold = LogFold(reader, cache_size=REBUILD_CACHE_SIZE)
        projections = [
            cls(store, table=f"{schema}.{cls.kind}", reader=reader, cache_size=REBUILD_CACHE_SIZE)
            for cls in PROJECTIONS.values()
        ]
        async with conn.transaction():
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            for p in projections:
                await conn.execute(f"DROP TABLE IF EXISTS {p.table}")
                await conn.execute(f"CREATE TABLE {p.table} (LIKE {live_schema}.{p.kind} INCLUDING ALL)")
        reached = 0
        with fewer_collections():
            while reached < until:
                async with conn.transaction():
                    after = reached
                    reached, touched = await fold.fold(conn, after=after, limit=batch)
                    for p in projections:
                        await p.write(conn, touched, after=after)
                if reached == after:
                    break  # nothing more below `until`
            if at is not None:
                await _decide_at(conn, fold, projections, schema, at)
                async with conn.transaction():
                    # Segments change with time alone too (at risk, dormant): decided at `at`.
                    await reevaluate_table(
                        conn, f"{schema}.{SegmentsProjection.kind}", at=at, rules=fold.rules.segments
                    )
    return ReplayReport(
        schema=schema,
        position=until,
        at=at,
        events=reached,
        tables=[p.table for p in projections],
        seconds=time.perf_counter() - started,
    )


async def _decide_at(
    conn: asyncpg.Connection, fold: LogFold, projections: list[MemberProjection], schema: str, at: datetime
) -> None:
    """Write again, at `at`, the members whose balance time alone had changed by then."""
    rows = await conn.fetch(
        f"SELECT member_id, version, position, updated_at FROM {schema}.balances WHERE next_change_at <= $1",
        at,
    )
    for start in range(0, len(rows), REPLAY_BATCH):
        chunk = rows[start : start + REPLAY_BATCH]
        # Each member at the version of its row (the fold's cache may have let it go).
        members = await fold.reader.load_streams(conn, {r["member_id"]: r["version"] + 1 for r in chunk})
        touched = {
            r["member_id"]: Touched(members[r["member_id"]], fold.rules, at, r["position"], r["updated_at"])
            for r in chunk
        }
        async with conn.transaction():
            for p in projections:
                # No events: a read model adding up events adds nothing; the others rewrite rows.
                await p.write(conn, touched, after=fold.position or 0)
