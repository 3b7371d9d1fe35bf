"""The relay: publishes every committed event, in position order, to the JetStream stream.

PostgreSQL is the source of truth and NATS the broadcast. Commands never wait for the relay:
it follows the log (`events` by position) and publishes behind it, so while NATS is down the
events wait in the log and go out, in order, when it returns.

- One relay is active across all instances: the one holding a session-level advisory lock on
  its own connection (`Leadership`, service/store/follower.py). The others retry the lock every
  second, keeping the relay's status current meanwhile; if the leader's connection dies, its
  session (and lock) ends and a standby takes over.
- How far the stream holds the log is its checkpoint (`checkpoints`, name "relay"), written on the
  lock connection (a relay that lost its lock cannot write it) only once every acknowledgement
  of a batch is in. A crash in between republishes the batch: each message carries
  `Nats-Msg-Id` = event id and the stream's de-duplication window absorbs the repeats.
- Before publishing (on taking the lead, and again after any failure or NATS reconnection) the
  relay lines up with the stream: when the stream's last message is the log's event at its
  position, it continues right after it. That skips what a crashed relay published but did not
  record (even after the de-duplication window), and republishes a tail that NATS acknowledged
  and then lost (an acknowledgement is weaker than a PostgreSQL commit).
- Many publishes are in flight at once: a sender task reads and sends batches while the main
  task awaits their acknowledgements, oldest first, each bounded by a timeout (nats-py #985: a
  future may never complete). Every message but the first of a run carries
  `Nats-Expected-Last-Msg-Id` = the previous event id, so the stream only ever holds an
  in-order prefix of the log: if one message is lost (a disconnection), every later one is
  refused rather than stored out of order, and the run restarts from the first event not
  acknowledged. (The stream checks de-duplication before that header, so repeats still succeed.)
- It reads the log with the one log reader (service/store/log.py) on a connection of its own,
  and wakes on LISTEN `loyalty_events` (sent by the appender at commit; `LogWatch`) and polls
  every second as well, so a lost notification costs at most a second.

What it publishes is a `Feed`: by default the event log (`EventFeed`); the segment changes'
outbox is another (service/bus/segments.py), relayed to a stream of its own with every
guarantee above, by a second Relay with its own lock and checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from service.config import Settings
from service.metrics import DelayHistogram
from service.store.event_store import EventStore
from service.store.follower import (
    NOTIFY_CHANNEL,
    Leadership,
    LogWatch,
    Session,
    close_quietly,
    sleep_unless,
    stop_gently,
)
from service.store.log import LogReader

from . import cloudevents
from .connection import NatsConnection

log = logging.getLogger(__name__)

RELAY_LOCK = 0x4C45444745520002  # "LEDGER" + 2: one active relay per database
TRACKING_NAME = "relay"
# Long enough to absorb a crash and retry; JetStream requires it to be at most max_age.
DUPLICATE_WINDOW_S = 3600.0
STREAM_NAME_IN_USE = 10058  # "stream name already in use with a different configuration"
STREAM_CHECK_TTL = 1.0  # /health/ready asks JetStream whether the stream exists at most this often
STREAM_CHECK_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class RelayStatus:
    """A snapshot of the relay, for /metrics and /health/ready.

    `ack_latency_*`: from an event's `recorded_at` (the start of its transaction, so the commit
    itself is included) to its JetStream acknowledgement, in seconds, for events this instance
    published: p50/p99 over the last 10,000, and a cumulative histogram since start
    (Prometheus shape: (upper bound, count) pairs; `+Inf` is `ack_latency_count`).
    """

    active: bool
    nats_connected: bool
    published_position: int
    head_position: int
    lag_events: int
    lag_seconds: float
    published: int
    duplicates: int
    ack_latency_p50: float | None
    ack_latency_p99: float | None
    ack_latency_buckets: tuple[tuple[float, int], ...]
    ack_latency_sum: float
    ack_latency_count: int
    last_error: str | None
    # Since NATS was last seen unreachable (or the relay started): the time it has had to
    # publish the backlog that built up meanwhile.
    nats_up_seconds: float = 0.0


class _Position(msgspec.Struct):
    position: int


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish: its place in the feed, id (`Nats-Msg-Id`), subject and body."""

    position: int
    msg_id: str
    subject: str
    body: bytes
    recorded_at: datetime


class Feed(Protocol):
    """What a relay publishes: a table read by a gapless position that only ever grows in
    commit order, each row one message whose body carries `position` (see `_align`)."""

    name: str  # the relay's checkpoint and follower name
    lock: int  # advisory lock: one active relay of this feed per database
    notify_channel: str  # NOTIFY at commit of new rows
    description: str  # of the stream

    async def read(self, conn: asyncpg.Connection, *, after: int, limit: int) -> Sequence[Outgoing]: ...
    async def head(self, conn: asyncpg.Connection) -> int: ...
    async def recorded_at(self, conn: asyncpg.Connection, position: int) -> datetime | None: ...
    async def message_id(self, conn: asyncpg.Connection, position: int) -> str | None: ...


class EventFeed:
    """The event log, each event as its CloudEvent on `<prefix>.<event_type>.<member_id>`."""

    name = TRACKING_NAME
    lock = RELAY_LOCK
    notify_channel = NOTIFY_CHANNEL
    description = "Loyalty ledger events (CloudEvents 1.0), one per committed event, in order."

    def __init__(self, store: EventStore, subject_prefix: str, source: str) -> None:
        # Decrypts personal data (the CloudEvents carry it, redacted); its key cache outlives the lead.
        self._log = LogReader(store.keyring)
        self._prefix = subject_prefix
        self._source = source

    async def read(self, conn: asyncpg.Connection, *, after: int, limit: int) -> list[Outgoing]:
        return [
            Outgoing(
                r.position,
                str(r.event_id),
                cloudevents.nats_subject(r.event_type, r.stream_id, self._prefix),
                cloudevents.encode(r, source=self._source),
                r.recorded_at,
            )
            for r in await self._log.read_recorded(conn, after=after, limit=limit)
        ]

    async def head(self, conn: asyncpg.Connection) -> int:
        return int(await conn.fetchval("SELECT coalesce(max(position), 0) FROM events"))

    async def recorded_at(self, conn: asyncpg.Connection, position: int) -> datetime | None:
        at: datetime | None = await conn.fetchval(
            "SELECT recorded_at FROM events WHERE position = $1", position
        )
        return at

    async def message_id(self, conn: asyncpg.Connection, position: int) -> str | None:
        found = await conn.fetchval("SELECT event_id FROM events WHERE position = $1", position)
        return None if found is None else str(found)


@dataclass(slots=True)
class _Sent:
    """A batch handed to NATS: a future per message sent, and why sending stopped early."""

    batch: Sequence[Outgoing]
    futures: list[asyncio.Future[PubAck]]
    error: str | None
    reconnects: int = 0  # the client's reconnection count when sent


# Sent batches, in order; an exception (the sender failed) or None (stopping, all sent).
_Queue = asyncio.Queue[_Sent | BaseException | None]


class Relay:
    """Follows the event log and publishes it to JetStream; see the module docstring."""

    def __init__(
        self,
        store: EventStore,
        nats: NatsConnection,
        settings: Settings,
        *,
        subject_prefix: str = cloudevents.DEFAULT_SUBJECT_PREFIX,
        source: str = cloudevents.DEFAULT_SOURCE,
        batch_size: int = 500,
        max_inflight_batches: int = 4,
        poll_interval: float = 1.0,
        standby_interval: float = 1.0,
        ack_timeout: float = 5.0,
        lead: bool = True,
        feed: Feed | None = None,
        stream_name: str | None = None,
    ) -> None:
        """`feed` (default: the event log, on `subject_prefix`) goes to `stream_name` (default:
        the settings' stream) on the subjects `<subject_prefix>.>`."""
        if settings.database_url is None:
            raise ValueError("database_url is not set")
        self._feed = feed if feed is not None else EventFeed(store, subject_prefix, source)
        self._reader: asyncpg.Connection | None = None  # the active relay's log connection
        self._nats = nats
        self._database_url = settings.database_url
        self.stream_name = stream_name or settings.stream_name
        self.subject_prefix = subject_prefix
        self._replicas = settings.stream_replicas
        self._max_age_s = settings.stream_max_age_days * 86400.0
        self._batch_size = batch_size
        self._max_inflight_batches = max_inflight_batches
        self._poll_interval = poll_interval
        self._ack_timeout = ack_timeout

        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._watch = LogWatch(poll_interval, channel=self._feed.notify_channel)
        self._leadership = Leadership(
            self._database_url,
            self._feed.lock,
            name=self._feed.name,
            standby_interval=standby_interval,
            may_lead=lead,  # False: a watcher that only reports where the active relay is
            stopping=self._stopping,
            on_error=self._failed,
        )
        self._client: Any = None
        self._js: JetStreamContext | None = None
        self._stream_ready = False
        self._stream_checked: tuple[float, bool] | None = None  # (monotonic, exists): stream_exists()
        self._nats_down_at = time.monotonic()  # see RelayStatus.nats_up_seconds

        self._published_position = 0
        self._head = 0
        # recorded_at of the oldest unpublished event: that of each batch in flight, oldest
        # first; else as last seen (a partly acknowledged batch, a standby's query).
        self._unacked: deque[datetime] = deque()
        self._pending_since: datetime | None = None
        self._published = 0
        self._duplicates = 0
        self._latencies: deque[float] = deque(maxlen=10_000)
        self._ack_delays = DelayHistogram()
        self._last_error: str | None = None

        # Test hooks. `before_record` is awaited with the position a batch reached, after all
        # its acknowledgements and before that position is recorded (a crash there is what
        # de-duplication covers). `align_with_stream = False` trusts the checkpoint alone, so that
        # tests can show the stream's de-duplication absorbing a republished batch.
        self.before_record: Callable[[int], Awaitable[None]] | None = None
        self.align_with_stream = True

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start following the log in the background (active or standby)."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._leadership.run(self._lead, self._standby), name="relay")

    async def stop(self, *, drain_timeout: float = 2.0) -> None:
        """Stop: publish what is already committed if that is quick, then give up the lead."""
        if self._task is None:
            return
        self._stopping.set()
        self._watch.wake()
        task, self._task = self._task, None
        await stop_gently(task, self._stopping, grace=drain_timeout)

    def status(self) -> RelayStatus:
        """Where the relay is; no I/O (a standby refreshes it from the database every second)."""
        head = max(self._head, self._watch.head)  # a NOTIFY's position counts before it is read
        lag = max(0, head - self._published_position)
        lag_seconds = 0.0
        oldest = self._unacked[0] if self._unacked else self._pending_since
        if lag and oldest is not None:
            lag_seconds = max(0.0, (datetime.now(UTC) - oldest).total_seconds())
        recent = sorted(self._latencies)
        return RelayStatus(
            active=self._active,
            nats_connected=self._nats_connected(),
            published_position=self._published_position,
            head_position=max(head, self._published_position),
            lag_events=lag,
            lag_seconds=lag_seconds,
            published=self._published,
            duplicates=self._duplicates,
            ack_latency_p50=_quantile(recent, 0.50),
            ack_latency_p99=_quantile(recent, 0.99),
            ack_latency_buckets=self._ack_delays.cumulative(),
            ack_latency_sum=self._ack_delays.sum,
            ack_latency_count=self._ack_delays.count,
            last_error=self._last_error,
            nats_up_seconds=time.monotonic() - self._nats_down_at,
        )

    async def stream_exists(self) -> bool | None:
        """Whether the stream exists (/health/ready); None while NATS is unreachable.

        The active relay says no until it has ensured the stream; otherwise JetStream is asked,
        at most once per STREAM_CHECK_TTL (readiness probes must not load it). Errors other
        than "not found" (e.g. JetStream not answering) are raised.
        """
        client = self._nats.client
        if not self._nats_connected() or client is None:
            return None
        if self._active and not self._stream_ready:
            return False
        now = time.monotonic()
        if self._stream_checked is not None and now - self._stream_checked[0] < STREAM_CHECK_TTL:
            return self._stream_checked[1]
        try:
            await client.jetstream(timeout=STREAM_CHECK_TIMEOUT).stream_info(self.stream_name)
            exists = True
        except NotFoundError:
            exists = False
        self._stream_checked = (now, exists)
        return exists

    def _nats_connected(self) -> bool:
        client = self._nats.client
        connected = client is not None and client.is_connected
        if not connected:
            self._nats_down_at = time.monotonic()
        return connected

    def stream_config(self) -> StreamConfig:
        """The stream as the service wants it."""
        window = DUPLICATE_WINDOW_S if not self._max_age_s else min(DUPLICATE_WINDOW_S, self._max_age_s)
        return StreamConfig(
            name=self.stream_name,
            description=self._feed.description,
            subjects=[f"{self.subject_prefix}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            max_age=self._max_age_s,
            duplicate_window=window,
            allow_direct=True,
        )

    @property
    def _active(self) -> bool:
        return self._leadership.leading

    # -- leadership (service/store/follower.py) -------------------------------------------------

    def _failed(self, exc: Exception) -> None:
        self._last_error = type(exc).__name__

    async def _standby(self, session: Session) -> None:
        """Keep the status current so that any instance can report the relay's lag."""
        self._nats_connected()  # notices NATS outages between readiness probes
        self._published_position = await self._tracked(session.conn)
        self._head = await self._feed.head(session.conn)
        self._pending_since = await self._feed.recorded_at(session.conn, self._published_position + 1)

    # -- the active relay ---------------------------------------------------------------------

    async def _lead(self, session: Session) -> None:
        await self._watch.attach(session)
        # The log is read on a connection of the relay's own: on the shared pool it would queue
        # behind the commands whenever they keep every connection busy, and lag with them.
        self._reader = await asyncpg.connect(self._database_url, timeout=10, command_timeout=30)
        try:
            await self._publish_from_tracked(session)
        finally:
            reader, self._reader = self._reader, None
            await close_quietly(reader)

    async def _publish_from_tracked(self, session: Session) -> None:
        position = await self._tracked(session.conn)
        self._published_position = position
        self._head = max(await self._feed.head(session.conn), position)
        failures = 0
        while True:
            js = await self._jetstream(session)
            if js is None:
                return  # stopping while NATS is unreachable: the next start publishes the rest
            # Taken before aligning: a reconnection from here on makes the run align again.
            reconnects = _reconnects(self._nats)
            start = position
            error: str | None
            try:
                if self.align_with_stream:
                    position = await self._align(js, session, position)
            except nats.errors.Error as exc:
                # JetStream not answering yet (e.g. the stream electing a new leader after a node
                # restarted): retry below, keeping the lead, rather than stepping down for it.
                error = type(exc).__name__
            else:
                start = position
                position, error = await self._pipeline(js, session, position, reconnects)
            if error is None:
                return  # stopping; everything read was acknowledged and recorded
            # Retry from the first event not acknowledged, after a pause (longer if stuck).
            failures = 1 if position > start else failures + 1
            self._last_error = error
            if error.startswith(("NoStreamResponseError", "ServiceUnavailableError")):
                self._stream_ready = False  # the stream is gone (e.g. a new, empty server)
            if failures == 1 or failures % 30 == 0:
                log.warning(
                    "relay publish incomplete; retrying",
                    extra={"error": error, "position": position, "failures": failures},
                )
            await sleep_unless(self._stopping, min(0.05 * 2 ** min(failures, 6), 2.0))
            session.check()

    async def _jetstream(self, session: Session) -> JetStreamContext | None:
        """The JetStream context once NATS is connected and the stream ensured (None: stopping)."""
        delay = 0.05
        attempts = 0
        while not self._stopping.is_set():
            client = self._nats.client
            if self._nats_connected() and client is not None:
                if client is not self._client or self._js is None:
                    self._client = client
                    self._js = client.jetstream(
                        timeout=self._ack_timeout,
                        publish_async_max_pending=2 * self._batch_size * self._max_inflight_batches,
                    )
                    self._stream_ready = False
                if self._stream_ready:
                    return self._js
                try:
                    await self._ensure_stream(self._js)
                    self._stream_ready = True
                    return self._js
                except Exception as exc:  # e.g. JetStream not ready yet after a restart: retry
                    self._last_error = type(exc).__name__
                    attempts += 1
                    if attempts == 1 or attempts % 60 == 0:
                        log.warning(
                            "could not ensure the stream; retrying",
                            extra={"error": type(exc).__name__, "attempts": attempts},
                        )
            # NATS unreachable: keep our place, keep the status (head, lag) fresh, and check
            # the lock connection so that another instance can take over if we lose it.
            await sleep_unless(self._stopping, delay)
            delay = min(delay * 2, 1.0)
            session.check()
            self._head = max(self._head, self._watch.head, await self._feed.head(session.conn))
            if self._head > self._published_position and self._pending_since is None:
                self._pending_since = await self._feed.recorded_at(session.conn, self._published_position + 1)
        return None

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        config = self.stream_config()
        try:
            await js.add_stream(config)
        except APIError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            try:
                await js.update_stream(config)
            except APIError as update_exc:
                # e.g. storage cannot change in place: publish to the stream as it is.
                log.error(
                    "the stream exists with a configuration that cannot be updated; using it as is",
                    extra={"stream": self.stream_name, "error": update_exc.description},
                )
        log.info("stream ready", extra={"stream": self.stream_name})

    async def _align(self, js: JetStreamContext, session: Session, position: int) -> int:
        """Continue after the stream's last message when it is the log's event at its position."""
        try:
            info = await js.stream_info(self.stream_name)
            if not info.state.last_seq:
                return position  # a new, empty stream: the checkpoint knows where we are
            msg = await js.get_msg(self.stream_name, seq=info.state.last_seq)
        except NotFoundError:
            return position  # the last message expired or was deleted
        try:
            last = msgspec.json.decode(msg.data or b"{}", type=_Position).position
        except msgspec.DecodeError:
            last = -1  # not one of ours: never move on its word (checked below)
        if last == position:
            return position
        msg_id = await self._feed.message_id(session.conn, last)
        if last < 0 or msg_id is None or msg_id != (msg.headers or {}).get("Nats-Msg-Id"):
            # The stream holds something the log does not (e.g. the database was restored from
            # an older backup): do not move on its word.
            log.error(
                "the stream's last message is not the log's event at its position; ignoring it",
                extra={"stream": self.stream_name, "position": last},
            )
            return position
        if last > position:
            log.info(
                "the stream holds events beyond the recorded position; continuing after them",
                extra={"recorded": position, "continuing_after": last},
            )
        else:
            log.warning(
                "the stream lost events it had acknowledged; publishing them again",
                extra={"recorded": position, "continuing_after": last},
            )
        await self._record(session, last)
        self._published_position = last
        return last

    async def _pipeline(
        self, js: JetStreamContext, session: Session, position: int, reconnects: int
    ) -> tuple[int, str | None]:
        """Publish from `position` on: a sender task reads and sends batches while this one
        awaits their acknowledgements, oldest first, and records each batch once all of it is
        acknowledged. Returns the position recorded and the error that ended it (None: stopping).
        """
        queue: _Queue = asyncio.Queue(maxsize=self._max_inflight_batches)
        sender = asyncio.create_task(self._send(js, position, reconnects, queue), name="relay-send")
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=self._poll_interval)
                except TimeoutError:
                    # Idle: prove the lock connection still lives, keep the head fresh.
                    session.check()
                    self._head = max(self._head, await self._feed.head(session.conn))
                    continue
                if item is None:
                    return position, None
                if isinstance(item, BaseException):
                    raise item
                reached, error = await self._acks(item)
                if reached > position:
                    if self.before_record is not None:
                        await self.before_record(reached)
                    await self._record(session, reached)
                    position = reached
                if error is not None:
                    return position, error
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            while not queue.empty():
                left = queue.get_nowait()
                if isinstance(left, _Sent):
                    for future in left.futures:
                        future.cancel()
            self._unacked.clear()

    async def _send(self, js: JetStreamContext, position: int, reconnects: int, queue: _Queue) -> None:
        """Read the log after `position` and send it, batch by batch, without waiting for acks."""
        previous: str | None = None  # event id of the message sent just before, in this run
        client = self._nats.client
        try:
            while True:
                self._watch.clear()  # before reading: a commit notified after this wakes the wait
                assert self._reader is not None  # set while leading
                batch = await self._feed.read(self._reader, after=position, limit=self._batch_size)
                if not batch:
                    if self._stopping.is_set():
                        await queue.put(None)
                        return
                    await self._watch.wait()
                    continue
                self._head = max(self._head, batch[-1].position)
                self._unacked.append(batch[0].recorded_at)
                if client is None or not client.is_connected:
                    # Do not pile messages into the client's reconnect buffer: wait for NATS.
                    sent = _Sent(batch, [], "disconnected")
                elif client.stats["reconnects"] != reconnects:
                    # The server may have restarted having lost what it acknowledged last:
                    # line up with the stream again before going on.
                    sent = _Sent(batch, [], "reconnected")
                else:
                    sent = await self._send_batch(js, batch, previous)
                    sent.reconnects = reconnects
                await queue.put(sent)  # waits while too many batches await their acks
                if sent.error is not None:
                    return  # the acknowledging side retries from the first unacknowledged event
                previous = batch[-1].msg_id
                position = batch[-1].position
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the acknowledging side, which steps down
            await queue.put(exc)

    async def _send_batch(
        self, js: JetStreamContext, batch: Sequence[Outgoing], previous: str | None
    ) -> _Sent:
        """Send a batch, in order, on one connection; the acknowledgements come later."""
        futures: list[asyncio.Future[PubAck]] = []
        for recorded in batch:
            msg_id = recorded.msg_id
            headers = {"Nats-Msg-Id": msg_id}
            if previous is not None:
                headers["Nats-Expected-Last-Msg-Id"] = previous
            previous = msg_id
            try:
                future = await js.publish_async(
                    recorded.subject,
                    recorded.body,
                    headers=headers,
                    stream=self.stream_name,
                    # No stall timeout: with one, nats-py awaits its semaphore through
                    # wait_for, which yields to the loop after every message, and its flusher
                    # then writes each message with a syscall of its own (~5x slower). The
                    # semaphore never runs out: it allows more than the batches in flight.
                    wait_stall=None,
                )
            except Exception as exc:  # e.g. the connection closed or its buffer is full: stop here
                return _Sent(batch, futures, type(exc).__name__)
            future.add_done_callback(functools.partial(self._acked, recorded.recorded_at.timestamp()))
            futures.append(future)
        return _Sent(batch, futures, None)

    async def _acks(self, sent: _Sent) -> tuple[int, str | None]:
        """Await a batch's acknowledgements; returns the position up to which all of them are
        in (in order) and the first error, if any."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_timeout
        pending: set[asyncio.Future[PubAck]] = set(sent.futures)
        timeout_error = "TimeoutError"
        while pending:
            # In slices, so that a lost connection is noticed at once rather than at the
            # deadline (the futures of a dead connection never complete).
            _, pending = await asyncio.wait(pending, timeout=min(0.25, max(0.0, deadline - loop.time())))
            if not pending:
                break
            client = self._nats.client
            if client is None or not client.is_connected:
                timeout_error = "disconnected"
                break
            if client.stats["reconnects"] != sent.reconnects:
                timeout_error = "reconnected"  # what was in flight may be lost: do not wait
                break
            if loop.time() >= deadline:
                break
        error = None
        done = 0
        for future in sent.futures:
            if not future.done():
                error = timeout_error
                break
            exc = None if future.cancelled() else future.exception()
            if future.cancelled() or exc is not None:
                error = "cancelled" if exc is None else type(exc).__name__
                if isinstance(exc, APIError) and exc.description:
                    error = f"{error}: {exc.description}"
                break
            done += 1
            if future.result().duplicate:
                self._duplicates += 1
        for future in pending:
            future.cancel()  # frees nats-py's pending slot; a late ack is then ignored
        self._published += done
        batch = sent.batch
        if done:
            self._published_position = batch[done - 1].position
        if done == len(batch):
            if self._unacked:
                self._unacked.popleft()
            self._pending_since = None
            return batch[-1].position, None
        self._pending_since = batch[done].recorded_at
        reached = batch[done - 1].position if done else batch[0].position - 1
        return reached, error or sent.error or "incomplete"

    def _acked(self, recorded_at: float, future: asyncio.Future[PubAck]) -> None:
        if future.cancelled() or future.exception() is not None:
            return
        latency = max(0.0, time.time() - recorded_at)
        self._latencies.append(latency)
        self._ack_delays.observe(latency)

    # -- checkpoint ---------------------------------------------------------------------------

    async def _tracked(self, conn: asyncpg.Connection) -> int:
        return int(
            await conn.fetchval(
                "SELECT coalesce((SELECT position FROM checkpoints WHERE name = $1), 0)", self._feed.name
            )
        )

    async def _record(self, session: Session, position: int) -> None:
        """Record how far the stream holds the log: its checkpoint, replaced (it may move back
        when the stream lost its tail). Only the lock holder writes, on the lock connection."""
        session.check()
        await session.conn.execute(
            "INSERT INTO checkpoints (name, position) VALUES ($1, $2)"
            " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
            self._feed.name,
            position,
        )


def _reconnects(nats: NatsConnection) -> int:
    """How many times the client has reconnected (a server restart may have lost acked data)."""
    return int(nats.client.stats["reconnects"]) if nats.client is not None else 0


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
