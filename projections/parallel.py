"""The bulk of a rebuild, folded in parallel: members split across worker processes.

A member's events depend only on its own stream and the program's rules, so the members can
be split by id (`partition_of`) and folded independently. Each worker process reads its part
of the log (and the program's events) up to a position fixed at the start, and upserts its
members' rows into the fresh table. Nothing is tracked per worker: the fresh table is invisible
until the swap, and a failed worker fails the whole rebuild, which then starts over.
The main process hands each worker the data keys of its members (unwrapped here, so workers
never see the master key).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from uuid import UUID

import asyncpg

from service.store.event_store import member_keys
from service.store.keys import Keyring
from service.store.log import LogReader, partition_of

from .projection import REBUILD_CACHE_SIZE, MemberProjection, fewer_collections

PARALLEL_MIN_EVENTS = 50_000  # below this, starting processes costs more than it saves
MAX_WORKERS = 8


def worker_count() -> int:
    """One worker per CPU (the database runs elsewhere, or shares them), at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


async def fold_in_parallel(
    pool: asyncpg.Pool,
    keyring: Keyring,
    database_url: str,
    kind: type[MemberProjection],
    table: str,
    until: int,
    workers: int,
    batch: int,
) -> None:
    """Fold events 1..`until` into `table` with `workers` processes, one part of the members each."""
    parts: list[dict[UUID, bytes | None] | None] = [None] * workers
    if kind.personal_data:
        parts = [{} for _ in range(workers)]
        for member_id, key in (await member_keys(pool, keyring)).items():
            part = parts[partition_of(member_id, workers)]
            assert part is not None
            part[member_id] = key
    # spawn, not fork: a forked child would inherit this process's event loop and connections.
    context = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as executor:
        await asyncio.gather(
            *(
                loop.run_in_executor(
                    executor, _fold_part, database_url, kind, table, part, workers, until, batch, parts[part]
                )
                for part in range(workers)
            )
        )


def _fold_part(
    database_url: str,
    kind: type[MemberProjection],
    table: str,
    part: int,
    parts: int,
    until: int,
    batch: int,
    keys: dict[UUID, bytes | None] | None,
) -> None:
    with fewer_collections():
        asyncio.run(_fold_part_async(database_url, kind, table, part, parts, until, batch, keys))


async def _fold_part_async(
    database_url: str,
    kind: type[MemberProjection],
    table: str,
    part: int,
    parts: int,
    until: int,
    batch: int,
    keys: dict[UUID, bytes | None] | None,
) -> None:
    reader = LogReader(None, keys=keys, partition=(part, parts), until=until)
    projection = kind(None, table=table, reader=reader, cache_size=REBUILD_CACHE_SIZE)
    conn = await asyncpg.connect(database_url)
    try:
        # The planner cannot estimate the partition filter: it took a bitmap scan of the rest of
        # the log and a sort (on disk) for every page, ~75 ms each, instead of reading the
        # position index in order and stopping at the page's end, ~6 ms (PostgreSQL 15).
        await conn.execute("SET enable_sort = off")
        position = 0
        while True:
            # `limit` counts positions; a part holds about 1/parts of them: a batch of as many
            # of its own events as a single process's writes each of its rows as rarely.
            async with conn.transaction():
                reached = await projection.apply(conn, after=position, limit=batch * parts)
            if reached == position:
                return
            position = reached
    finally:
        await conn.close()
