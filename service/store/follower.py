"""Following the log: one way to lead across instances, wake on commits and back off.

Everything that follows the log (the relay, the projections, the schedulers) is built from
these pieces, so each guarantee below holds once, for all of them:

- `Session`: a dedicated connection (never a pooled one: the pool runs `UNLISTEN *` and keeps
  no session state across releases) for session-level advisory locks and LISTEN. Its locks end
  with it: when an instance dies, its connection and every lock it held go with it. `lost` is
  set as soon as the connection terminates; `check()` raises once it has.
- `Leadership`: one lock, contended for on a session of its own. Exactly one contender leads
  (`leading`) at a time; a standby tries again every `standby_interval` (and does its standby
  work meanwhile, e.g. reading the leader's progress); when the leader's connection dies, a
  standby takes over. Any failure steps down, reconnects after a back-off and contends again.
  Writes that must come from the leader only are made on `session.conn` inside `lead`: a
  contender that lost its lock has lost that connection too.
- `LogWatch`: wakes its waiters when the log may have grown: on the appender's NOTIFY
  (NOTIFY_CHANNEL, payload = the last position committed, sent at commit, never before), and
  after `poll_interval` at most, so a lost notification only delays.
- `keep_session`: a dedicated session kept open (reconnecting with back-off, pinged to notice
  a connection dropped silently) for a follower that holds several locks on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "loyalty_events"  # the appender's NOTIFY at commit; payload: the last position
FORGOTTEN_CHANNEL = "loyalty_forgotten"  # NOTIFY at the commit of a forget; payload: a member id

# A lock key: one bigint, or a namespace and a name (`pg_try_advisory_lock(ns, hashtext(name))`).
LockKey = int | tuple[int, str]


class SessionLost(Exception):
    """The dedicated connection is gone, and every lock it held with it."""


class Backoff:
    """Delays that double after each failure, up to `maximum`, and start again after a success."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.delay = initial

    def next(self) -> float:
        """The delay to wait now; the following one doubles."""
        delay = self.delay
        self.delay = min(self.delay * 2, self.maximum)
        return delay

    def reset(self) -> None:
        self.delay = self.initial


class Session:
    """A dedicated connection for advisory locks and LISTEN; see the module docstring."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.lost = asyncio.Event()
        # One operation at a time on the connection (lock attempts, pings, the owner's queries).
        self.lock = asyncio.Lock()
        conn.add_termination_listener(lambda _conn: self.lost.set())

    @classmethod
    async def open(cls, dsn: str, *, command_timeout: float = 30.0) -> Session:
        return cls(await asyncpg.connect(dsn, timeout=10, command_timeout=command_timeout))

    def check(self) -> None:
        """Raise SessionLost once the connection (and its locks) are gone."""
        if self.lost.is_set() or self.conn.is_closed():
            raise SessionLost("the follower's dedicated connection is closed")

    async def try_lock(self, key: LockKey) -> bool:
        """Take the session lock `key` if it is free (True), else False; never waits for it."""
        async with self.lock:
            if isinstance(key, int):
                return bool(await self.conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
            namespace, name = key
            return bool(
                await self.conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", namespace, name)
            )

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call `callback(payload)` on each NOTIFY of `channel` while the session lives."""

        def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        await self.conn.add_listener(channel, notified)

    async def ping(self, timeout: float) -> None:  # noqa: ASYNC109 -- the query's own timeout
        """Use the connection: one dropped silently is only noticed that way."""
        async with self.lock:
            await self.conn.execute("SELECT 1", timeout=timeout)

    async def close(self) -> None:
        """Close the connection (ending the session releases its locks)."""
        self.lost.set()
        await close_quietly(self.conn)


async def close_quietly(conn: asyncpg.Connection) -> None:
    """Close a connection of our own, or drop it when it is dead or does not answer in time."""
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:  # a dead connection: drop it
        conn.terminate()


class LogWatch:
    """Wakes waiters when the log may have grown: NOTIFY, or `poll_interval` at the latest.

    `channel`: the NOTIFY channel (default the appender's; a feed of its own has another).
    """

    def __init__(self, poll_interval: float, *, channel: str = NOTIFY_CHANNEL) -> None:
        self.poll_interval = poll_interval
        self.channel = channel
        self.head = 0  # the highest position announced (0: none heard)
        self._event = asyncio.Event()

    async def attach(self, session: Session) -> None:
        """LISTEN on the session (attach before reading the log, so no commit goes unheard)."""
        await session.listen(self.channel, self._notified)

    def _notified(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.head = max(self.head, int(payload))
        self._event.set()

    def wake(self) -> None:
        """Wake the waiters now (e.g. stopping, or work was left out meanwhile)."""
        self._event.set()

    def clear(self) -> None:
        """Call before reading the log: a commit notified after this wakes the next wait."""
        self._event.clear()

    async def wait(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 -- a poll, not a cancel scope
        """Until woken (True) or `timeout` (default and at most `poll_interval`) has passed."""
        limit = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
        try:
            await asyncio.wait_for(self._event.wait(), max(0.0, limit))
        except TimeoutError:
            return False
        return True


async def sleep_unless(stopping: asyncio.Event, seconds: float) -> None:
    """Sleep, but return at once when `stopping` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)


def _quiet(exc: BaseException) -> bool:
    """Failures of the connection or the database: logged without a trace."""
    return isinstance(exc, SessionLost | OSError | asyncpg.PostgresError | asyncpg.InterfaceError)


class Leadership:
    """Contends for one advisory lock; the holder leads until its session ends (see module)."""

    def __init__(
        self,
        dsn: str,
        key: LockKey,
        *,
        name: str,
        standby_interval: float = 1.0,
        may_lead: bool = True,
        stopping: asyncio.Event | None = None,
        backoff: Backoff | None = None,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self._dsn = dsn
        self.key = key
        self.name = name
        self.standby_interval = standby_interval
        self.may_lead = may_lead  # False: a watcher that never leads (it only does standby work)
        self.stopping = stopping if stopping is not None else asyncio.Event()
        self._backoff = backoff if backoff is not None else Backoff(0.2, 5.0)
        self._on_error = on_error
        self.leading = False

    async def run(
        self,
        lead: Callable[[Session], Awaitable[None]],
        standby: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        """Until `stopping`: contend, then `lead(session)` while holding the lock.

        `standby(session)` runs once per `standby_interval` while another leads. When `lead`
        returns, this contender stops; when anything raises, it steps down, waits a back-off
        and contends again on a new session.
        """
        while not self.stopping.is_set():
            session: Session | None = None
            try:
                session = await Session.open(self._dsn)
                if not await self._acquire(session, standby):
                    return  # stopping
                self._backoff.reset()
                self.leading = True
                log.info("leading", extra={"follower": self.name})
                await lead(session)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure: step down and retry; never take the service down
                if self._on_error is not None:
                    self._on_error(exc)
                log.warning(
                    "follower interrupted; retrying",
                    extra={"follower": self.name, "error": type(exc).__name__, "was_leading": self.leading},
                    exc_info=not _quiet(exc),
                )
            finally:
                self.leading = False
                if session is not None:
                    await session.close()
            await sleep_unless(self.stopping, self._backoff.next())

    async def _acquire(self, session: Session, standby: Callable[[Session], Awaitable[None]] | None) -> bool:
        """Wait until this contender holds the lock (True) or is stopping (False)."""
        while not self.stopping.is_set():
            if self.may_lead and await session.try_lock(self.key):
                return True
            if standby is not None:
                await standby(session)
            await sleep_unless(self.stopping, self.standby_interval)
            session.check()
        return False


async def keep_session(
    dsn: str,
    use: Callable[[Session], Awaitable[None]],
    *,
    name: str,
    first: Session | None = None,
    keepalive: float = 5.0,
    backoff: Backoff | None = None,
    on_close: Callable[[], None] | None = None,
) -> None:
    """Keep a dedicated session open until cancelled: `use(session)` on each new one, then
    ping it every `keepalive` until it is lost; reconnect after a back-off.

    `first` is a session the caller opened and prepared itself (so that a failure to connect
    at start surfaces there; `use` is not called for it). `on_close` runs whenever a session
    ends: its locks went with it.
    """
    backoff = backoff if backoff is not None else Backoff(0.1, 5.0)
    session = first
    while True:
        try:
            if session is None:
                session = await Session.open(dsn)
                await use(session)
            backoff.reset()
            while not session.lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(session.lost.wait(), keepalive)
                if not session.lost.is_set():
                    await session.ping(keepalive)
            raise SessionLost("the connection closed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "follower lost its connection; reconnecting",
                extra={"follower": name, "error": type(exc).__name__},
                exc_info=not _quiet(exc),
            )
        finally:
            if on_close is not None:
                on_close()
            if session is not None and not session.conn.is_closed():
                session.conn.terminate()
            session = None
        await asyncio.sleep(backoff.next())


async def start_kept_session(
    dsn: str,
    use: Callable[[Session], Awaitable[None]],
    *,
    name: str,
    task_name: str | None = None,
    keepalive: float = 5.0,
    backoff: Backoff | None = None,
    on_close: Callable[[], None] | None = None,
) -> asyncio.Task[None]:
    """Open and prepare the first session here, so that a failure to connect or to `use` it is
    raised to the caller (the session closed), then `keep_session` in a task of its own."""
    first = await Session.open(dsn)
    try:
        await use(first)
    except BaseException:
        await first.close()
        raise
    kept = keep_session(
        dsn, use, name=name, first=first, keepalive=keepalive, backoff=backoff, on_close=on_close
    )
    return asyncio.create_task(kept, name=task_name or name)


async def stop_gently(
    task: asyncio.Task[None] | None, stopping: asyncio.Event, *, grace: float = 5.0
) -> None:
    """Set `stopping`, give `task` `grace` seconds to end by itself (finishing what it is in the
    middle of), then cancel it; return once it has ended."""
    if task is None:
        return
    stopping.set()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=grace)
    except TimeoutError:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = [
    "FORGOTTEN_CHANNEL",
    "NOTIFY_CHANNEL",
    "Backoff",
    "Leadership",
    "LockKey",
    "LogWatch",
    "Session",
    "SessionLost",
    "close_quietly",
    "keep_session",
    "sleep_unless",
    "start_kept_session",
    "stop_gently",
]
