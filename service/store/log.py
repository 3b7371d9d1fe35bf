"""The one reader of the global log: pages by position, decoded with the members' own keys.

Every follower reads the log here: the relay (`read_recorded`: every column, for CloudEvents),
the projections (`read` / `fetch` + `decode`: only the columns a projection uses) and the
parallel rebuild (a reader per partition of the members). Guarantees:

- Pages are by position, in order, with nothing skipped: `after` is the last position the
  caller holds, and the next page starts right after it (positions are not gapless: never
  assume `last + 1`).
- A page's missing member keys are fetched and unwrapped in one query, never one per stream;
  keys are cached (up to MAX_KEYS) and a forgotten member's key is dropped as its
  `member_forgotten` event is read. Without a keyring nothing is decrypted: personal fields
  decode as None, as for a forgotten member.
- Events are decoded on the codec's typed fast path (`decode_parts`: no StoredEvent built),
  to the same domain events as the store's `decode`.
- Streams can be loaded up to a version or a position (a projection must never see a stream
  ahead of the position it applies).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from domain.program import PROGRAM_ID

from .codec import EventCodec
from .event_store import RECORDED_COLUMNS, RecordedEvent, member_keys, replay
from .keys import Keyring

# Unwrapped keys kept in memory; beyond this the cache starts again (a key costs one query).
MAX_KEYS = 200_000
_FORGOTTEN = "member_forgotten"


class LogEvent(NamedTuple):
    """A decoded event of the log with what a projection needs of its row."""

    position: int
    stream_id: UUID
    stream_version: int
    event_type: str
    recorded_at: datetime
    event: Any


class LogReader:
    """Reads and decodes the log with the store's codec and the members' own data keys.

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

    async def read_recorded(self, conn: asyncpg.Connection, *, after: int, limit: int) -> list[RecordedEvent]:
        """Up to `limit` events after `after` with every column of their rows (the relay's page)."""
        rows = await conn.fetch(
            f"SELECT {RECORDED_COLUMNS} FROM events WHERE position > $1{self._filter}"
            " ORDER BY position LIMIT $2",
            after,
            limit,
            *self._args,
        )
        if self._keyring is not None:
            await self._load_keys(conn, {r[2] for r in rows})
        key, decode = self._keys.get, self._codec.decode_parts
        recorded = []
        forgotten = []
        for r in rows:
            # The columns of RecordedEvent in its order, `topic` and `data` (5, 6) decoded instead.
            stream_id, version, event_type = r[2], r[3], r[4]
            event = decode(stream_id, version, r[5], r[6], key(stream_id))
            recorded.append(
                RecordedEvent(
                    r[0],
                    r[1],
                    stream_id,
                    version,
                    event_type,
                    r[7],
                    r[8],
                    r[9],
                    r[10],
                    event,
                    r[11],
                    r[12],
                    r[13],
                )
            )
            if event_type == _FORGOTTEN:
                forgotten.append(stream_id)
        self._forget(forgotten)
        return recorded

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
            if event_type == _FORGOTTEN:
                forgotten.append(stream_id)
        self._forget(forgotten)
        return events

    def _forget(self, stream_ids: Iterable[UUID]) -> None:
        for stream_id in stream_ids:
            # The key is being shredded: keep no copy of it here.
            self._keys.pop(stream_id, None)

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


def partition_of(stream_id: UUID, parts: int) -> int:
    """Which of `parts` partitions a member belongs to (the SQL twin is in LogReader)."""
    return stream_id.bytes[15] % parts
