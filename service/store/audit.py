"""What auditors read and check: the log with its hashes, the chains recomputed, checkpoints.

- `ChainVerifier` recomputes both chains (chain.py) in position order from a start (position 0,
  or a position whose global hash it is given) and stops at the first break, naming the
  position, the stream and version, and what broke. It checks signed checkpoints on the way: the
  global hash it computes at a checkpoint's position must be the one signed. It keeps each
  stream's last (version, hash) in memory, up to MAX_STREAMS; past that, or when it starts
  after 0, it reads a stream's last hash at or before where it is from the table.
- `audit_lines` pages the log as JSON Lines (`AuditEvent`), the one format of
  `GET /v1/audit/events` and `loyalty audit export`; the payload is the stored bytes verbatim
  (personal fields still sealed), so a reader that keeps a JSON value's raw text (msgspec.Raw,
  Go's json.RawMessage, serde_json's RawValue) recomputes the hashes from a line.
- Checkpoints: stored and listed here; signed and published by service/checkpoints.py.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import chain

MAX_STREAMS = 500_000  # streams whose last hash the verifier keeps in memory (~150 B each)
PAGE = 5_000


async def read_page(
    conn: asyncpg.Connection, columns: str, *, after: int, size: int, until: int | None = None
) -> list[asyncpg.Record]:
    """The next `size` events after `after` (through `until`), in position order.

    The range is bounded above by `after + size`: positions are dense, so that is the page, and
    the planner takes the primary key whatever the table's statistics say. With only a lower
    bound, a table that grew since it was last analysed got a bitmap scan of the whole tail and
    a sort on every page (verify ran at half speed after a bulk load). A page cut short by a
    hole in the positions (an event deleted behind our back) goes on to the next event there is.
    """
    upper = after + size if until is None else min(after + size, until)
    rows: list[asyncpg.Record] = await conn.fetch(
        f"SELECT {columns} FROM events WHERE position > $1 AND position <= $2 ORDER BY position", after, upper
    )
    if len(rows) < upper - after and (until is None or upper < until):
        beyond = rows[-1][0] if rows else after
        rest = await conn.fetch(
            f"SELECT {columns} FROM events WHERE position > $1 AND position <= $2 ORDER BY position LIMIT $3",
            beyond,
            until if until is not None else 2**63 - 1,
            size - len(rows),
        )
        rows.extend(rest)
    return rows


_COLUMNS = (
    "position, event_id, stream_id, stream_version, event_type, topic, data, channel, api_key_id,"
    " correlation_id, causation_id, occurred_at, recorded_at, hash, global_hash"
)


# -- the log, as auditors read it -------------------------------------------------------------


class AuditEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the log as stored: every column, the payload verbatim, both hashes (hex)."""

    position: int
    event_id: UUID
    stream: UUID
    version: int
    type: str
    topic: str
    channel: str | None
    api_key_id: str | None  # the key that made the command (the actor)
    correlation_id: str | None
    causation_id: str | None
    occurred_at: datetime
    recorded_at: datetime
    # The stored bytes (JSON, personal fields sealed), verbatim; null only when they are not
    # JSON (altered): `data` then holds them in base64.
    payload: msgspec.Raw
    data: str | None = None
    hash: str
    global_hash: str


_encoder = msgspec.json.Encoder()
_raw = msgspec.json.Decoder(msgspec.Raw).decode
_NULL = msgspec.Raw(b"null")


def audit_event(row: Sequence[Any]) -> AuditEvent:
    """The AuditEvent of a row read with `_COLUMNS`."""
    data: bytes = row[6]
    try:
        payload = _raw(data)  # validates it is one JSON value, no copy
        encoded = None
    except msgspec.DecodeError:
        payload, encoded = _NULL, base64.b64encode(data).decode()
    return AuditEvent(
        position=row[0],
        event_id=row[1],
        stream=row[2],
        version=row[3],
        type=row[4],
        topic=row[5],
        channel=row[7],
        api_key_id=row[8],
        correlation_id=row[9],
        causation_id=row[10],
        occurred_at=row[11],
        recorded_at=row[12],
        payload=payload,
        data=encoded,
        hash=row[13].hex(),
        global_hash=row[14].hex(),
    )


async def audit_lines(
    pool: asyncpg.Pool, *, after: int, limit: int | None = None, page: int = PAGE
) -> AsyncIterator[bytes]:
    """The log after `after` (at most `limit` events) as JSON Lines, a chunk per page.

    Each page is read on a connection taken for it alone, so a slow reader holds none.
    """
    left = limit
    while left is None or left > 0:
        size = page if left is None else min(page, left)
        async with pool.acquire() as conn:
            rows = await read_page(conn, _COLUMNS, after=after, size=size)
        if not rows:
            return
        chunk = bytearray()
        for row in rows:
            _encoder.encode_into(audit_event(row), chunk, -1)
            chunk += b"\n"
        yield bytes(chunk)
        after = rows[-1][0]
        if left is not None:
            left -= len(rows)
        if len(rows) < size:
            return


# -- checkpoints ------------------------------------------------------------------------------


class SignedCheckpoint(msgspec.Struct, frozen=True, kw_only=True):
    """A checkpoint as auditors get it (`GET /v1/audit/checkpoints`, NATS): the global hash at
    `position`; `signature` (base64) is Ed25519 over `message` by `public_key` (base64, raw)."""

    position: int
    global_hash: str  # hex
    signed_at: datetime
    message: str  # loyalty-audit-checkpoint/v1 <position> <global_hash> <signed_at, µs since 1970>
    signature: str
    public_key: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The global hash at a position, signed at `signed_at` by the key `public_key`."""

    position: int
    global_hash: bytes
    signed_at: datetime
    public_key: bytes
    signature: bytes

    @property
    def message(self) -> bytes:
        return chain.checkpoint_message(self.position, self.global_hash, self.signed_at)

    @classmethod
    def from_wire(cls, wire: SignedCheckpoint) -> Checkpoint:
        """A checkpoint as published (an auditor's copy); ValueError when it is malformed."""
        return cls(
            wire.position,
            bytes.fromhex(wire.global_hash),
            wire.signed_at,
            base64.b64decode(wire.public_key, validate=True),
            base64.b64decode(wire.signature, validate=True),
        )

    def wire(self) -> SignedCheckpoint:
        return SignedCheckpoint(
            position=self.position,
            global_hash=self.global_hash.hex(),
            signed_at=self.signed_at,
            message=self.message.decode(),
            signature=base64.b64encode(self.signature).decode(),
            public_key=base64.b64encode(self.public_key).decode(),
        )

    def signed_by(self, public_key: bytes) -> bool:
        """Whether this checkpoint's signature is `public_key`'s over its message."""
        if not hmac.compare_digest(self.public_key, public_key):
            return False
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.message)
        except (InvalidSignature, ValueError):
            return False
        return True


_CHECKPOINT_COLUMNS = "position, global_hash, signed_at, public_key, signature"


def _checkpoint(row: Sequence[Any]) -> Checkpoint:
    return Checkpoint(row[0], row[1], row[2], row[3], row[4])


async def checkpoints(
    conn: asyncpg.Connection, *, after: int = 0, limit: int | None = None
) -> list[Checkpoint]:
    """Stored checkpoints past `after`, oldest first."""
    rows = await conn.fetch(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE position > $1 ORDER BY position LIMIT $2",
        after,
        limit,
    )
    return [_checkpoint(r) for r in rows]


async def latest_checkpoint(conn: asyncpg.Connection) -> Checkpoint | None:
    row = await conn.fetchrow(
        f"SELECT {_CHECKPOINT_COLUMNS} FROM audit_checkpoints ORDER BY position DESC LIMIT 1"
    )
    return None if row is None else _checkpoint(row)


# -- verification -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Break:
    """The first place where the log does not match its chains."""

    position: int
    stream: UUID | None
    version: int | None
    reason: str  # content_changed, stream_version, position_gap, global_chain, checkpoint, ...
    detail: str


@dataclass(frozen=True, slots=True)
class Verification:
    """What a verification checked: events after `after` through `position`."""

    after: int
    position: int
    global_hash: bytes
    events_checked: int
    checkpoints_checked: int
    broken: Break | None

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainVerifier:
    """Recomputes the chains page by page; see the module docstring.

    `after`/`global_hash`: where to start and the global hash there (GENESIS at 0).
    `public_key`: the key checkpoints must be signed with; None checks no stored checkpoint.
    `held`: checkpoints kept elsewhere (an auditor's copies, from NATS or an earlier read),
    checked like the stored ones (with `public_key`, else the key each names): a rewrite is
    caught by them even when the stored checkpoints were deleted too.
    A verifier can be run again later (the checkpointer does): it goes on where it stopped.
    """

    def __init__(
        self,
        *,
        after: int = 0,
        global_hash: bytes = chain.GENESIS,
        public_key: bytes | None = None,
        held: Sequence[Checkpoint] = (),
    ) -> None:
        self.after = after
        self.held = list(held)
        self.position = after
        self.global_hash = global_hash
        self.public_key = public_key
        self.checked = 0
        self.checkpoints_checked = 0
        self._streams: dict[UUID, tuple[int, bytes]] = {}
        self._complete = after == 0  # every stream seen since position 0 is in _streams

    @classmethod
    async def resumed(
        cls,
        conn: asyncpg.Connection,
        after: int,
        *,
        public_key: bytes | None = None,
        held: Sequence[Checkpoint] = (),
    ) -> ChainVerifier | Verification:
        """A verifier starting after `after`, from the global hash stored there, or a failed
        Verification when that position holds no event or disagrees with its checkpoint."""
        if after == 0:
            return cls(public_key=public_key, held=held)
        row = await conn.fetchrow(
            "SELECT e.global_hash, c.global_hash AS signed FROM (SELECT $1::bigint AS position) AS p"
            " LEFT JOIN events e ON e.position = p.position"
            " LEFT JOIN audit_checkpoints c ON c.position = p.position",
            after,
        )
        stored, signed = row["global_hash"], row["signed"]
        if stored is None:
            broken = Break(after, None, None, "position_gap", f"position {after} holds no event")
            return Verification(after, after, chain.GENESIS, 0, 0, broken)
        if signed is not None and signed != stored:
            broken = Break(
                after,
                None,
                None,
                "checkpoint",
                f"the global hash at {after} is not the one its checkpoint signed",
            )
            return Verification(after, after, stored, 0, 0, broken)
        return cls(after=after, global_hash=signed or stored, public_key=public_key, held=held)

    async def run(
        self,
        conn: asyncpg.Connection,
        *,
        until: int | None = None,
        page: int = PAGE,
        pause: Callable[[], Any] | None = None,
    ) -> Verification:
        """Check every event after where it stands (through `until`), then the checkpoints
        beyond the end. `pause` is awaited between pages (a request's loop serves others)."""
        signed = await self._checkpoints(conn)
        if isinstance(signed, Break):
            return self._result(signed)
        while until is None or self.position < until:
            rows = await read_page(
                conn,
                f"position, stream_id, stream_version, {chain.CONTENT_SQL}, hash, global_hash",
                after=self.position,
                size=page,
                until=until,
            )
            if not rows:
                break
            await self._load_streams(conn, rows)
            broken = self._check(rows, signed)
            if broken is not None:
                return self._result(broken)
            if len(rows) < page:
                break
            if pause is not None:
                await pause()
        beyond = [p for p in signed if p > self.position]
        if beyond and until is None:
            last = max(beyond)
            return self._result(
                Break(
                    self.position + 1,
                    None,
                    None,
                    "truncated",
                    f"the log ends at {self.position} but a checkpoint was signed at {last}:"
                    " events were deleted",
                )
            )
        return self._result(None)

    def _result(self, broken: Break | None) -> Verification:
        return Verification(
            self.after, self.position, self.global_hash, self.checked, self.checkpoints_checked, broken
        )

    async def _checkpoints(self, conn: asyncpg.Connection) -> dict[int, bytes] | Break:
        """Signed global hashes after where it stands, each signature checked."""
        stored = [] if self.public_key is None else await checkpoints(conn, after=self.position)
        found: dict[int, bytes] = {}
        for checkpoint in [*stored, *(c for c in self.held if c.position > self.position)]:
            if not checkpoint.signed_by(self.public_key or checkpoint.public_key):
                return Break(
                    checkpoint.position,
                    None,
                    None,
                    "checkpoint_signature",
                    f"the checkpoint at {checkpoint.position} is not signed by the service's key",
                )
            if found.setdefault(checkpoint.position, checkpoint.global_hash) != checkpoint.global_hash:
                return Break(
                    checkpoint.position,
                    None,
                    None,
                    "checkpoint",
                    f"two checkpoints signed at {checkpoint.position} name different global hashes:"
                    " the stored one was replaced",
                )
        return found

    async def _load_streams(self, conn: asyncpg.Connection, rows: Sequence[Any]) -> None:
        """Each stream of the page not in memory: its last (version, hash) where we stand."""
        if len(self._streams) > MAX_STREAMS:
            self._streams.clear()
            self._complete = False
        if self._complete:
            return
        missing = list({r[1] for r in rows} - self._streams.keys())
        if not missing:
            return
        found = await conn.fetch(
            "SELECT s.id, l.stream_version, l.hash FROM unnest($1::uuid[]) AS s(id)"
            " CROSS JOIN LATERAL (SELECT stream_version, hash FROM events"
            " WHERE stream_id = s.id AND position <= $2 ORDER BY stream_version DESC LIMIT 1) AS l",
            missing,
            self.position,
        )
        for stream_id, version, event_hash in found:
            self._streams[stream_id] = (version, event_hash)
        for stream_id in missing:  # no event at or before where we stand: a new stream
            self._streams.setdefault(stream_id, (0, chain.GENESIS))

    def _check(self, rows: Sequence[Any], signed: dict[int, bytes]) -> Break | None:
        streams, position, previous = self._streams, self.position, self.global_hash
        stream_hash, global_hash = chain.stream_hash, chain.global_hash
        new = (0, chain.GENESIS)
        for at, stream_id, version, content, stored_hash, stored_global in rows:
            if at != position + 1:
                self.position, self.global_hash = position, previous
                return Break(
                    position + 1,
                    None,
                    None,
                    "position_gap",
                    f"position {position + 1} holds no event (the next is {at}): an event was deleted"
                    " or positions were changed",
                )
            last_version, last_hash = streams.get(stream_id, new)
            if version != last_version + 1:
                self.position, self.global_hash = position, previous
                return Break(
                    at,
                    stream_id,
                    version,
                    "stream_version",
                    f"the stream's event before this one is version {last_version}, not {version - 1}:"
                    " an event of the stream was deleted, inserted or moved",
                )
            event_hash = stream_hash(last_hash, content)
            if event_hash != stored_hash:
                self.position, self.global_hash = position, previous
                return Break(
                    at,
                    stream_id,
                    version,
                    "content_changed",
                    "the event's stored bytes do not match its hash: a column of it was changed,"
                    " or it was put there without its hash",
                )
            chained = global_hash(previous, at, event_hash)
            if chained != stored_global:
                self.position, self.global_hash = position, previous
                return Break(
                    at,
                    stream_id,
                    version,
                    "global_chain",
                    "the global hash here does not follow the one before: events before it were"
                    " deleted, inserted or moved (positions swapped), or the hash was changed",
                )
            if at in signed:
                if signed[at] != chained:
                    self.position, self.global_hash = position, previous
                    return Break(
                        at,
                        stream_id,
                        version,
                        "checkpoint",
                        f"the log up to {at} is not the log the checkpoint at {at} signed: it was rewritten",
                    )
                self.checkpoints_checked += 1
            streams[stream_id] = (version, event_hash)
            position, previous = at, chained
            self.checked += 1
        self.position, self.global_hash = position, previous
        return None


async def yield_to_loop() -> None:
    """A `pause` for ChainVerifier.run: let the event loop serve others between pages."""
    await asyncio.sleep(0)


__all__ = [
    "AuditEvent",
    "Break",
    "ChainVerifier",
    "Checkpoint",
    "SignedCheckpoint",
    "Verification",
    "audit_event",
    "audit_lines",
    "checkpoints",
    "latest_checkpoint",
    "yield_to_loop",
]
