"""Every instance drops what it cached of a member as soon as the member is forgotten.

A forget commits on one instance; others may hold the member's unwrapped data key and its
aggregate in memory. The appender NOTIFYs `FORGOTTEN_CHANNEL` with each forgotten member's id
at the commit (never before); every instance LISTENs on a dedicated session and drops both. A
notification sent while an instance was not listening is lost to it, so its caches are cleared
whenever its session ends or starts again. Commands need none of this to be refused (the
append's expected version catches a stale copy), and reads that show personal data check the
store themselves (`Repository.current_member`, `EventStore.fresh_key`): this is what keeps the
secrets out of memory, not what keeps them out of answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

from .event_store import EventStore
from .follower import FORGOTTEN_CHANNEL, Session, start_kept_session
from .repository import Repository

log = logging.getLogger(__name__)


class ForgottenEvictions:
    """Listens for forgotten members and evicts their keys and aggregates from this instance."""

    def __init__(self, dsn: str, store: EventStore, repository: Repository) -> None:
        self._dsn = dsn
        self._store = store
        self._repository = repository
        self._task: asyncio.Task[None] | None = None
        self.evicted = 0

    async def start(self) -> None:
        self._task = await start_kept_session(
            self._dsn, self._attach, name="forgotten-evictions", on_close=self._clear
        )

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _attach(self, session: Session) -> None:
        await session.listen(FORGOTTEN_CHANNEL, self._notified)
        self._clear()  # whatever was forgotten while nobody here was listening

    def _notified(self, payload: str) -> None:
        try:
            member_id = UUID(payload)
        except ValueError:
            log.warning("a forgotten-member notification that is not a member id was ignored")
            return
        self._store.drop_keys([member_id])
        self._repository.forget(member_id)
        self.evicted += 1

    def _clear(self) -> None:
        self._store.drop_all_keys()
        self._repository.forget_all()
