"""Read models with one row per member, derived from the Member aggregate itself.

A fold (LogFold) applies each event to its member's aggregate (`event.mutate`, see
dispatch.py) and a projection writes the member's row from what the aggregate says, so the
balance rules exist once, in the domain. Aggregates stay cached between batches with their
version; a stream is re-read from the store when the cache misses or the version does not
follow. Each row is written once per batch; one fold can feed several projections.

The balance depends on `now` (locked lots unlock, lots expire, earns leave the tier window).
A row holds the balance at the record time of the member's last event (`balance_at`: the
instant every command's response also uses), so a rebuild and the live projection write the
same rows, and `next_change_at`: the first later instant at which that balance changes with
no new event. Until then the row is exact; after it a reader needing "now" asks the aggregate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

import asyncpg

from domain.member import Member
from domain.program import PROGRAM_ID, Program
from domain.rules import DEFAULT_RULES, Rules
from service.store.event_store import EventStore
from service.store.log import LogEvent, LogReader

from .dispatch import mutate

# Aggregates kept per projection (a miss costs a stream read, batched per page). A member with
# a long history is a few kB; a rebuild touches every member, so it keeps more of them.
CACHE_SIZE = 10_000
REBUILD_CACHE_SIZE = 100_000
PAGE = 5_000  # events decoded per read of the log

# A table, or a schema's table (a replay writes into a scratch schema: projections/replay.py).
_NAME = re.compile(r"^([a-z][a-z0-9_]{0,62}\.)?[a-z][a-z0-9_]{0,62}$")

# The balance fields of SPEC §3 (tier is a column of its own), in Balance's order.
BALANCE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("available", "bigint"),
    ("pending", "bigint"),
    ("held", "bigint"),
    ("lifetime_earned", "bigint"),
    ("lifetime_redeemed", "bigint"),
    ("expired", "bigint"),
    ("qualifying", "bigint"),
)
BALANCE_FIELDS = tuple(name for name, _ in BALANCE_COLUMNS)
# The balance's `expiring` (the next lots to expire), after next_change_at in each row.
EXPIRING_COLUMNS: tuple[tuple[str, str], ...] = (
    ("expiring_points", "bigint"),
    ("expiring_at", "timestamptz"),
)


@dataclass(slots=True)
class Touched:
    """A member changed by a batch: its aggregate after its last event in the batch."""

    member: Member
    rules: Rules  # in force at that event
    at: datetime  # that event's record time (its `at`): the balance is computed at it
    position: int
    recorded_at: datetime
    # The member's events in the batch, in log order (read models that add up events use them).
    events: list[LogEvent] = field(default_factory=list)
    # balance_values(), worked out once for every projection that writes it.
    balance: tuple[Any, ...] | None = None


def balance_values(t: Touched) -> tuple[Any, ...]:
    """The BALANCE_COLUMNS of a touched member, then its tier, balance_at, next_change_at and
    the EXPIRING_COLUMNS (computed once per touched member: several read models write them)."""
    if t.balance is not None:
        return t.balance
    b = t.member.balance(now=t.at, rules=t.rules)
    expiring = b.expiring
    t.balance = (
        b.available,
        b.pending,
        b.held,
        b.lifetime_earned,
        b.lifetime_redeemed,
        b.expired,
        b.qualifying,
        b.tier,
        t.at,
        t.member.next_balance_change(after=t.at, rules=t.rules),
        None if expiring is None else expiring.points,
        None if expiring is None else expiring.at,
    )
    return t.balance


class LogFold:
    """The log folded into Member aggregates, page by page: what the per-member read models share.

    Aggregates stay cached (LRU, up to `cache_size`) between batches with their version; a
    stream is re-read from the store when the cache misses or the version does not follow, so
    a fold can start at any position. One fold can feed several projections (the runner folds
    once for all it applies); it reads personal data if its reader decrypts.
    """

    def __init__(self, reader: LogReader, cache_size: int = CACHE_SIZE) -> None:
        self.reader = reader
        self.cache_size = cache_size
        self._cache: dict[UUID, Member] = {}
        self._ignored: set[UUID] = set()  # streams of other aggregates
        self._program: Program | None = None
        self._rules: Rules = DEFAULT_RULES
        self.position: int | None = None  # the log position the cache reflects (None: unknown)
        # With `keep_recorded`, each fold leaves (position, recorded_at as epoch seconds) of
        # every event it read here, for the runner's commit -> applied delays.
        self.keep_recorded = False
        self.recorded: list[tuple[int, float]] = []

    @property
    def rules(self) -> Rules:
        """The program's rules as of the position folded to."""
        return self._rules

    def reset(self) -> None:
        """Forget everything folded (after a failed batch, or to free the memory)."""
        self._cache.clear()
        self._ignored.clear()
        self._program = None
        self._rules = DEFAULT_RULES
        self.position = None

    async def fold(
        self, conn: asyncpg.Connection, *, after: int, limit: int
    ) -> tuple[int, dict[UUID, Touched]]:
        """Fold up to `limit` events after `after`: the position reached and the members touched.

        The next page is fetched while this one is applied (the server reads and sends it
        meanwhile); the connection is used for nothing else until that fetch is awaited.
        """
        if self.position != after:
            await self._start_at(conn, after)
        last: dict[UUID, tuple[Member, Rules, list[LogEvent]]] = {}
        position = after
        page = min(PAGE, limit)
        self.recorded = []
        rows = await self.reader.fetch(conn, after=position, limit=page)
        while rows:
            events = await self.reader.decode(conn, rows)
            if self.keep_recorded:
                self.recorded += [(e.position, e.recorded_at.timestamp()) for e in events]
            await self._load_stale(conn, events)
            position = events[-1].position
            ahead: asyncio.Future[list[asyncpg.Record]] | None = None
            if len(rows) == page and position - after < limit:
                page = min(PAGE, limit - (position - after))
                ahead = asyncio.ensure_future(self.reader.fetch(conn, after=position, limit=page))
                await asyncio.sleep(0)  # the fetch sends its query
            try:
                self._apply(events, last)
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead
                raise
            rows = await ahead if ahead is not None else []
        self.position = position
        touched = {
            sid: Touched(member, rules, es[-1].event.timestamp, es[-1].position, es[-1].recorded_at, es)
            for sid, (member, rules, es) in last.items()
        }
        return position, touched

    async def _start_at(self, conn: asyncpg.Connection, position: int) -> None:
        # Cached members are checked by version as they are used; the program is not (its
        # rules apply to every member), so it is loaded as of the position.
        program = await self.reader.load_at_position(conn, PROGRAM_ID, position)
        self._set_program(program)
        self.position = position

    def _set_program(self, program: Program | None) -> None:
        self._program = program
        self._rules = program.rules if program is not None and program.rules_versions else DEFAULT_RULES

    async def _load_stale(self, conn: asyncpg.Connection, events: Sequence[LogEvent]) -> None:
        # Each stream's first event of the page must follow the aggregate held for it.
        first: dict[UUID, int] = {}
        for e in events:
            first.setdefault(e.stream_id, e.stream_version)
        stale: dict[UUID, int] = {}
        for sid, version in first.items():
            if version == 1 or sid in self._ignored:
                continue
            held = self._program if sid == PROGRAM_ID else self._cache.get(sid)
            if held is None or held.version != version - 1:
                stale[sid] = version
        if stale:
            for sid, aggregate in (await self.reader.load_streams(conn, stale)).items():
                self._keep(sid, aggregate)

    def _apply(
        self, events: Sequence[LogEvent], last: dict[UUID, tuple[Member, Rules, list[LogEvent]]]
    ) -> None:
        cache, ignored = self._cache, self._ignored
        rules = self._rules
        for e in events:
            sid = e.stream_id
            if sid in ignored:
                continue
            if sid == PROGRAM_ID:
                self._set_program(e.event.mutate(self._program if e.stream_version > 1 else None))
                rules = self._rules
                continue
            # Move to the end: the dict's order is the LRU order.
            member = cache.pop(sid, None) if e.stream_version > 1 else None
            member = mutate(e.event, member)
            if not isinstance(member, Member):
                ignored.add(sid)
                continue
            cache[sid] = member
            seen = last.get(sid)
            if seen is None:
                last[sid] = (member, rules, [e])
            else:
                seen[2].append(e)
                last[sid] = (member, rules, seen[2])
        while len(cache) > self.cache_size:
            del cache[next(iter(cache))]

    def _keep(self, sid: UUID, aggregate: Any) -> None:
        if aggregate is None:
            raise LookupError(f"stream {sid} has none of the events before those being applied")
        if sid == PROGRAM_ID:
            self._set_program(aggregate)
        elif isinstance(aggregate, Member):
            self._cache.pop(sid, None)
            self._cache[sid] = aggregate
        else:
            self._ignored.add(sid)


class MemberProjection:
    """Base of the per-member read models: its own fold (see LogFold), one upsert per batch.

    A subclass names itself and its columns and turns a touched member into its row. The
    runner owns transactions and tracking, and may fold once for several projections and hand
    each the touched members (`write`); this class only reads and writes inside them.
    """

    kind: ClassVar[str]  # the read model; also its default tracking name and table
    # Whether rows need personal data (decrypted with each member's key); if not, none is read.
    personal_data: ClassVar[bool] = False
    # (column, PostgreSQL type); the first is member_id, the primary key.
    columns: ClassVar[tuple[tuple[str, str], ...]]

    def __init__(
        self,
        store: EventStore | None,
        *,
        name: str | None = None,
        table: str | None = None,
        cache_size: int = CACHE_SIZE,
        reader: LogReader | None = None,
    ) -> None:
        if reader is None:
            if store is None:
                raise ValueError("a projection needs the store or a reader")
            reader = LogReader(store.keyring if self.personal_data else None)
        self.store = store
        self.fold = LogFold(reader, cache_size)
        self.name = name or self.kind  # its checkpoint (row in checkpoints)
        self.table = table or self.kind
        self.bind(self.table)

    @property
    def reader(self) -> LogReader:
        return self.fold.reader

    @property
    def cache_size(self) -> int:
        return self.fold.cache_size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        self.fold.cache_size = size

    @property
    def position(self) -> int | None:
        """The log position its own fold reached (None: unknown)."""
        return self.fold.position

    async def before_swap(self, conn: asyncpg.Connection, live_table: str) -> None:
        """In a rebuild's swap transaction, just before this (fresh) table replaces `live_table`."""

    def bind(self, table: str) -> None:
        """Write to `table` from now on (a rebuild writes elsewhere, then takes the live name)."""
        if _NAME.match(table) is None:
            raise ValueError(f"not a table name: {table!r}")
        self.table = table
        names = [c for c, _ in self.columns]
        casts = ", ".join(f"${i}::{t}[]" for i, (_, t) in enumerate(self.columns, start=1))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in names[1:])
        self._upsert = (
            f"INSERT INTO {table} ({', '.join(names)}) SELECT * FROM unnest({casts})"
            f" ON CONFLICT ({names[0]}) DO UPDATE SET {updates}"
        )

    def row(self, t: Touched) -> tuple[Any, ...]:
        """The member's row, in the order of `columns`."""
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything folded: after a failed batch the cache may hold uncommitted changes."""
        self.fold.reset()

    async def apply(self, conn: asyncpg.Connection, *, after: int, limit: int) -> int:
        """Fold up to `limit` events after `after` and upsert the rows they change.

        Returns the position reached (`after` when there was nothing). Runs inside the caller's
        transaction, which also advances the tracking position.
        """
        position, touched = await self.fold.fold(conn, after=after, limit=limit)
        await self.write(conn, touched, after=after)
        return position

    async def write(
        self, conn: asyncpg.Connection, touched: Mapping[UUID, Touched], *, after: int = 0
    ) -> None:
        """Upsert the rows of these members (each its whole row: writing one again is harmless).

        `after`: this projection's checkpoint; the touched members may carry events at or before
        it (a shared fold starts at the lowest checkpoint), which a read model adding up events
        must skip.
        """
        if touched:
            rows = [self.row(t) for t in touched.values()]
            await conn.execute(self._upsert, *(list(column) for column in zip(*rows, strict=True)))


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often, for a bulk fold.

    A rebuild keeps hundreds of thousands of long-lived objects (the cached aggregates), which
    the default thresholds make the collector walk again and again: a third of a rebuild's CPU.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 50_000), max(thresholds[1], 20), max(thresholds[2], 100))
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
