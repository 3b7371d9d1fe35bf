"""Following the log as it is committed: the live event stream (GET /v1/events/live).

Pages of the global log after the reader's position, read with the one log reader and without
any member's key (personal fields are never decrypted: what a reader with scope `read` sees of
a member's history, and whose it is). Between pages the reader waits on the process's log tail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from domain.program import PROGRAM_ID
from service.services import Services
from service.store.log import LogReader

from .ledger import signed_points
from .results import LiveEvent

PAGE = 500


async def follow(
    services: Services,
    *,
    after: int,
    limit: int | None,
    stopping: asyncio.Event,
    idle: float,
) -> AsyncIterator[list[LiveEvent]]:
    """The events after `after`, in position order, page by page, as they are committed; an empty
    page after `idle` seconds without any (a keep-alive). Ends after `limit` events, or when
    `stopping` is set (within the tail's poll interval)."""
    reader = LogReader(None)  # no keys: nothing personal is decrypted
    tail = services.tail
    await tail.start()
    sent = 0
    quiet_since = time.monotonic()
    while not stopping.is_set() and (limit is None or sent < limit):
        mark = tail.mark()  # before reading: a commit from now on sets it
        wanted = PAGE if limit is None else min(PAGE, limit - sent)
        async with services.pool.acquire() as conn:
            rows = await reader.read_recorded(conn, after=after, limit=wanted)
        if rows:
            after = rows[-1].position
            sent += len(rows)
            quiet_since = time.monotonic()
            yield [
                LiveEvent(
                    position=r.position,
                    event_id=r.event_id,
                    member_id=None if r.stream_id == PROGRAM_ID else r.stream_id,
                    stream_version=r.stream_version,
                    type=r.event_type,
                    channel=r.channel,
                    points=signed_points(r.event_type, r.event),
                    occurred_at=r.occurred_at,
                    recorded_at=r.recorded_at,
                )
                for r in rows
            ]
            continue
        if time.monotonic() - quiet_since >= idle:
            quiet_since = time.monotonic()
            yield []
        await tail.wait(mark)  # at most its poll interval: `stopping` is seen within it
