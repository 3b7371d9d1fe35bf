"""Reading the log for projections: pages of decoded events and streams up to a version.

Like `EventStore.read_log`, but the members' data keys of a page are fetched in one query (not
one per stream), only the columns a
projection uses are read, and streams can be loaded up to a given version (a projection must
never see a stream ahead of the position it applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    StoredEvent,
)

from domain.program import PROGRAM_ID
from service.store.codec import EventCodec
from service.store.event_store import replay
from service.store.keys import Keyring

# Unwrapped keys kept in memory; beyond this the cache starts again (a key costs one query).
MAX_KEYS = 200_000


class LogEvent(NamedTuple):
    """A decoded event of the log with what a projection needs of its row."""

    position: int
    stream_id: UUID
    stream_version: int
    event_type: str
    recorded_at: datetime
    event: Any


class LogReader:
    """Decodes the log with the store's codec and the members' own data keys.

    Without a keyring or keys it decrypts nothing: personal fields decode as None, as for a
    forgotten member (the domain handles that), which costs no key and no decryption. A reader
    for one part of a parallel rebuild sees only the program's events and those of the members
    in its `partition` (k of n, by `partition_of`), up to `until`, and may be handed their keys.
    """

    def __init__(
        self,
        keyring: Keyring | None,
        *,
        keys: dict[UUID, bytes | None] | None = None,
        partition: tuple[int, int] | None = None,
        until: int | None = None,
    ) -> None:
        self._keyring = keyring
        self.decrypts = keyring is not None or keys is not None
        self._codec = EventCodec(keyring if keyring is not None else Keyring(bytes(32)))
        self._keys: dict[UUID, bytes | None] = dict(keys or {})
        self._filter = ""
        self._args: tuple[Any, ...] = ()
        if partition is not None:
            part, parts = partition
            self._filter += " AND (stream_id = $3 OR get_byte(uuid_send(stream_id), 15) % $4 = $5)"
            self._args += (PROGRAM_ID, parts, part)
        if until is not None:
            self._filter += f" AND position <= ${3 + len(self._args)}"
            self._args += (until,)

    async def read(self, conn: asyncpg.Connection, *, after: int, limit: int) -> list[LogEvent]:
        """Up to `limit` events after `after`, by position (gapless: nothing is skipped)."""
        return await self.decode(conn, await self.fetch(conn, after=after, limit=limit))

    async def fetch(self, conn: asyncpg.Connection, *, after: int, limit: int) -> list[asyncpg.Record]:
        """The rows of `read`, not decoded yet."""
        rows: list[asyncpg.Record] = await conn.fetch(
            "SELECT position, stream_id, stream_version, event_type, topic, data, recorded_at"
            f" FROM events WHERE position > $1{self._filter} ORDER BY position LIMIT $2",
            after,
            limit,
            *self._args,
        )
        return rows

    async def decode(self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> list[LogEvent]:
        """The events of fetched rows (the page's missing keys are read in one query)."""
        if self._keyring is not None:
            await self._load_keys(conn, {r[1] for r in rows})
        key, decode = self._keys.get, self._codec.decode_parts
        events = []
        forgotten = []
        for position, stream_id, version, event_type, topic, data, recorded_at in rows:
            event = decode(stream_id, version, topic, data, key(stream_id))
            events.append(LogEvent(position, stream_id, version, event_type, recorded_at, event))
            if event_type == "member_forgotten":
                forgotten.append(stream_id)
        for stream_id in forgotten:
            # The key is being shredded: keep no copy of it here.
            self._keys.pop(stream_id, None)
        return events

    async def load_streams(self, conn: asyncpg.Connection, before: dict[UUID, int]) -> dict[UUID, Any]:
        """Each stream's aggregate at the version just below `before[stream]` (None if empty).

        From the stream's snapshot when it is old enough, then its events up to that version.
        """
        ids = list(before)
        limits = [before[i] - 1 for i in ids]
        await self._load_keys(conn, ids)
        decode = self._codec.decode
        snapshots: dict[UUID, Any] = {}
        # A snapshot read without its key would hold None for a list the aggregate appends to.
        if self.decrypts:
            for r in await conn.fetch(
                "SELECT s.stream_id, s.stream_version, s.topic, s.data FROM snapshots s"
                " JOIN unnest($1::uuid[], $2::int[]) AS m(id, v)"
                " ON s.stream_id = m.id AND s.stream_version <= m.v",
                ids,
                limits,
            ):
                stored = StoredEvent(r["stream_id"], r["stream_version"], r["topic"], r["data"])
                snapshots[r["stream_id"]] = decode(stored, self._keys.get(r["stream_id"]))
        starts = [snapshots[i].originator_version if i in snapshots else 0 for i in ids]
        events: dict[UUID, list[Any]] = {i: [] for i in ids}
        for r in await conn.fetch(
            "SELECT e.stream_id, e.stream_version, e.topic, e.data FROM events e"
            " JOIN unnest($1::uuid[], $2::int[], $3::int[]) AS m(id, lo, hi)"
            " ON e.stream_id = m.id AND e.stream_version > m.lo AND e.stream_version <= m.hi"
            " ORDER BY e.stream_id, e.stream_version",
            ids,
            starts,
            limits,
        ):
            stored = StoredEvent(r["stream_id"], r["stream_version"], r["topic"], r["data"])
            events[r["stream_id"]].append(decode(stored, self._keys.get(r["stream_id"])))
        return {i: replay(object, snapshots.get(i), events[i]) for i in ids}

    async def load_at_position(self, conn: asyncpg.Connection, stream_id: UUID, position: int) -> Any:
        """A stream's aggregate as of a global position (None when it did not exist yet)."""
        await self._load_keys(conn, [stream_id])
        rows = await conn.fetch(
            "SELECT stream_version, topic, data FROM events"
            " WHERE stream_id = $1 AND position <= $2 ORDER BY stream_version",
            stream_id,
            position,
        )
        decode, key = self._codec.decode, self._keys.get(stream_id)
        return replay(
            object,
            None,
            [decode(StoredEvent(stream_id, r["stream_version"], r["topic"], r["data"]), key) for r in rows],
        )

    async def _load_keys(self, conn: asyncpg.Connection, stream_ids: Iterable[UUID]) -> None:
        # Handed every key of its partition (or decrypting nothing): a stream without a key
        # (the program, or any when decrypting nothing) decodes with None.
        if self._keyring is None:
            return
        wanted = set(stream_ids)
        missing: Sequence[UUID] = [s for s in wanted if s not in self._keys]
        if not missing:
            return
        if len(self._keys) + len(missing) > MAX_KEYS:
            self._keys.clear()
            missing = list(wanted)
        self._keys.update(await member_keys(conn, self._keyring, missing))


async def member_keys(
    conn: Any, keyring: Keyring, member_ids: Sequence[UUID] | None = None
) -> dict[UUID, bytes | None]:
    """Unwrapped data keys of these members (all when None); None for a stream without one
    (the program) or a shredded key, so that its personal fields decode as None."""
    if member_ids is None:
        rows = await conn.fetch("SELECT member_id, wrapped_key FROM member_keys")
        found: dict[UUID, bytes | None] = {}
    else:
        rows = await conn.fetch(
            "SELECT member_id, wrapped_key FROM member_keys WHERE member_id = ANY($1::uuid[])", member_ids
        )
        found = dict.fromkeys(member_ids)
    for r in rows:
        wrapped = r["wrapped_key"]
        found[r["member_id"]] = None if wrapped is None else keyring.unwrap(r["member_id"], wrapped)
    return found


def partition_of(stream_id: UUID, parts: int) -> int:
    """Which of `parts` partitions a member belongs to (the SQL twin is in LogReader)."""
    return stream_id.bytes[15] % parts
