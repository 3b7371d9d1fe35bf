"""Aggregates by id: loaded from the store, cached in this process, locked per stream.

A command holds its streams' locks from load to append, so one in-process command at a time
works on a cached aggregate; other instances are caught by the expected-version check of the
append, after which the stale copy is dropped and the command retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from domain.member import Member
from domain.program import PROGRAM_ID, Program

from .event_store import EventStore, replay

A = TypeVar("A")

SNAPSHOT_AFTER = 100  # replayed events since the last snapshot that make a load take a new one
CACHE_SIZE = 50_000
PROGRAM_RECHECK_SECONDS = 1.0


class Repository:
    """Loads aggregates (from cache, snapshot + events), and keeps the cache honest."""

    def __init__(self, store: EventStore, *, cache_size: int = CACHE_SIZE) -> None:
        self.store = store
        self._cache: OrderedDict[UUID, Any] = OrderedDict()
        self._cache_size = cache_size
        self._locks: dict[UUID, _Lock] = {}
        self._program_checked = 0.0

    @contextlib.asynccontextmanager
    async def locked(self, stream_ids: Iterable[UUID]) -> AsyncIterator[None]:
        """Hold the in-process locks of these streams (taken in a fixed order: no deadlock)."""
        held: list[_Lock] = []
        try:
            for stream_id in sorted(set(stream_ids)):
                lock = self._locks.get(stream_id)
                if lock is None:
                    lock = self._locks[stream_id] = _Lock()
                lock.users += 1
                held.append(lock)
                await lock.acquire()
            yield
        finally:
            for stream_id, lock in zip(sorted(set(stream_ids)), held, strict=False):
                if lock.locked():
                    lock.release()
                lock.users -= 1
                if lock.users == 0:
                    self._locks.pop(stream_id, None)

    @contextlib.asynccontextmanager
    async def locked_now(self, stream_ids: Iterable[UUID]) -> AsyncIterator[set[UUID]]:
        """Hold the in-process locks of those of these streams that are free now (no waiting):
        yields the ones taken. A batch decides those at once and leaves the rest to `locked()`."""
        held: dict[UUID, _Lock] = {}
        try:
            for stream_id in stream_ids:
                if stream_id in held or stream_id in self._locks:  # held or awaited by another
                    continue
                lock = self._locks[stream_id] = _Lock()
                lock.users = 1
                held[stream_id] = lock
                await lock.acquire()  # free and nobody waiting: returns at once
            yield set(held)
        finally:
            for stream_id, lock in held.items():
                if lock.locked():
                    lock.release()
                lock.users -= 1
                if lock.users == 0:
                    self._locks.pop(stream_id, None)

    async def preload(self, cls: type[Any], stream_ids: Iterable[UUID]) -> None:
        """Put the aggregates of these streams that are not cached into the cache, all read in
        one pass (a few queries for all of them instead of a few each)."""
        missing = [s for s in dict.fromkeys(stream_ids) if s not in self._cache]
        if not missing:
            return
        for snapshot, events in (await self.store.load_many(missing)).values():
            aggregate = replay(cls, snapshot, events)
            if aggregate is None:
                continue
            if len(events) >= SNAPSHOT_AFTER:
                await self.store.save_snapshot(aggregate.Snapshot.take(aggregate))
            self.keep(aggregate)

    def is_cached(self, stream_id: UUID) -> bool:
        """Whether the stream's aggregate would come from this process's cache (not the store)."""
        return stream_id in self._cache

    async def get(self, cls: type[A], stream_id: UUID) -> A | None:
        """The aggregate at its latest version, or None when the stream does not exist."""
        cached = self._cache.get(stream_id)
        if cached is not None:
            self._cache.move_to_end(stream_id)
            return cached  # type: ignore[no-any-return]
        snapshot, events = await self.store.load(stream_id)
        aggregate = replay(cls, snapshot, events)
        if aggregate is None:
            return None
        if len(events) >= SNAPSHOT_AFTER:
            await self.store.save_snapshot(aggregate.Snapshot.take(aggregate))
        self.keep(aggregate)
        return aggregate  # type: ignore[no-any-return]

    async def load(self, cls: type[A], stream_id: UUID) -> A | None:
        """The aggregate at its latest version, read from the store into a copy of its own
        (not cached: `keep` it once its changes are committed)."""
        snapshot, events = await self.store.load(stream_id)
        return replay(cls, snapshot, events)  # type: ignore[no-any-return]

    async def as_of(self, cls: type[A], stream_id: UUID, until: datetime) -> A | None:
        """The aggregate as it was at `until` (replayed from the start, never cached)."""
        _, events = await self.store.load(stream_id, until=until)
        return replay(cls, None, events)  # type: ignore[no-any-return]

    def keep(self, aggregate: Any) -> None:
        """Cache an aggregate whose pending events are committed."""
        self._cache[aggregate.id] = aggregate
        self._cache.move_to_end(aggregate.id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, stream_id: UUID) -> None:
        """Drop a cached aggregate (stale, or changed by a command that did not commit)."""
        self._cache.pop(stream_id, None)

    async def member(self, member_id: UUID) -> Member | None:
        return await self.get(Member, member_id)

    async def current_member(self, member_id: UUID) -> Member | None:
        """The member as the store holds it now: a cached copy is checked against the stream's
        version first (one indexed read). For reads that show a member, which must never show
        one that another instance has changed since (forgotten, above all)."""
        cached = self._cache.get(member_id)
        if cached is not None and await self.store.stream_version(member_id) != cached.version:
            self.forget(member_id)
        return await self.member(member_id)

    def forget_all(self) -> None:
        """Drop every cached aggregate (news of a change from another instance may be lost)."""
        self._cache.clear()

    async def program(self) -> Program:
        """The program; its freshness is checked against the store at most once a second
        (rules published by another instance reach this one within that time)."""
        now = time.monotonic()
        if now - self._program_checked > PROGRAM_RECHECK_SECONDS:
            self._program_checked = now
            cached = self._cache.get(PROGRAM_ID)
            if cached is not None and await self.store.stream_version(PROGRAM_ID) != cached.version:
                self.forget(PROGRAM_ID)
        program = await self.get(Program, PROGRAM_ID)
        if program is None:
            raise LookupError("the program has not been created (start-up does that)")
        return program


class _Lock(asyncio.Lock):
    users = 0
