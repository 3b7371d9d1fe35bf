"""The eventsourcing library's recorder contract on our tables (for its conformance suites).

Synchronous adapters over our asyncpg store: inserts go through our `Appender` (the production
path: serialised group commit, gapless positions), reads are plain SQL on `events` and `checkpoints`.
A StoredEvent's originator_id, originator_version, topic and state are an event's stream_id
(a UUID), stream_version, topic and data; a notification's id is its position; a Tracking is a
checkpoint (one row per name, as the library's own single-row tracking). Each recorder runs
a private event loop in a daemon thread that owns its pool and appender (an asyncpg pool belongs
to the loop that created it); `close()` stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any, Self, TypeVar
from uuid import UUID

import asyncpg
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    DatabaseError,
    DataError,
    IntegrityError,
    InterfaceError,
    InternalError,
    ListenNotifySubscription,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProcessRecorder,
    ProgrammingError,
    Recorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)

from domain.events import event_type_named

from .appender import Appender, AppendRejected, AppendRequest, Committed, NewEvent
from .follower import NOTIFY_CHANNEL

T = TypeVar("T")

# SQLSTATE class -> the library's (DB-API) exception, as psycopg maps them.
_BY_SQLSTATE_CLASS: dict[str, type[PersistenceError]] = {
    "08": OperationalError,
    "0A": NotSupportedError,
    "20": ProgrammingError,
    "21": ProgrammingError,
    "22": DataError,
    "23": IntegrityError,
    "24": InternalError,
    "25": InternalError,
    "26": InternalError,
    "28": OperationalError,
    "2B": InternalError,
    "2D": InternalError,
    "2F": InternalError,
    "34": ProgrammingError,
    "38": InternalError,
    "39": InternalError,
    "3B": InternalError,
    "3D": ProgrammingError,
    "3F": ProgrammingError,
    "40": OperationalError,
    "42": ProgrammingError,
    "53": OperationalError,
    "54": OperationalError,
    "55": OperationalError,
    "57": OperationalError,
    "58": OperationalError,
    "XX": InternalError,
}


def event_type_of(topic: str) -> str:
    """snake_case of the topic's last name ('domain.member:Member.PointsEarned' -> 'points_earned')."""
    last = re.split(r"[.:]", topic)[-1]
    return event_type_named(last)


def translate(exc: BaseException) -> BaseException:
    """The library's exception for one raised by asyncpg, the socket or our appender."""
    if isinstance(exc, PersistenceError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return _BY_SQLSTATE_CLASS.get(sqlstate[:2], DatabaseError)(str(exc))
    if isinstance(exc, AppendRejected):  # a stream or claim conflict: a record conflict
        return IntegrityError(str(exc))
    # A value asyncpg could not encode (e.g. out of int32 range): its client-side DataError.
    if isinstance(exc, OverflowError) or (
        isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
    ):
        return DataError(str(exc))
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)):
        return InterfaceError(str(exc))
    if isinstance(exc, (OSError, TimeoutError)):
        return OperationalError(str(exc) or type(exc).__name__)
    return exc


def _stream_id(originator_id: UUID | str) -> UUID:
    if isinstance(originator_id, UUID):
        return originator_id
    try:
        return UUID(originator_id)
    except (TypeError, ValueError) as exc:
        raise DataError(f"stream ids are UUIDs, not {originator_id!r}") from exc


class _Runtime:
    """A private event loop in a daemon thread, with the pool and appender living on it."""

    def __init__(self, dsn: str, *, pool_size: int, command_timeout: float) -> None:
        self.dsn = dsn
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="recorder-loop", daemon=True)
        self._thread.start()
        self._closed = False
        self.pool: asyncpg.Pool
        self.appender: Appender
        try:
            self.run(self._open(pool_size, command_timeout))
        except BaseException:
            self._stop_loop()
            raise

    async def _open(self, pool_size: int, command_timeout: float) -> None:
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=pool_size, command_timeout=command_timeout
        )
        self.appender = Appender(self.pool)
        await self.appender.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for it, raising the library's exceptions."""
        if self._closed:
            coro.close()
            raise InterfaceError("recorder is closed")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        except Exception as exc:
            translated = translate(exc)
            if translated is exc:
                raise
            raise translated from exc

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.run(self._shutdown())
        finally:
            self._closed = True
            self._stop_loop()

    async def _shutdown(self) -> None:
        try:
            await self.appender.stop()
            try:
                await asyncio.wait_for(self.pool.close(), 10)
            except TimeoutError:
                self.pool.terminate()
        finally:
            current = asyncio.current_task()
            leftovers = [t for t in asyncio.all_tasks() if t is not current]
            for task in leftovers:
                task.cancel()
            await asyncio.gather(*leftovers, return_exceptions=True)

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class AsyncpgRecorder(Recorder):
    """Owns the runtime (loop thread, pool, appender); a context manager that closes it."""

    def __init__(
        self, dsn: str, *, pool_size: int = 10, command_timeout: float = 60.0, poll_interval: float = 1.0
    ) -> None:
        self.poll_interval = poll_interval
        self._runtime = _Runtime(dsn, pool_size=pool_size, command_timeout=command_timeout)

    def close(self) -> None:
        """Stop the appender (after what it has queued), close the pool, stop the loop."""
        self._runtime.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runtime.run(coro)

    def _append(self, stored_events: Sequence[StoredEvent], tracking: Tracking | None = None) -> list[int]:
        """Append through our appender; the positions given to the events."""
        now = datetime.now(UTC)
        request = AppendRequest(
            events=[
                NewEvent(
                    stream_id=_stream_id(e.originator_id),
                    stream_version=e.originator_version,
                    event_type=event_type_of(e.topic),
                    topic=e.topic,
                    data=e.state,
                    occurred_at=now,
                )
                for e in stored_events
            ],
            expected={},  # the unique (stream_id, stream_version) constraint is the only guard
            tracking=None if tracking is None else (tracking.application_name, tracking.notification_id),
        )
        outcome = self._run(self._runtime.appender.append(request))
        if not isinstance(outcome, Committed):  # only idempotent requests are replayed
            raise InternalError(f"unexpected append outcome {outcome!r}")
        return outcome.positions

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self._runtime.pool.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._runtime.pool.acquire() as conn:
            return await conn.fetchval(sql, *args)


class AsyncpgAggregateRecorder(AsyncpgRecorder, AggregateRecorder):
    """Stored events as rows of `events`, appended by our appender."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        if stored_events:
            self._append(stored_events)
        return None

    def select_events(
        self,
        originator_id: UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        args: list[Any] = [_stream_id(originator_id)]
        sql = "SELECT stream_id, stream_version, topic, data FROM events WHERE stream_id = $1"
        if gt is not None:
            args.append(gt)
            sql += f" AND stream_version > ${len(args)}"
        if lte is not None:
            args.append(lte)
            sql += f" AND stream_version <= ${len(args)}"
        sql += " ORDER BY stream_version DESC" if desc else " ORDER BY stream_version"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        rows = self._run(self._fetch(sql, *args))
        return [StoredEvent(r["stream_id"], r["stream_version"], r["topic"], r["data"]) for r in rows]


class AsyncpgApplicationRecorder(AsyncpgAggregateRecorder, ApplicationRecorder):
    """Also the global log: notification ids are positions (gapless, in commit order)."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        return self._append(stored_events) if stored_events else []

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        args: list[Any] = []
        where: list[str] = []
        if start is not None:
            args.append(start)
            where.append(f"position {'>=' if inclusive_of_start else '>'} ${len(args)}")
        if stop is not None:
            args.append(stop)
            where.append(f"position <= ${len(args)}")
        if topics:
            args.append(list(topics))
            where.append(f"topic = ANY(${len(args)}::text[])")
        args.append(limit)
        sql = "SELECT position, stream_id, stream_version, topic, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY position LIMIT ${len(args)}"
        rows = self._run(self._fetch(sql, *args))
        return [
            Notification(
                id=r["position"],
                originator_id=r["stream_id"],
                originator_version=r["stream_version"],
                topic=r["topic"],
                state=r["data"],
            )
            for r in rows
        ]

    def max_notification_id(self) -> int | None:
        value: int | None = self._run(self._fetchval("SELECT max(position) FROM events"))
        return value

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        return AsyncpgSubscription(self, gt=gt, topics=topics)

    async def _listen(self, wake: Callable[[], None]) -> asyncpg.Connection:
        """A dedicated (unpooled) connection LISTENing to the appender's NOTIFY channel."""
        conn: asyncpg.Connection = await asyncpg.connect(self._runtime.dsn)
        try:
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake())
        except BaseException:
            await conn.close()
            raise
        return conn


class AsyncpgSubscription(ListenNotifySubscription[AsyncpgApplicationRecorder]):
    """The library's pull loop, woken by NOTIFY on a dedicated connection and by polling."""

    def __init__(
        self, recorder: AsyncpgApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        self._stopping = asyncio.Event()  # set on the recorder's loop when stopped
        self._loop = recorder._runtime.loop
        # LISTEN before the first pull (started by the base class): anything committed after the
        # first pull's snapshot then wakes us.
        conn = recorder._run(recorder._listen(self._wake))
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        self._keeper = asyncio.run_coroutine_threadsafe(self._keep_listening(conn), self._loop)

    def _wake(self) -> None:
        notified: threading.Event | None = getattr(self, "_has_been_notified", None)
        if notified is not None:  # a NOTIFY before the first pull is covered by that pull
            notified.set()

    async def _keep_listening(self, conn: asyncpg.Connection) -> None:
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._recorder.poll_interval)
                # Poll too: a lost NOTIFY, or a lost LISTEN connection, must not stall us.
                self._wake()
                if conn.is_closed() and not self._stopping.is_set():
                    with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        conn = await self._recorder._listen(self._wake)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)

    def stop(self) -> None:
        super().stop()
        with contextlib.suppress(RuntimeError):  # the recorder's loop is already closed
            self._loop.call_soon_threadsafe(self._stopping.set)

    def __exit__(self, *args: object, **kwargs: Any) -> None:
        try:
            super().__exit__(*args, **kwargs)
        finally:
            with contextlib.suppress(Exception):
                self._keeper.result(timeout=10)


class AsyncpgTrackingRecorder(AsyncpgRecorder, TrackingRecorder):
    """Checkpoints, written by our appender: one row per name, moved only forward (a position at
    or below it is refused with IntegrityError, so a gap behind it cannot be filled in)."""

    def insert_tracking(self, tracking: Tracking) -> None:
        self._append((), tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The name's checkpoint (the library's has_tracking_id(name, id) is id <= it)."""
        value: int | None = self._run(
            self._fetchval("SELECT position FROM checkpoints WHERE name = $1", application_name)
        )
        return value


class AsyncpgProcessRecorder(AsyncpgTrackingRecorder, AsyncpgApplicationRecorder, ProcessRecorder):
    """Events and a checkpoint, committed together by our appender."""

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        tracking: Tracking | None = kwargs.get("tracking")
        if not stored_events and tracking is None:
            return []
        return self._append(stored_events, tracking)
