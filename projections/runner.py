"""Runs the projections in the service: they follow the log exactly once, in one pass.

One instance at a time leads each projection (a session advisory lock on the runner's own
connection, released when the instance dies) and applies it, batch by batch (see tracking.py);
the others follow its progress, so `wait_for` answers on every instance. The projections an
instance leads share one fold of the log (each event is decoded and applied once per batch,
not once per projection); each keeps its own checkpoint, advanced with its rows. When one
fails, the batch is rolled back and the others go on without it; it is retried on its own
back-off.

The locks are held, and LISTEN `loyalty_events` (the appender's NOTIFY at commit) and the
leaders' progress (`loyalty_projections`) are heard, on one dedicated session (service/store/
follower.py: a pooled connection would be UNLISTENed on release), kept open and pinged, and
reconnected with back-off; its loss ends every lead of this instance. A poll every
POLL_INTERVAL wakes the applier as well, so a lost notification only delays. The log is read
with the one log reader (service/store/log.py). On an error the batch is rolled back and
retried with back-off; no event is ever skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from service.metrics import DelayHistogram
from service.store.event_store import EventStore
from service.store.follower import Backoff, LogWatch, Session, start_kept_session
from service.store.log import LogReader

from .projection import LogFold, MemberProjection
from .rebuild import RebuildInProgress, RebuildReport, rebuild, rebuild_projection
from .registry import PROJECTIONS, UnknownProjection, default_projections
from .tracking import (
    LOCK_CLASS,
    PROGRESS_CHANNEL,
    ProjectionFailed,
    ProjectionStatus,
    apply_shared,
    ensure_tracked,
    projection_status,
    statuses,
)

__all__ = [
    "PROJECTIONS",
    "ProjectionRunner",
    "ProjectionStatus",
    "RebuildInProgress",
    "RebuildReport",
    "UnknownProjection",
    "projection_status",
    "rebuild",
]

log = logging.getLogger(__name__)

LIVE_BATCH = 1_000  # small batches keep the lag low and the checkpoint's lock short
POLL_INTERVAL = 0.5
KEEPALIVE = 5.0
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0


@dataclass(eq=False)
class _Slot:
    projection: MemberProjection
    position: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # replaced at each advance
    pause: asyncio.Lock = field(default_factory=asyncio.Lock)  # held: not applied (a swap)
    leading: bool = False
    observed_at: float = 0.0  # when a follower last read the leader's position
    error: str | None = None
    retry_at: float = 0.0  # after a failure, not applied again before this (monotonic)
    backoff: float = MIN_BACKOFF


class ProjectionRunner:
    """Keeps projections up to date in the background while the service runs."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: EventStore,
        database_url: str,
        *,
        projections: Sequence[MemberProjection] | None = None,
        poll_interval: float = POLL_INTERVAL,
        batch: int = LIVE_BATCH,
        rebuild_workers: int = 1,
        lead: bool = True,
    ) -> None:
        self._pool = pool
        self._store = store
        self._dsn = database_url
        chosen = projections if projections is not None else default_projections(store)
        self._slots = {p.name: _Slot(p) for p in chosen}
        self._poll = poll_interval
        self._batch = batch
        self._rebuild_workers = rebuild_workers
        self._may_lead = lead  # False: only follow the leaders' progress (wait_for, status)
        # The fold all applied projections share: it reads personal data if any of them needs it.
        personal = any(p.personal_data for p in chosen)
        self._fold = LogFold(
            LogReader(store.keyring if personal else None),
            max((p.cache_size for p in chosen), default=0),
        )
        self._fold.keep_recorded = True
        self._delays = {p.name: DelayHistogram() for p in chosen}
        self._session: Session | None = None  # holds the locks; LISTENs
        self._watch = LogWatch(poll_interval)
        self._listener: asyncio.Task[None] | None = None
        self._applier: asyncio.Task[None] | None = None

    @property
    def names(self) -> list[str]:
        return list(self._slots)

    async def start(self) -> None:
        """Track every projection, connect the listener, start following the log."""
        await ensure_tracked(self._pool, self.names)
        for status in await statuses(self._pool, self.names):
            self._slots[status.name].position = status.position
        # LISTEN before applying (a failure to connect surfaces here) so no early event goes unheard.
        self._listener = await start_kept_session(
            self._dsn,
            self._attach,
            name="projections",
            task_name="projections-listener",
            keepalive=KEEPALIVE,
            backoff=Backoff(MIN_BACKOFF, MAX_BACKOFF),
            on_close=self._session_closed,
        )
        self._applier = asyncio.create_task(self._follow(), name="projections")

    async def stop(self) -> None:
        """Stop applying (a batch in flight is rolled back) and close the listener."""
        tasks = [t for t in (self._applier, self._listener) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for slot in self._slots.values():
            slot.leading = False
        self._applier = self._listener = None

    def delays(self) -> dict[str, DelayHistogram]:
        """Per projection: from each event's commit to the commit of the batch that applied it,
        for the batches this instance applied (/metrics; what `loyalty bench` reports)."""
        return self._delays

    def position(self, name: str) -> int:
        """The last position this instance knows the projection to have applied."""
        return self._slot(name).position

    # The timeout is the read's contract (SPEC §4: wait up to 5 s, then 503), not a cancel scope.
    async def wait_for(self, name: str, position: int, timeout: float = 5.0) -> bool:  # noqa: ASYNC109
        """True once the projection has applied `position` (a `min_position` read); False after `timeout`."""
        slot = self._slot(name)
        deadline = asyncio.get_running_loop().time() + timeout
        while slot.position < position:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.progress.wait(), remaining)
        return True

    async def status(self) -> list[ProjectionStatus]:
        """Position and lag of each projection, and whether this instance applies it."""
        found = await statuses(self._pool, self.names)
        out = []
        for s in found:
            slot = self._slots[s.name]
            out.append(
                ProjectionStatus(
                    name=s.name,
                    position=s.position,
                    head=s.head,
                    lag_events=s.lag_events,
                    lag_seconds=s.lag_seconds,
                    rebuild_position=s.rebuild_position,
                    leading=slot.leading,
                    error=slot.error,
                )
            )
        return out

    async def rebuild(self, name: str) -> RebuildReport:
        """Rebuild from position 0 into fresh tables and swap them in; reads go on meanwhile."""
        slot = self._slot(name)

        def install(projection: MemberProjection) -> None:
            slot.projection = projection

        report, fresh = await rebuild_projection(
            self._pool,
            slot.projection,
            pause=slot.pause,
            install=install,
            database_url=self._dsn,
            workers=self._rebuild_workers,
        )
        fresh.reset()  # the runner applies it with the shared fold: free the rebuild's cache
        self._advance(slot, report.position)
        self._watch.wake()  # it was left out while paused
        return report

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise UnknownProjection(name) from None

    def _advance(self, slot: _Slot, position: int) -> None:
        if position > slot.position:
            slot.position = position
            slot.progress.set()
            slot.progress = asyncio.Event()

    async def _follow(self) -> None:
        while True:
            self._watch.clear()  # a notification from now on wakes the next wait
            more = False
            for slot in self._slots.values():
                # A follower tries to take the lead (and reads the leader's position, in case a
                # progress notification was lost) once per poll, not at every notification.
                if not slot.leading and time.monotonic() - slot.observed_at >= self._poll:
                    slot.observed_at = time.monotonic()
                    await self._observe(slot)
            now = time.monotonic()
            due = [
                s for s in self._slots.values() if s.leading and s.retry_at <= now and not s.pause.locked()
            ]
            if due:
                more = await self._apply(due)
            if not more:
                retry = [s.retry_at - now for s in self._slots.values() if s.leading and s.retry_at > now]
                await self._watch.wait(min([self._poll, *retry]))

    async def _observe(self, slot: _Slot) -> None:
        try:
            if not await self._lead(slot):
                position = await self._pool.fetchval(
                    "SELECT position FROM checkpoints WHERE name = $1", slot.projection.name
                )
                self._advance(slot, position or 0)
                # The leader's progress is readable again: a watcher has nothing failing (its
                # error would otherwise keep /health/ready at 503 for good after an outage).
                slot.error, slot.backoff = None, MIN_BACKOFF
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed([slot], exc)

    async def _apply(self, due: list[_Slot]) -> bool:
        """One shared batch for these slots; True to go on at once (more may be waiting)."""
        try:
            async with contextlib.AsyncExitStack() as paused:
                for slot in due:
                    await paused.enter_async_context(slot.pause)
                try:
                    async with self._pool.acquire() as conn, conn.transaction():
                        applied = await apply_shared(
                            conn, self._fold, [s.projection for s in due], self._batch
                        )
                except BaseException:
                    # The fold may be ahead of what was committed.
                    self._fold.reset()
                    raise
        except asyncio.CancelledError:
            raise
        except ProjectionFailed as exc:
            # Only its fault: the others go on at once without it, it after its back-off.
            self._failed([s for s in due if s.projection.name == exc.name], exc.error)
            return len(due) > 1
        except Exception as exc:
            self._failed(due, exc)
            return False
        committed_at = time.time()
        full = False
        for slot in due:
            after, reached = applied[slot.projection.name]
            delays = self._delays[slot.projection.name]
            for position, recorded_at in self._fold.recorded:
                if position > after:
                    delays.observe(max(0.0, committed_at - recorded_at))
            slot.error, slot.backoff = None, MIN_BACKOFF
            self._advance(slot, reached)
            full = full or reached - after >= self._batch
        return full

    def _failed(self, slots: list[_Slot], exc: Exception) -> None:
        # Retried with back-off, each on its own: the others go on meanwhile.
        for slot in slots:
            slot.error = repr(exc)
            slot.retry_at = time.monotonic() + slot.backoff
            slot.backoff = min(slot.backoff * 2, MAX_BACKOFF)
            log.error(
                "projection batch failed; retrying",
                exc_info=exc,
                extra={"projection": slot.projection.name},
            )

    async def _lead(self, slot: _Slot) -> bool:
        session = self._session
        if session is None or not self._may_lead:
            return False
        slot.leading = await session.try_lock((LOCK_CLASS, slot.projection.name))
        return slot.leading

    async def _attach(self, session: Session) -> None:
        """A new session: hear commits and the leaders' progress on it; lead on it from now on."""
        await self._watch.attach(session)
        await session.listen(PROGRESS_CHANNEL, self._on_progress)
        self._session = session
        self._watch.wake()  # anything committed before LISTEN

    def _session_closed(self) -> None:
        # Its advisory locks went with it: lead again only after taking them again.
        self._session = None
        for slot in self._slots.values():
            slot.leading = False

    def _on_progress(self, payload: str) -> None:
        name, _, position = payload.rpartition(":")
        slot = self._slots.get(name)
        if slot is not None:
            self._advance(slot, int(position))
