"""Rebuilding a projection from position 0 into fresh tables, swapped in while reads go on.

The log is folded into `<table>__rebuild` under the checkpoint name `<name>__rebuild` (in worker
processes for a long log, see parallel.py) up to the head. Then, with the live applier paused
(in this process) and its checkpoint locked (in every process), the fresh tables catch up
past the live position and are renamed into place in one transaction. Readers wait at most
for the rename and never see an older view than before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from service.store.event_store import EventStore

from .parallel import PARALLEL_MIN_EVENTS, fold_in_parallel, worker_count
from .projection import REBUILD_CACHE_SIZE, MemberProjection, fewer_collections
from .registry import projection_class
from .tracking import LOCK_CLASS, PROGRESS_CHANNEL, REBUILD_SUFFIX, apply_tracked, ensure_tracked, step

log = logging.getLogger(__name__)

REBUILD_BATCH = 100_000  # large batches write each member's row fewer times
SWAP_ATTEMPTS = 5


class RebuildInProgress(RuntimeError):
    """Another rebuild of the same projection is running."""


@dataclass(frozen=True, slots=True)
class RebuildReport:
    """A finished rebuild: events folded from 0 until the swap, and how long it took."""

    name: str
    events: int
    seconds: float
    position: int
    workers: int = 1  # processes that folded the bulk of the log

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


async def rebuild(
    pool: asyncpg.Pool,
    store: EventStore,
    name: str,
    *,
    database_url: str | None = None,
    workers: int | None = None,
) -> RebuildReport:
    """Rebuild a projection from position 0 and swap it in (`loyalty projections rebuild NAME`).

    Safe while services run: their appliers wait on the checkpoint during the swap. With
    `database_url`, a long log is folded by `workers` processes (see projections/parallel.py),
    by default one per CPU (`worker_count()`); `workers=1` folds it in this process.
    """
    if workers is None:
        workers = worker_count() if database_url is not None else 1
    report, _ = await rebuild_projection(
        pool, projection_class(name)(store), database_url=database_url, workers=workers
    )
    return report


async def rebuild_projection(
    pool: asyncpg.Pool,
    live: MemberProjection,
    *,
    pause: asyncio.Lock | None = None,
    install: Callable[[MemberProjection], None] | None = None,
    batch: int = REBUILD_BATCH,
    database_url: str | None = None,
    workers: int | None = None,
) -> tuple[RebuildReport, MemberProjection]:
    """Rebuild `live` (its class, tracking name and table) and swap it in.

    `pause` is held during the swap (the live applier of this process takes it around each
    batch); `install` receives the rebuilt projection, which from then on is the live one.
    """
    if live.store is None:
        raise ValueError("a rebuild needs the projection's store")
    fresh = type(live)(
        live.store,
        name=live.name + REBUILD_SUFFIX,
        table=live.table + REBUILD_SUFFIX,
        cache_size=REBUILD_CACHE_SIZE,
    )
    workers = 1 if workers is None else workers
    async with pool.acquire() as guard:
        # Session lock on a connection held throughout: one rebuild of a projection at a time.
        if not await guard.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, fresh.name):
            raise RebuildInProgress(live.name)
        try:
            async with guard.transaction():
                await ensure_tracked(guard, [live.name])
                await guard.execute(f"DROP TABLE IF EXISTS {fresh.table}")
                await guard.execute(f"CREATE TABLE {fresh.table} (LIKE {live.table} INCLUDING ALL)")
                await guard.execute(
                    "INSERT INTO checkpoints (name, position) VALUES ($1, 0)"
                    " ON CONFLICT (name) DO UPDATE SET position = 0, updated_at = now()",
                    fresh.name,
                )
            started = time.perf_counter()
            with fewer_collections():
                used = await _fold_and_swap(pool, live, fresh, pause, install, batch, database_url, workers)
            seconds = time.perf_counter() - started
        finally:
            await guard.fetchval("SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, fresh.name)
    assert fresh.position is not None
    report = RebuildReport(
        name=live.name, events=fresh.position, seconds=seconds, position=fresh.position, workers=used
    )
    log.info(
        "projection rebuilt",
        extra={
            "projection": live.name,
            "events": report.events,
            "events_per_second": round(report.events_per_second),
        },
    )
    return report, fresh


async def _fold_and_swap(
    pool: asyncpg.Pool,
    live: MemberProjection,
    fresh: MemberProjection,
    pause: asyncio.Lock | None,
    install: Callable[[MemberProjection], None] | None,
    batch: int,
    database_url: str | None,
    workers: int,
) -> int:
    """Fold the whole log into the fresh tables, catch up with the head, swap them in.

    Returns how many processes folded the bulk of the log.
    """
    until = await pool.fetchval("SELECT coalesce(max(position), 0) FROM events")
    used = 1
    if database_url is not None and workers > 1 and until >= PARALLEL_MIN_EVENTS:
        used = workers
        assert live.store is not None
        await fold_in_parallel(
            pool, live.store.keyring, database_url, type(live), fresh.table, until, workers, batch
        )
        await pool.execute(
            "UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1",
            fresh.name,
            until,
        )
    while True:
        after, reached = await step(pool, fresh, batch)
        if reached - after < batch:
            break
    await _swap(pool, live, fresh, pause=pause, install=install, batch=batch)
    return used


async def _swap(
    pool: asyncpg.Pool,
    live: MemberProjection,
    fresh: MemberProjection,
    *,
    pause: asyncio.Lock | None,
    install: Callable[[MemberProjection], None] | None,
    batch: int,
) -> None:
    """Catch the fresh tables up past the live position and rename them into place, atomically."""
    fresh_table = fresh.table
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        async with pause if pause is not None else contextlib.nullcontext():
            try:
                async with pool.acquire() as conn, conn.transaction():
                    # Readers queue behind the rename; never keep them waiting long.
                    await conn.execute("SET LOCAL lock_timeout = '5s'")
                    live_position = await conn.fetchval(
                        "SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE", live.name
                    )
                    # Never swap in a view older than the one readers already saw.
                    while fresh.position is None or fresh.position < live_position:
                        await apply_tracked(conn, fresh, batch)
                    await fresh.before_swap(conn, live.table)
                    await conn.execute(f"DROP TABLE {live.table}")
                    await conn.execute(f"ALTER TABLE {fresh_table} RENAME TO {live.table}")
                    for index in await conn.fetch(
                        "SELECT indexname FROM pg_indexes"
                        " WHERE schemaname = current_schema() AND tablename = $1",
                        live.table,
                    ):
                        old = index["indexname"]
                        if old.startswith(fresh_table):
                            new = live.table + old[len(fresh_table) :]
                            await conn.execute(f"ALTER INDEX {old} RENAME TO {new}")
                    await conn.execute(
                        "UPDATE checkpoints SET position = $2, updated_at = now() WHERE name = $1",
                        live.name,
                        fresh.position,
                    )
                    await conn.execute("DELETE FROM checkpoints WHERE name = $1", fresh.name)
                    await conn.execute(
                        "SELECT pg_notify($1, $2)", PROGRESS_CHANNEL, f"{live.name}:{fresh.position}"
                    )
            except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
                fresh.reset()
                if attempt == SWAP_ATTEMPTS:
                    raise
                log.warning(
                    "projection swap waited too long for a lock; retrying", extra={"projection": live.name}
                )
                continue
            except BaseException:
                fresh.reset()
                raise
            fresh.name = live.name
            fresh.bind(live.table)
            fresh.cache_size = live.cache_size
            if install is not None:
                install(fresh)
            return
