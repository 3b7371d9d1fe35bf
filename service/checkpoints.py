"""Signed checkpoints of the log: the global hash at a position, signed, stored and published.

One leader across instances (a `Leadership` on CHECKPOINT_LOCK, where the followers lead, like
the clock) takes a checkpoint when the log has grown by `every_events` since the last one, or
`every_seconds` after it when the log has grown at all:

- It signs only what it has verified: a `ChainVerifier` goes on from the last checkpoint to the
  head and recomputes both chains; the checkpoint is the recomputed global hash at the head. A
  break is logged (error) and nothing is signed until the log verifies again.
- Never uncommitted data: it reads the log on its own connection, which sees only committed
  events, and positions are committed in order (ADR 2).
- Restart-safe: the table is its whole state. A new leader starts from the last stored
  checkpoint (its signature checked; the log after it must chain from its hash, which the leader
  keeps in memory, so a row altered or deleted later does not move it), publishes first every
  checkpoint not yet marked published, and a second leader's checkpoint at the same position is
  refused by the primary key.
- Published on NATS (`audit_subject`, core NATS: subscribers keep their own copies) after it is
  stored, and marked published once the server has it (a flush); while NATS is away they wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

import msgspec

from service.services import Services
from service.store.audit import Break, ChainVerifier, Checkpoint, Verification, latest_checkpoint
from service.store.chain import checkpoint_message
from service.store.follower import Leadership, Session, sleep_unless, stop_gently

log = logging.getLogger(__name__)

CHECKPOINT_LOCK = 0x4C45444745520014  # "LEDGER" + 0x14 (ADR 14): one checkpointer per database
PUBLISH_TIMEOUT = 5.0
_encode = msgspec.json.Encoder().encode


class Checkpointer:
    """Takes, stores and publishes signed checkpoints; see the module docstring."""

    def __init__(self, services: Services, *, interval: float = 1.0, standby_interval: float = 1.0) -> None:
        settings = services.settings
        if settings.database_url is None:
            raise ValueError("database_url is not set")
        self._services = services
        self.every_events = settings.audit_checkpoint_events
        self.every_seconds = settings.audit_checkpoint_seconds
        self.subject = settings.audit_subject
        self.interval = min(interval, self.every_seconds)
        key = services.keyring.checkpoint_key
        self._key = key
        self.public_key = key.public_key().public_bytes_raw()
        self._stopping = asyncio.Event()
        self._leadership = Leadership(
            settings.database_url,
            CHECKPOINT_LOCK,
            name="audit-checkpoints",
            standby_interval=standby_interval,
            stopping=self._stopping,
        )
        self._task: asyncio.Task[None] | None = None
        self.taken = 0  # checkpoints this process signed
        self.broken: Verification | None = None  # the last verification that found a break

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._leadership.run(self._lead), name="audit-checkpoints")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_gently(task, self._stopping)

    @property
    def leading(self) -> bool:
        return self._leadership.leading

    async def _lead(self, session: Session) -> None:
        conn, lock = session.conn, session.lock
        async with lock:
            last = await latest_checkpoint(conn)
        verifier = self._verifier(last)
        last_at = time.monotonic()  # a new leader waits one interval before a time-based one
        while not self._stopping.is_set():
            session.check()
            await self._publish_pending(session)
            async with lock:
                head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
            since = head - (last.position if last is not None else 0)
            if since < 0 and last is not None:  # the log lost events a checkpoint covers
                broken = Break(
                    head + 1, None, None, "truncated", f"the log ends at {head}, before {last.position}"
                )
                self._report(Verification(last.position, head, last.global_hash, 0, 0, broken))
            waited = time.monotonic() - last_at
            due = since >= self.every_events or (since > 0 and waited >= self.every_seconds)
            if due and verifier is not None:
                async with lock:
                    result = await verifier.run(conn, until=head)
                if result.ok:
                    self.broken = None
                    last = await self._take(session, result.position, result.global_hash)
                    last_at = time.monotonic()
                    await self._publish_pending(session)
                else:
                    self._report(result)
                    verifier = None
            elif verifier is None and due:
                verifier = self._verifier(last)  # try again from the last checkpoint
            await sleep_unless(self._stopping, self.interval)

    def _verifier(self, last: Checkpoint | None) -> ChainVerifier | None:
        """A verifier going on from `last` as this leader knows it (signed: the table's copy may
        have been altered or deleted since), or None (reported) when `last` is not ours."""
        if last is None:
            return ChainVerifier(public_key=self.public_key)
        if not last.signed_by(self.public_key):
            broken = Break(
                last.position,
                None,
                None,
                "checkpoint_signature",
                "the last checkpoint is not signed by this key",
            )
            self._report(Verification(last.position, last.position, last.global_hash, 0, 0, broken))
            return None
        return ChainVerifier(after=last.position, global_hash=last.global_hash, public_key=self.public_key)

    def _report(self, result: Verification) -> None:
        """A break: logged, nothing signed; the next due check verifies again from the last
        checkpoint."""
        if self.broken is None or self.broken.broken != result.broken:
            broken = result.broken
            assert broken is not None
            log.error(
                "the log does not verify; no checkpoint is signed",
                extra={
                    "position": broken.position,
                    "stream": str(broken.stream),
                    "version": broken.version,
                    "reason": broken.reason,
                },
            )
        self.broken = result

    async def _take(self, session: Session, position: int, global_hash: bytes) -> Checkpoint:
        """Sign and store a checkpoint; another leader's there first (of the same log, verified
        as this one was) is kept, and this one is still where this leader goes on from."""
        signed_at = datetime.now(UTC)
        signature = self._key.sign(checkpoint_message(position, global_hash, signed_at))
        async with session.lock:
            stored = await session.conn.fetchval(
                "INSERT INTO audit_checkpoints (position, global_hash, signed_at, public_key, signature)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (position) DO NOTHING RETURNING position",
                position,
                global_hash,
                signed_at,
                self.public_key,
                signature,
            )
        if stored is not None:
            self.taken += 1
            log.info("audit checkpoint signed", extra={"position": position})
        return Checkpoint(position, global_hash, signed_at, self.public_key, signature)

    async def _publish_pending(self, session: Session) -> None:
        """Publish, in order, the stored checkpoints NATS has not had yet."""
        nats = self._services.nats
        client = None if nats is None else nats.client
        if client is None or not client.is_connected:
            return
        async with session.lock:
            rows = await session.conn.fetch(
                "SELECT position, global_hash, signed_at, public_key, signature FROM audit_checkpoints"
                " WHERE NOT published ORDER BY position"
            )
        for row in rows:
            checkpoint = Checkpoint(*row)
            try:
                await client.publish(self.subject, _encode(checkpoint.wire()))
                await client.flush(timeout=PUBLISH_TIMEOUT)
            except Exception as exc:  # NATS away: they wait for the next pass
                log.warning("audit checkpoint not published yet", extra={"error": type(exc).__name__})
                return
            async with session.lock:
                await session.conn.execute(
                    "UPDATE audit_checkpoints SET published = true WHERE position = $1", checkpoint.position
                )


__all__ = ["CHECKPOINT_LOCK", "Checkpointer"]
