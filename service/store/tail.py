"""The tail of the log, for any number of readers in one process (the live event stream).

A reader keeps its own position and reads pages of the log after it with the one log reader
(log.py); between pages it waits here until the log may have grown. One dedicated session per
process LISTENs for the appender's NOTIFY (follower.py's `keep_session`: reconnected with
back-off, pinged), however many readers wait, so a console left open costs no connection of
its own; a poll every `poll_interval` covers a lost notification or a lost session.

No lost wake-up: a reader takes `mark()` *before* reading the log, then `wait(mark)`. The mark
is an event replaced at each notification (the old one set), so a commit notified between the
read and the wait has already set the reader's mark.
"""

from __future__ import annotations

import asyncio
import contextlib

from .follower import NOTIFY_CHANNEL, Backoff, Session, start_kept_session

POLL_INTERVAL = 1.0
KEEPALIVE = 5.0


class LogTail:
    """Wakes the readers of the log's tail when it may have grown; started on first use."""

    def __init__(self, dsn: str, *, poll_interval: float = POLL_INTERVAL) -> None:
        self._dsn = dsn
        self.poll_interval = poll_interval
        self._grown = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """LISTEN (once per process; a failure to connect is raised here, to the first reader)."""
        async with self._starting:
            if self._listener is not None:
                return
            self._listener = await start_kept_session(
                self._dsn, self._attach, name="log-tail", keepalive=KEEPALIVE, backoff=Backoff(0.1, 5.0)
            )

    async def stop(self) -> None:
        """Close the session; readers still waiting wake at once."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self._wake()

    def mark(self) -> asyncio.Event:
        """Take before reading the log; set once anything may have been committed since."""
        return self._grown

    async def wait(self, mark: asyncio.Event, timeout: float | None = None) -> bool:  # noqa: ASYNC109 -- a poll
        """Until `mark` is set (True) or `timeout` (at most `poll_interval`) has passed (False)."""
        limit = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
        try:
            await asyncio.wait_for(mark.wait(), max(0.0, limit))
        except TimeoutError:
            return False
        return True

    async def _attach(self, session: Session) -> None:
        await session.listen(NOTIFY_CHANNEL, lambda _payload: self._wake())
        self._wake()  # anything committed before LISTEN

    def _wake(self) -> None:
        grown, self._grown = self._grown, asyncio.Event()
        grown.set()
