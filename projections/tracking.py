"""Tracking: how far each projection has applied the log, advanced with each batch.

Each projection has a checkpoint (its row in `checkpoints`). A batch is applied after locking
that row (FOR UPDATE) and the row is advanced in the same transaction: a crash loses the whole
batch or none of it, and two instances can never apply the same batch. The runner applies
its projections with one fold of the log for all of them (`apply_shared`): their rows and
their checkpoints advance in one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from .projection import LogFold, MemberProjection
from .registry import PROJECTIONS

PROGRESS_CHANNEL = "loyalty_projections"  # NOTIFY "name:position" after each applied batch
REBUILD_SUFFIX = "__rebuild"  # checkpoint name and tables of a rebuild in progress
LOCK_CLASS = 0x50524A  # advisory-lock namespace of projections ("PRJ"); the key is hashtext(name)


@dataclass(frozen=True, slots=True)
class ProjectionStatus:
    """How far a projection has applied the log, and how far behind it is."""

    name: str
    position: int
    head: int
    lag_events: int
    lag_seconds: float  # age of the oldest event not applied yet (0 when caught up)
    rebuild_position: int | None = None  # a rebuild in progress has reached this position
    leading: bool | None = None  # this instance applies it (None: asked without a runner)
    error: str | None = None  # the last failure, while it keeps failing


async def ensure_tracked(conn: Any, names: Sequence[str]) -> None:
    """Give each projection its checkpoint (at 0) if it has none."""
    await conn.execute(
        "INSERT INTO checkpoints (name) SELECT unnest($1::text[]) ON CONFLICT (name) DO NOTHING",
        list(names),
    )


async def apply_tracked(
    conn: asyncpg.Connection, projection: MemberProjection, limit: int
) -> tuple[int, int]:
    """Inside the caller's transaction: lock the checkpoint, apply a batch after it, advance it.

    Returns (position before, position after).
    """
    after = await conn.fetchval(
        "SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE", projection.name
    )
    if after is None:
        raise LookupError(f"projection {projection.name!r} has no checkpoint")
    reached = await projection.apply(conn, after=after, limit=limit)
    if reached != after:
        await _advance(conn, [projection.name], reached)
    return after, reached


class ProjectionFailed(Exception):
    """One projection's rows could not be written: the shared batch is rolled back."""

    def __init__(self, name: str, error: Exception) -> None:
        super().__init__(f"projection {name!r}: {error!r}")
        self.name = name
        self.error = error


async def apply_shared(
    conn: asyncpg.Connection, fold: LogFold, projections: Sequence[MemberProjection], limit: int
) -> dict[str, tuple[int, int]]:
    """Inside the caller's transaction: one fold of the log for several projections.

    Locks their checkpoints (in name order), folds up to `limit` events from the lowest of
    their positions, writes each projection's rows of the touched members and advances the
    checkpoints of those that moved. Returns (position before, position after) by name. A projection
    ahead of the lowest position also gets the rows of members it has already applied, with
    the same values (a row is the member's whole state at its last event, a function of the
    log); one at or past the end of the fold is left alone (it must never go back). A failing
    write raises ProjectionFailed naming the projection; the caller rolls the batch back and
    goes on without it for a while.
    """
    names = [p.name for p in projections]
    rows = await conn.fetch(
        "SELECT name, position FROM checkpoints WHERE name = ANY($1::text[]) ORDER BY name FOR UPDATE",
        names,
    )
    positions: dict[str, int] = {r["name"]: r["position"] for r in rows}
    missing = [n for n in names if n not in positions]
    if missing:
        raise LookupError(f"projections {missing} have no checkpoint")
    reached, touched = await fold.fold(conn, after=min(positions.values()), limit=limit)
    moved = [p for p in projections if reached > positions[p.name]]
    for projection in moved:
        try:
            await projection.write(conn, touched, after=positions[projection.name])
        except Exception as exc:
            raise ProjectionFailed(projection.name, exc) from exc
    if moved:
        await _advance(conn, [p.name for p in moved], reached)
    return {n: (positions[n], reached if reached > positions[n] else positions[n]) for n in names}


async def _advance(conn: asyncpg.Connection, names: Sequence[str], position: int) -> None:
    # One round trip: the checkpoints, and a progress notification for each.
    await conn.execute(
        "WITH moved AS (UPDATE checkpoints SET position = $2, updated_at = now()"
        " WHERE name = ANY($1::text[]) RETURNING name)"
        " SELECT count(pg_notify($3, name || ':' || $2::text)) FROM moved",
        list(names),
        position,
        PROGRESS_CHANNEL,
    )


async def step(pool: asyncpg.Pool, projection: MemberProjection, limit: int) -> tuple[int, int]:
    """Apply one batch in its own transaction; on any failure (or cancellation) nothing of it stays."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            return await apply_tracked(conn, projection, limit)
    except BaseException:
        # The cache may hold changes of the rolled-back batch.
        projection.reset()
        raise


async def statuses(conn: Any, names: Sequence[str]) -> list[ProjectionStatus]:
    """Position, log head and lag of each named projection (connection or pool)."""
    tracked = [*names, *(n + REBUILD_SUFFIX for n in names)]
    rows = await conn.fetch(
        "SELECT p.name, p.position, h.head,"
        " coalesce(extract(epoch FROM clock_timestamp() - e.recorded_at), 0)::float8 AS lag_seconds"
        " FROM checkpoints p"
        " CROSS JOIN (SELECT coalesce(max(position), 0) AS head FROM events) h"
        " LEFT JOIN events e ON e.position = p.position + 1"
        " WHERE p.name = ANY($1::text[])",
        tracked,
    )
    found = {r["name"]: r for r in rows}
    head = rows[0]["head"] if rows else await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
    result = []
    for name in names:
        row = found.get(name)
        position = row["position"] if row else 0
        lag_seconds = row["lag_seconds"] if row else 0.0
        if row is None and head > 0:
            lag_seconds = await conn.fetchval(
                "SELECT extract(epoch FROM clock_timestamp() - recorded_at)::float8"
                " FROM events WHERE position = 1"
            )
        rebuilding = found.get(name + REBUILD_SUFFIX)
        result.append(
            ProjectionStatus(
                name=name,
                position=position,
                head=head,
                lag_events=max(0, head - position),
                lag_seconds=max(0.0, float(lag_seconds or 0.0)),
                rebuild_position=rebuilding["position"] if rebuilding else None,
            )
        )
    return result


async def projection_status(pool: Any, names: Sequence[str] | None = None) -> list[ProjectionStatus]:
    """Position and lag of each projection, from the database alone (`loyalty projections status`)."""
    return await statuses(pool, list(names) if names is not None else list(PROJECTIONS))
