"""Appends to the event store by serialised group commit.

One writer task per process takes every append request waiting in its queue and commits them
together in one transaction that holds a cluster-wide advisory lock. Inside it, each request's
expected stream versions, idempotency key and unique claims (orders, identities) are checked
against the database and against the requests before it in the same batch; the accepted ones
get the next positions (max + 1: gapless, strictly increasing in commit order) and are written
with their idempotency records and claims; the rejected ones are answered with the reason and
write nothing. The next batch's transaction is already open and waiting for the lock while
one commits (IN_FLIGHT), so PostgreSQL hands it the lock at that commit. See
docs/decisions/0002-positions-by-serialised-group-commit.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import asyncpg

from . import chain
from .follower import FORGOTTEN_CHANNEL, NOTIFY_CHANNEL

log = logging.getLogger(__name__)

APPEND_LOCK = 0x4C45444745520001  # "LEDGER" + 1: serialises appends across all instances
MAX_BATCH = 500
# Batch transactions in flight: one holding the lock and committing, the next already waiting
# for the lock in PostgreSQL, which grants it at that commit without a turn of our event loop.
IN_FLIGHT = 2
# Streams whose last version and hash the appender remembers from its own writes (past that the
# memory restarts; a stream not remembered is read under the lock, as before).
MAX_KNOWN_STREAMS = 100_000


@dataclass(frozen=True, slots=True)
class NewEvent:
    """One event to append; its position is assigned at commit."""

    stream_id: UUID
    stream_version: int
    event_type: str
    topic: str
    data: bytes
    occurred_at: datetime
    event_id: UUID = field(default_factory=uuid4)


@dataclass(frozen=True, slots=True)
class Metadata:
    """Who caused the events, recorded on each of them."""

    channel: str | None = None
    api_key_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    traceparent: str | None = None  # W3C trace context (service/tracing.py); not hashed


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A command's idempotency key and its answer (kept with the position of its last event)."""

    channel: str
    key: str
    request_hash: bytes
    status: int
    response: bytes


@dataclass(frozen=True, slots=True)
class IdentityClaim:
    kind: str
    value_hash: bytes
    member_id: UUID


@dataclass(frozen=True, slots=True)
class HoldClaim:
    """A hold placed by the request: its owner is found by its id (a capture names only the hold)."""

    hold_id: UUID
    member_id: UUID
    expires_at: datetime


@dataclass(slots=True)
class AppendRequest:
    """Events of one command, with everything that must commit (or not) together with them.

    `expected` maps each stream to the version it must be at now (0: must not exist yet);
    streams left out are checked only by the unique (stream, version) constraint.
    """

    events: Sequence[NewEvent]
    expected: dict[UUID, int]
    metadata: Metadata = Metadata()
    idempotency: IdempotencyRecord | None = None
    order_claims: Sequence[tuple[str, UUID]] = ()
    identity_claims: Sequence[IdentityClaim] = ()
    identity_releases: Sequence[IdentityClaim] = ()
    member_keys: Sequence[tuple[UUID, bytes]] = ()
    hold_claims: Sequence[HoldClaim] = ()
    # Members forgotten by the request: their data keys are shredded in its transaction and
    # every instance is told at its commit (FORGOTTEN_CHANNEL) to drop what it cached of them.
    forgotten: Sequence[UUID] = ()
    # (follower name, position it has applied): its checkpoint, written with the events.
    tracking: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Committed:
    """The request's events are durable; `positions` in the order of its events."""

    positions: list[int]

    @property
    def last_position(self) -> int:
        return self.positions[-1] if self.positions else 0


@dataclass(frozen=True, slots=True)
class Replayed:
    """The idempotency key was already used with the same request: its first answer, and the
    position of that command's last event."""

    status: int
    response: bytes
    position: int


class AppendRejected(Exception):
    """The request was refused; nothing of it was written."""


class CheckpointNotAdvanced(AppendRejected):
    """A follower's checkpoint is already at or past the position given: it only moves forward."""

    def __init__(self, name: str, position: int) -> None:
        super().__init__(f"checkpoint {name!r} is already at or past {position}")
        self.name, self.position = name, position


class StreamConflict(AppendRejected):
    def __init__(self, stream_id: UUID, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream_id} is at version {actual}, expected {expected}")
        self.stream_id, self.expected, self.actual = stream_id, expected, actual


class IdempotencyKeyReused(AppendRejected):
    pass


class OrderClaimed(AppendRejected):
    """The order already earned, for `member_id`, reported by `channel`."""

    def __init__(self, order_ref: str, member_id: UUID, channel: str | None) -> None:
        super().__init__(f"order {order_ref!r} has already earned points")
        self.order_ref, self.member_id, self.channel = order_ref, member_id, channel


class IdentityClaimed(AppendRejected):
    def __init__(self, kind: str, member_id: UUID) -> None:
        super().__init__(f"this {kind} identity belongs to another member")
        self.kind, self.member_id = kind, member_id


Outcome = Committed | Replayed


@dataclass(slots=True)
class _Pending:
    request: AppendRequest
    future: asyncio.Future[Outcome]


@dataclass(slots=True)
class _Heads:
    """What this appender's last commit left at the head of the log: its position and global
    hash, and the last version and stream hash of each stream it wrote. The global hash at the
    head commits to the whole log (chain.py), so while the head read under the lock is still
    this one, nobody else has appended since, and these streams need not be read again."""

    position: int = 0
    global_hash: bytes = chain.GENESIS
    streams: dict[UUID, tuple[int, bytes]] = field(default_factory=dict)

    def holds(self, position: int, global_hash: bytes) -> bool:
        return bool(self.streams) and position == self.position and global_hash == self.global_hash


class Appender:
    """The single writer of this process; `append()` is safe to call from any task."""

    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = MAX_BATCH, in_flight: int = IN_FLIGHT) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._heads = _Heads()
        self.batches = 0
        self.appended = 0

    @property
    def queued(self) -> int:
        """Requests waiting for the writer (a gauge for /metrics)."""
        return self._queue.qsize()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="appender")

    async def stop(self) -> None:
        """Finish what is queued (and in flight), then stop."""
        if self._task is None:
            return
        await self._queue.join()  # every batch taken from it has been committed or refused
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def append(self, request: AppendRequest) -> Outcome:
        """Queue a request and wait for its outcome; raises AppendRejected when refused."""
        if self._task is None:
            raise RuntimeError("appender is not running")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(request, future))
        return await future

    async def append_many(self, requests: Sequence[AppendRequest]) -> list[Outcome | BaseException]:
        """Queue many requests at once (so they share group commits) and wait for all of them:
        each one's Outcome, or the exception that refused it (one refused fails no other)."""
        if self._task is None:
            raise RuntimeError("appender is not running")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outcome]] = []
        for request in requests:
            futures.append(loop.create_future())
            self._queue.put_nowait(_Pending(request, futures[-1]))
        return await asyncio.gather(*futures, return_exceptions=True)

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._in_flight)
        while True:
            # A slot first: while all are busy, requests wait in the queue and make the next
            # batch larger.
            await slots.acquire()
            first = await self._queue.get()
            batch = [first]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            commit = asyncio.create_task(self._commit(batch, slots.release))
            self._commits.add(commit)
            commit.add_done_callback(self._commits.discard)

    async def _commit(self, batch: list[_Pending], done: Callable[[], None]) -> None:
        try:
            await self._commit_batch(batch)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
            else:
                log.warning("group commit of %d failed (%r); retrying one by one", len(batch), exc)
                for pending in batch:
                    try:
                        await self._commit_batch([pending])
                    except Exception as single_exc:
                        _settle(pending, single_exc)
        finally:
            done()
            for _ in batch:
                self._queue.task_done()

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        # Four round trips a batch (BEGIN and the lock, the reads, the writes, COMMIT): each
        # await also waits for this process's event loop, which serves requests meanwhile, and
        # the lock is held through all of them.
        async with self._pool.acquire() as conn:
            await conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({APPEND_LOCK})")
            try:
                plan = await _Plan.build(conn, [p.request for p in batch], self._heads)
                accepted: list[tuple[_Pending, Committed]] = []
                rejected: list[tuple[_Pending, BaseException | Replayed]] = []
                for pending in batch:
                    result = plan.admit(pending.request)
                    if isinstance(result, Committed):
                        accepted.append((pending, result))
                    else:
                        rejected.append((pending, result))
                if accepted:
                    await plan.write(conn, [p.request for p, _ in accepted])
                    # Before COMMIT: the next batch may be granted the lock (and read the head)
                    # before this task hears that its COMMIT is done. Should this commit fail,
                    # the head read next will not match, and these are dropped.
                    self._heads = plan.heads_after(self._heads)
                await conn.execute("COMMIT")
            except BaseException:
                # Also on cancellation; a connection that cannot even roll back is closed.
                if not conn.is_closed():
                    try:
                        await conn.execute("ROLLBACK")
                    except BaseException:
                        conn.terminate()
                        raise
                raise
        # Committed: only now may anyone hear of it.
        self.batches += 1
        self.appended += sum(len(c.positions) for _, c in accepted)
        for pending, committed in accepted:
            _settle(pending, committed)
        for pending, outcome in rejected:
            _settle(pending, outcome)


def _settle(pending: _Pending, result: Outcome | BaseException) -> None:
    if pending.future.done():
        return
    if isinstance(result, BaseException):
        pending.future.set_exception(result)
    else:
        pending.future.set_result(result)


class _Plan:
    """What the database holds now for a batch's streams, keys and claims, updated as
    requests are admitted in order."""

    def __init__(self) -> None:
        self.next_position = 1
        self.versions: dict[UUID, int] = {}
        # The hash chains (chain.py): the global hash at the head and each stream's last hash,
        # and the transaction's now(), which is every new event's recorded_at.
        self.head_hash = chain.GENESIS
        self.stream_hashes: dict[UUID, bytes] = {}
        self.written: set[UUID] = set()  # streams the batch appends to
        self.now: datetime | None = None
        self.idempotency: dict[tuple[str, str], tuple[bytes, int, bytes, int]] = {}
        self.expired_keys: set[tuple[str, str]] = set()
        self.orders: dict[str, tuple[UUID, str | None]] = {}
        self.identities: dict[tuple[str, bytes], UUID] = {}
        self.responses: dict[int, tuple[IdempotencyRecord, int]] = {}
        self.positions: dict[int, list[int]] = {}

    @classmethod
    async def build(cls, conn: asyncpg.Connection, requests: list[AppendRequest], heads: _Heads) -> _Plan:
        """Read, in one query, all the batch is checked against (under the append lock); the
        streams `heads` remembers are left out of it, and read in a second query only when the
        head of the log is no longer the one `heads` left."""
        streams = list({s for r in requests for s in (*r.expected, *(e.stream_id for e in r.events))})
        known = {s: heads.streams[s] for s in streams if s in heads.streams}
        keys = [(r.idempotency.channel, r.idempotency.key) for r in requests if r.idempotency]
        orders = [o for r in requests for o, _ in r.order_claims]
        claims = [c for r in requests for c in r.identity_claims]
        row = await conn.fetchrow(
            _READ_PLAN,
            [s for s in streams if s not in known],
            [c for c, _ in keys],
            [k for _, k in keys],
            orders,
            [c.kind for c in claims],
            [c.value_hash for c in claims],
        )
        plan = cls()
        plan.next_position = 1 + row["head"]
        plan.head_hash = row["head_hash"] or chain.GENESIS
        plan.now = row["now"]
        plan.versions = dict(zip(row["stream_ids"] or (), row["versions"] or (), strict=True))
        plan.stream_hashes = dict(zip(row["stream_ids"] or (), row["stream_hashes"] or (), strict=True))
        if heads.holds(row["head"], plan.head_hash):
            for stream_id, (version, stream_hash) in known.items():
                plan.versions[stream_id], plan.stream_hashes[stream_id] = version, stream_hash
        else:  # another writer (instance) appended since, or our last commit failed
            heads.streams.clear()
            if known:
                for r in await conn.fetch(_READ_STREAMS, list(known)):
                    plan.versions[r["stream_id"]] = r["stream_version"]
                    plan.stream_hashes[r["stream_id"]] = r["hash"]
        for channel, key, request_hash, status, response, position, live in zip(
            row["idem_channels"] or (),
            row["idem_keys"] or (),
            row["idem_hashes"] or (),
            row["idem_statuses"] or (),
            row["idem_responses"] or (),
            row["idem_positions"] or (),
            row["idem_live"] or (),
            strict=True,
        ):
            if live:
                plan.idempotency[(channel, key)] = (request_hash, status, response, position)
            else:  # past its 24 hours, not yet pruned: a new answer replaces it
                plan.expired_keys.add((channel, key))
        plan.orders = {
            ref: (owner, channel)
            for ref, owner, channel in zip(
                row["order_refs"] or (), row["order_owners"] or (), row["order_channels"] or (), strict=True
            )
        }
        plan.identities = {
            (kind, value_hash): member_id
            for kind, value_hash, member_id in zip(
                row["identity_kinds"] or (),
                row["identity_hashes"] or (),
                row["identity_owners"] or (),
                strict=True,
            )
        }
        return plan

    def admit(self, request: AppendRequest) -> Committed | Replayed | AppendRejected:
        """Decide one request against the current plan; on success, reserve its effects."""
        idem = request.idempotency
        if idem is not None:
            seen = self.idempotency.get((idem.channel, idem.key))
            if seen is not None:
                request_hash, status, response, position = seen
                if request_hash != idem.request_hash:
                    return IdempotencyKeyReused(idem.key)
                return Replayed(status, response, position)
        for stream_id, expected in request.expected.items():
            actual = self.versions.get(stream_id, 0)
            if actual != expected:
                return StreamConflict(stream_id, expected, actual)
        for order_ref, _ in request.order_claims:
            owner = self.orders.get(order_ref)
            if owner is not None:
                return OrderClaimed(order_ref, *owner)
        released = {(c.kind, c.value_hash) for c in request.identity_releases}
        for claim in request.identity_claims:
            owner = self.identities.get((claim.kind, claim.value_hash))
            if (
                owner is not None
                and owner != claim.member_id
                and (claim.kind, claim.value_hash) not in released
            ):
                return IdentityClaimed(claim.kind, owner)
        # Admitted: reserve versions, claims and positions for the requests after it.
        positions = list(range(self.next_position, self.next_position + len(request.events)))
        self.next_position += len(request.events)
        for event in request.events:
            self.versions[event.stream_id] = max(self.versions.get(event.stream_id, 0), event.stream_version)
        for order_ref, member_id in request.order_claims:
            self.orders[order_ref] = (member_id, request.metadata.channel)
        for claim in request.identity_releases:
            self.identities.pop((claim.kind, claim.value_hash), None)
        for claim in request.identity_claims:
            self.identities[(claim.kind, claim.value_hash)] = claim.member_id
        last = positions[-1] if positions else self.next_position - 1
        if idem is not None:
            self.idempotency[(idem.channel, idem.key)] = (idem.request_hash, idem.status, idem.response, last)
            self.responses[id(request)] = (idem, last)
        self.positions[id(request)] = positions
        return Committed(positions)

    def _hashes(self, rows: list[tuple[Any, ...]]) -> tuple[list[bytes], list[bytes]]:
        """Each row's stream hash and global hash (chain.py), in position order; recorded_at is
        the transaction's now(), which the insert's default writes."""
        assert self.now is not None, "build() reads now() with the plan"
        heads, previous, now = self.stream_hashes, self.head_hash, self.now
        hashes, global_hashes = [], []
        for position, event_id, stream_id, version, event_type, topic, data, *meta, occurred_at in rows:
            content = chain.content(
                event_id, stream_id, version, event_type, topic, data, *meta, occurred_at, now
            )
            event_hash = heads[stream_id] = chain.stream_hash(heads.get(stream_id, chain.GENESIS), content)
            previous = chain.global_hash(previous, position, event_hash)
            hashes.append(event_hash)
            global_hashes.append(previous)
        self.head_hash = previous
        self.written.update(row[2] for row in rows)
        return hashes, global_hashes

    def heads_after(self, heads: _Heads) -> _Heads:
        """`heads` once this plan's writes commit: the new head, and the streams it wrote added."""
        streams = heads.streams if len(heads.streams) < MAX_KNOWN_STREAMS else {}
        for stream_id in self.written:
            streams[stream_id] = (self.versions[stream_id], self.stream_hashes[stream_id])
        return _Heads(self.next_position - 1, self.head_hash, streams)

    async def write(self, conn: asyncpg.Connection, requests: list[AppendRequest]) -> None:
        """Write the accepted requests: events, idempotency records, order and hold claims, member
        keys and the NOTIFY in one statement; identity claims and checkpoints (rarer) after it."""
        rows = [
            (
                position,
                event.event_id,
                event.stream_id,
                event.stream_version,
                event.event_type,
                event.topic,
                event.data,
                request.metadata.channel,
                request.metadata.api_key_id,
                request.metadata.correlation_id,
                request.metadata.causation_id,
                event.occurred_at,
            )
            for request in requests
            for event, position in zip(request.events, self.positions[id(request)], strict=True)
        ]
        events = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 12
        hashes, global_hashes = self._hashes(rows)
        traceparents = [r.metadata.traceparent for r in requests for _ in r.events]
        last = rows[-1][0] if rows else 0
        idem_rows = [self.responses[id(r)] for r in requests if id(r) in self.responses]
        # Only the appender writes these records, under the lock: a key the plan did not find is
        # inserted plainly; one found past its retention is replaced (apart: it is rare, and the
        # pruning, which does not take the lock, may delete it meanwhile).
        renewed = [(i, pos) for i, pos in idem_rows if (i.channel, i.key) in self.expired_keys]
        if renewed:
            idem_rows = [(i, pos) for i, pos in idem_rows if (i.channel, i.key) not in self.expired_keys]
        orders = [(o, m, r.metadata.channel) for r in requests for o, m in r.order_claims]
        keys = [k for r in requests for k in r.member_keys]
        # A hold is indexed at its request's last event (its points_held).
        holds = [(c, self.positions[id(r)][-1]) for r in requests for c in r.hold_claims]
        await conn.execute(
            _WRITE_BATCH,
            *events,
            *_idempotency_columns(idem_rows),
            [o for o, _, _ in orders],
            [m for _, m, _ in orders],
            last,
            [m for m, _ in keys],
            [w for _, w in keys],
            NOTIFY_CHANNEL,
            str(last),  # delivered at commit, never before: listeners wake only for committed events
            [c for _, _, c in orders],
            [c.hold_id for c, _ in holds],
            [c.member_id for c, _ in holds],
            [c.expires_at for c, _ in holds],
            [pos for _, pos in holds],
            hashes,
            global_hashes,
            traceparents,
        )
        if renewed:
            await conn.execute(_RENEW_KEYS, *_idempotency_columns(renewed))
        releases = [c for r in requests for c in r.identity_releases]
        if releases:
            await conn.execute(
                "DELETE FROM identities WHERE (kind, value_hash, member_id) IN"
                " (SELECT * FROM unnest($1::text[], $2::bytea[], $3::uuid[]))",
                [c.kind for c in releases],
                [c.value_hash for c in releases],
                [c.member_id for c in releases],
            )
        forgotten = [m for r in requests for m in r.forgotten]
        if forgotten:
            # Crypto-shredding: without its wrapped key nothing sealed for a member opens again.
            # The NOTIFY is delivered at commit (never before), to every instance's cache.
            await conn.execute(
                "WITH shredded AS (UPDATE member_keys SET wrapped_key = NULL, shredded_at = now()"
                " WHERE member_id = ANY($1::uuid[]))"
                " SELECT pg_notify($2, m::text) FROM unnest($1::uuid[]) AS m",
                forgotten,
                FORGOTTEN_CHANNEL,
            )
        claims = [c for r in requests for c in r.identity_claims]
        if claims:
            await conn.execute(
                "INSERT INTO identities (kind, value_hash, member_id, position)"
                " SELECT k, h, m, $4 FROM unnest($1::text[], $2::bytea[], $3::uuid[]) AS t(k, h, m)"
                " ON CONFLICT (kind, value_hash) DO UPDATE SET member_id = EXCLUDED.member_id,"
                " position = EXCLUDED.position",
                [c.kind for c in claims],
                [c.value_hash for c in claims],
                [c.member_id for c in claims],
                last,
            )
        for request in requests:
            if request.tracking is None:
                continue
            # A follower only moves forward: a checkpoint at or past the position is left alone
            # and the batch refused. One statement per row, so each sees the rows before it.
            name, position = request.tracking
            moved = await conn.fetchval(
                "INSERT INTO checkpoints (name, position) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()"
                " WHERE checkpoints.position < EXCLUDED.position RETURNING position",
                name,
                position,
            )
            if moved is None:
                raise CheckpointNotAdvanced(name, position)


def _idempotency_columns(rows: list[tuple[IdempotencyRecord, int]]) -> tuple[list[Any], ...]:
    """Idempotency records and their positions as the six arrays both inserts take."""
    return (
        [i.channel for i, _ in rows],
        [i.key for i, _ in rows],
        [i.request_hash for i, _ in rows],
        [i.status for i, _ in rows],
        [i.response for i, _ in rows],
        [pos for _, pos in rows],
    )


# Everything a batch is checked against, as one row of arrays (NULL where nothing matched): the
# head of the log (its position and global hash, one index probe) and each stream's last version
# and hash ($1: the streams the appender does not already know, see _Heads). Every look-up is a
# probe per key: LATERAL with LIMIT 1 (a primary key has one row a key anyway), which the planner
# cannot flatten into a join, over the keys made distinct as `IN` did. The statement is prepared
# once per connection, and a generic plan made while a fresh database's tables were empty
# hash-joined them with a scan of the whole table, run after run, as they grew.
_READ_PLAN = """
SELECT
  coalesce(h.position, 0) AS head, h.global_hash AS head_hash,
  now() AS now,
  v.stream_ids, v.versions, v.stream_hashes,
  i.idem_channels, i.idem_keys, i.idem_hashes, i.idem_statuses, i.idem_responses, i.idem_positions,
  i.idem_live,
  o.order_refs, o.order_owners, o.order_channels,
  c.identity_kinds, c.identity_hashes, c.identity_owners
FROM
  (SELECT array_agg(s.id) AS stream_ids, array_agg(l.stream_version) AS versions,
          array_agg(l.hash) AS stream_hashes
     FROM unnest($1::uuid[]) AS s(id)
     CROSS JOIN LATERAL (SELECT stream_version, hash FROM events WHERE stream_id = s.id
                          ORDER BY stream_version DESC LIMIT 1) AS l) AS v,
  (SELECT array_agg(k.channel) AS idem_channels, array_agg(k.key) AS idem_keys,
          array_agg(k.request_hash) AS idem_hashes, array_agg(k.status) AS idem_statuses,
          array_agg(k.response) AS idem_responses, array_agg(k.position) AS idem_positions,
          array_agg(k.created_at > now() - interval '24 hours') AS idem_live
     FROM (SELECT DISTINCT * FROM unnest($2::text[], $3::text[])) AS w(channel, key)
     CROSS JOIN LATERAL (SELECT * FROM idempotency_keys
                          WHERE channel = w.channel AND key = w.key LIMIT 1) AS k) AS i,
  (SELECT array_agg(r.order_ref) AS order_refs, array_agg(r.member_id) AS order_owners,
          array_agg(r.channel) AS order_channels
     FROM (SELECT DISTINCT * FROM unnest($4::text[])) AS w(order_ref)
     CROSS JOIN LATERAL (SELECT * FROM order_refs WHERE order_ref = w.order_ref LIMIT 1) AS r) AS o,
  (SELECT array_agg(d.kind) AS identity_kinds, array_agg(d.value_hash) AS identity_hashes,
          array_agg(d.member_id) AS identity_owners
     FROM (SELECT DISTINCT * FROM unnest($5::text[], $6::bytea[])) AS w(kind, value_hash)
     CROSS JOIN LATERAL (SELECT * FROM identities
                          WHERE kind = w.kind AND value_hash = w.value_hash LIMIT 1) AS d) AS c
  LEFT JOIN LATERAL (SELECT position, global_hash FROM events ORDER BY position DESC LIMIT 1) AS h ON true
"""

# The last version and hash of these streams, when the ones the appender knew are stale.
_READ_STREAMS = """
SELECT s.id AS stream_id, l.stream_version, l.hash
  FROM unnest($1::uuid[]) AS s(id)
  CROSS JOIN LATERAL (SELECT stream_version, hash FROM events WHERE stream_id = s.id
                       ORDER BY stream_version DESC LIMIT 1) AS l
"""

# The common writes of a batch, in one statement (data-modifying CTEs all run, referenced or
# not). Identity claims are not among them: a release and a claim of one identity in the same
# batch must see each other, which sibling CTEs do not.
_WRITE_BATCH = """
WITH
  new_events AS (
    INSERT INTO events (position, event_id, stream_id, stream_version, event_type, topic, data,
                        channel, api_key_id, correlation_id, causation_id, occurred_at, hash,
                        global_hash, traceparent)
    SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::uuid[], $4::integer[], $5::text[],
                         $6::text[], $7::bytea[], $8::text[], $9::text[], $10::text[],
                         $11::text[], $12::timestamptz[], $31::bytea[], $32::bytea[],
                         $33::text[])),
  new_keys AS (
    INSERT INTO idempotency_keys (channel, key, request_hash, status, response, position)
    SELECT * FROM unnest($13::text[], $14::text[], $15::bytea[], $16::smallint[], $17::bytea[],
                         $18::bigint[])),
  new_orders AS (
    INSERT INTO order_refs (order_ref, member_id, position, channel)
    SELECT o, m, $21, c FROM unnest($19::text[], $20::uuid[], $26::text[]) AS t(o, m, c)),
  new_member_keys AS (
    INSERT INTO member_keys (member_id, wrapped_key)
    SELECT * FROM unnest($22::uuid[], $23::bytea[])),
  new_holds AS (
    INSERT INTO holds (hold_id, member_id, expires_at, position)
    SELECT * FROM unnest($27::uuid[], $28::uuid[], $29::timestamptz[], $30::bigint[]))
SELECT pg_notify($24, $25) WHERE $21 > 0
"""

# Idempotency records replacing ones past their retention that the pruning has not deleted yet.
_RENEW_KEYS = """
INSERT INTO idempotency_keys (channel, key, request_hash, status, response, position)
SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::smallint[], $5::bytea[], $6::bigint[])
ON CONFLICT (channel, key) DO UPDATE SET request_hash = EXCLUDED.request_hash,
  status = EXCLUDED.status, response = EXCLUDED.response, position = EXCLUDED.position,
  created_at = now()
"""
