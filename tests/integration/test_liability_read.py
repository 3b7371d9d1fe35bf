"""The liability totals are read in one snapshot: a projection batch committing between their
reads (sums by hour, the items near the boundary hours, the holds) is not half counted."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from projections.liability import liability_totals
from service.store.migrate import migrate


class CommitsBetweenReads:
    """A connection on which, right after the totals' first read, another connection commits."""

    def __init__(self, conn: asyncpg.Connection, commit: Any) -> None:
        self._conn, self._commit, self.committed = conn, commit, False

    def transaction(self, **options: Any) -> Any:
        return self._conn.transaction(**options)

    async def fetchrow(self, *args: Any) -> Any:
        row = await self._conn.fetchrow(*args)
        if not self.committed:
            self.committed = True
            await self._commit()
        return row

    async def fetchval(self, *args: Any) -> Any:
        return await self._conn.fetchval(*args)


async def test_a_batch_committing_between_the_reads_is_not_half_counted(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        await migrate(conn)
        at = datetime.now(UTC)
        this_hour = at.replace(minute=0, second=0, microsecond=0)
        # 100 points spendable for hours, counted from the sums by the first read.
        await conn.execute(
            "INSERT INTO liability_sums (kind, available_hour, expires_hour, points)"
            " VALUES ('lot', $1, 'infinity', 100)",
            this_hour - timedelta(hours=2),
        )

        async def a_lot_available_this_hour() -> None:
            # As a projection batch would: an item whose hour is this one, read one by one.
            await other.execute(
                "INSERT INTO liability (member_id, kind, item, points, available_at, expires_at)"
                " VALUES ($1, 'lot', 1, 7, $2, NULL)",
                uuid.uuid4(),
                this_hour,
            )

        reading = CommitsBetweenReads(conn, a_lot_available_this_hour)
        during = await liability_totals(reading, at)  # type: ignore[arg-type]
        after = await liability_totals(conn, at)
    finally:
        await other.close()
        await conn.close()

    assert reading.committed
    assert during.available == 100  # as the totals stood when the read began
    assert after.available == 107  # the lot, once the next read begins
