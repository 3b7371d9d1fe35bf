"""Reads of the event store: streams (from their latest snapshot), a stream's history, member keys.

The global log is read by `service.store.log.LogReader`, the one reader every follower uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from eventsourcing.persistence import StoredEvent

from .codec import EventCodec
from .keys import Keyring


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the log holds it, decoded."""

    position: int
    event_id: UUID
    stream_id: UUID
    stream_version: int
    event_type: str
    channel: str | None
    api_key_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    event: Any
    # Its stream hash and the global hash at its position (service/store/chain.py).
    hash: bytes | None = None
    global_hash: bytes | None = None
    traceparent: str | None = None  # W3C trace context of its cause (service/tracing.py)


MAX_CACHED_KEYS = 200_000  # unwrapped member keys kept in memory; past that the cache restarts

RECORDED_COLUMNS = (  # the columns of a RecordedEvent, in its order but `topic, data`
    "position, event_id, stream_id, stream_version, event_type, topic, data, channel,"
    " api_key_id, occurred_at, recorded_at, hash, global_hash, traceparent"
)


class EventStore:
    """Loads streams and pages of the log, decoding with the member's data key."""

    def __init__(self, pool: asyncpg.Pool, codec: EventCodec, keyring: Keyring) -> None:
        self.pool = pool
        self.codec = codec
        self.keyring = keyring
        self._keys: dict[UUID, bytes | None] = {}

    async def member_key(self, conn: asyncpg.Connection, member_id: UUID) -> bytes | None:
        """The member's unwrapped data key (None if there is none or it was shredded)."""
        return (await self.load_keys(conn, [member_id]))[member_id]

    async def load_keys(
        self, conn: asyncpg.Connection, member_ids: Iterable[UUID]
    ) -> dict[UUID, bytes | None]:
        """The keys of these members, those not cached fetched and unwrapped in one query."""
        wanted = set(member_ids)
        keys = {m: self._keys[m] for m in wanted if m in self._keys}
        missing = [m for m in wanted if m not in keys]
        if missing:
            keys.update(await member_keys(conn, self.keyring, missing))
            if len(self._keys) + len(missing) > MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys.update((m, keys[m]) for m in missing)
        return keys

    async def key_for(self, member_id: UUID) -> bytes | None:
        """The member's data key, from the cache when it is there (no I/O on the hot path)."""
        if member_id in self._keys:
            return self._keys[member_id]
        async with self.pool.acquire() as conn:
            return await self.member_key(conn, member_id)

    def remember_key(self, member_id: UUID, key: bytes) -> None:
        self._keys[member_id] = key

    async def fresh_key(self, member_id: UUID) -> bytes | None:
        """The member's data key as the store holds it now (never this process's cached copy):
        for showing personal data, which must not outlive a forget on another instance."""
        async with self.pool.acquire() as conn:
            key = (await member_keys(conn, self.keyring, [member_id]))[member_id]
        if key is None:
            self._keys.pop(member_id, None)
        return key

    def drop_keys(self, member_ids: Iterable[UUID]) -> None:
        """Forget cached keys (their members were forgotten, here or on another instance)."""
        for member_id in member_ids:
            self._keys.pop(member_id, None)

    def drop_all_keys(self) -> None:
        self._keys.clear()

    async def load(self, stream_id: UUID, *, until: datetime | None = None) -> tuple[Any, list[Any]]:
        """The stream's latest snapshot (or None) and the domain events after it, in order.

        With `until`, snapshots are ignored and only events recorded at or before it are read.
        """
        async with self.pool.acquire() as conn:
            key = await self.member_key(conn, stream_id)
            snapshot = None
            after = 0
            if until is None:
                row = await conn.fetchrow(
                    "SELECT stream_version, topic, data FROM snapshots WHERE stream_id = $1", stream_id
                )
                if row is not None:
                    snapshot = self.codec.decode(
                        StoredEvent(stream_id, row["stream_version"], row["topic"], row["data"]), key
                    )
                    after = row["stream_version"]
                rows = await conn.fetch(
                    "SELECT stream_version, topic, data FROM events"
                    " WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version",
                    stream_id,
                    after,
                )
            else:
                rows = await conn.fetch(
                    "SELECT stream_version, topic, data FROM events"
                    " WHERE stream_id = $1 AND recorded_at <= $2 ORDER BY stream_version",
                    stream_id,
                    until,
                )
        events = [
            self.codec.decode(StoredEvent(stream_id, r["stream_version"], r["topic"], r["data"]), key)
            for r in rows
        ]
        return snapshot, events

    async def load_many(self, stream_ids: list[UUID]) -> dict[UUID, tuple[Any, list[Any]]]:
        """`load()` of many streams in three queries (keys, snapshots, events) for all of them."""
        async with self.pool.acquire() as conn:
            keys = await self.load_keys(conn, stream_ids)
            snapshots = {
                r["stream_id"]: r
                for r in await conn.fetch(
                    "SELECT stream_id, stream_version, topic, data FROM snapshots"
                    " WHERE stream_id = ANY($1::uuid[])",
                    stream_ids,
                )
            }
            rows = await conn.fetch(
                "SELECT e.stream_id, e.stream_version, e.topic, e.data"
                " FROM unnest($1::uuid[], $2::integer[]) AS t(stream_id, after)"
                " JOIN events e ON e.stream_id = t.stream_id AND e.stream_version > t.after"
                " ORDER BY e.stream_id, e.stream_version",
                stream_ids,
                [snapshots[s]["stream_version"] if s in snapshots else 0 for s in stream_ids],
            )
        loaded: dict[UUID, tuple[Any, list[Any]]] = {}
        for stream_id in stream_ids:
            row = snapshots.get(stream_id)
            snapshot = None
            if row is not None:
                stored = StoredEvent(stream_id, row["stream_version"], row["topic"], row["data"])
                snapshot = self.codec.decode(stored, keys[stream_id])
            loaded[stream_id] = (snapshot, [])
        for r in rows:
            stream_id = r["stream_id"]
            stored = StoredEvent(stream_id, r["stream_version"], r["topic"], r["data"])
            loaded[stream_id][1].append(self.codec.decode(stored, keys[stream_id]))
        return loaded

    async def save_snapshot(self, snapshot: Any) -> None:
        """Keep the newest snapshot of a stream (an older one never replaces a newer)."""
        async with self.pool.acquire() as conn:
            key = await self.member_key(conn, snapshot.originator_id)
            stored = self.codec.encode(snapshot, key)
            await conn.execute(
                "INSERT INTO snapshots (stream_id, stream_version, topic, data) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (stream_id) DO UPDATE SET stream_version = EXCLUDED.stream_version,"
                " topic = EXCLUDED.topic, data = EXCLUDED.data, recorded_at = now()"
                " WHERE snapshots.stream_version < EXCLUDED.stream_version",
                stored.originator_id,
                stored.originator_version,
                stored.topic,
                stored.state,
            )

    async def stream_history(self, stream_id: UUID, *, after: int, limit: int) -> list[RecordedEvent]:
        """A page of one stream's events, by position."""
        async with self.pool.acquire() as conn:
            key = await self.member_key(conn, stream_id)
            rows = await conn.fetch(
                f"SELECT {RECORDED_COLUMNS} FROM events WHERE stream_id = $1 AND position > $2"
                " ORDER BY position LIMIT $3",
                stream_id,
                after,
                limit,
            )
        return [self._recorded(r, key) for r in rows]

    async def whole_stream(self, stream_id: UUID) -> list[RecordedEvent]:
        """Every event of a stream, decoded with its member's key as the store holds it now
        (never a cached copy: personal data must not outlive a forget on another instance)."""
        async with self.pool.acquire() as conn:
            key = (await member_keys(conn, self.keyring, [stream_id]))[stream_id]
            rows = await conn.fetch(
                f"SELECT {RECORDED_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY stream_version",
                stream_id,
            )
        return [self._recorded(r, key) for r in rows]

    def _recorded(self, r: asyncpg.Record, key: bytes | None) -> RecordedEvent:
        event = self.codec.decode(
            StoredEvent(r["stream_id"], r["stream_version"], r["topic"], r["data"]), key
        )
        return RecordedEvent(
            position=r["position"],
            event_id=r["event_id"],
            stream_id=r["stream_id"],
            stream_version=r["stream_version"],
            event_type=r["event_type"],
            channel=r["channel"],
            api_key_id=r["api_key_id"],
            occurred_at=r["occurred_at"],
            recorded_at=r["recorded_at"],
            event=event,
            hash=r["hash"],
            global_hash=r["global_hash"],
            traceparent=r["traceparent"],
        )

    async def stream_version(self, stream_id: UUID) -> int:
        async with self.pool.acquire() as conn:
            return int(
                await conn.fetchval(
                    "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = $1", stream_id
                )
            )

    async def stream_versions(self, stream_ids: list[UUID]) -> dict[UUID, int]:
        """The latest version of each of these streams (those with no events are left out)."""
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT stream_id, max(stream_version) AS version FROM events"
                " WHERE stream_id = ANY($1::uuid[]) GROUP BY stream_id",
                stream_ids,
            )
        return {r["stream_id"]: r["version"] for r in rows}

    async def identity_owner(self, kind: str, value_hash: bytes) -> UUID | None:
        async with self.pool.acquire() as conn:
            owner: UUID | None = await conn.fetchval(
                "SELECT member_id FROM identities WHERE kind = $1 AND value_hash = $2", kind, value_hash
            )
        return owner

    async def hold_owner(self, hold_id: UUID) -> UUID | None:
        """The member who placed this hold (None: no such hold), from the `holds` index that the
        points_held event's transaction wrote: a capture right after the hold finds it."""
        async with self.pool.acquire() as conn:
            owner: UUID | None = await conn.fetchval(
                "SELECT member_id FROM holds WHERE hold_id = $1", hold_id
            )
        return owner

    async def last_position(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT coalesce(max(position), 0) FROM events"))


async def member_keys(
    conn: Any, keyring: Keyring, member_ids: Sequence[UUID] | None = None
) -> dict[UUID, bytes | None]:
    """Unwrapped data keys of these members (all when None), in one query; None for a stream
    without one (the program) or a shredded key, so that its personal fields decode as None."""
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


def replay(cls: Any, snapshot: Any, events: Sequence[Any]) -> Any:
    """Rebuild an aggregate from an optional snapshot and the events after it."""
    aggregate = None if snapshot is None else snapshot.mutate(None)
    for event in events:
        aggregate = event.mutate(aggregate)
    if aggregate is not None and not isinstance(aggregate, cls):
        raise TypeError(f"stream holds a {type(aggregate).__name__}, not a {cls.__name__}")
    return aggregate
