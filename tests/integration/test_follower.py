"""The follower primitive (service/store/follower.py) on a real PostgreSQL: one leader among
contenders, the lead handed over when the leader's connection dies, wake-ups by NOTIFY and,
without one, by the poll."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from service.store.follower import (
    NOTIFY_CHANNEL,
    Backoff,
    Leadership,
    LogWatch,
    Session,
    keep_session,
)
from tests.waiting import until


@dataclass
class Contender:
    """A Leadership run in the background, with what it did."""

    leadership: Leadership
    sessions: list[Session] = field(default_factory=list)  # those it led on, in order
    standbys: int = 0
    task: asyncio.Task[None] | None = None

    async def lead(self, session: Session) -> None:
        self.sessions.append(session)
        # Lead until the session dies, as a follower does: its next use of it raises.
        await session.lost.wait()
        session.check()

    async def standby(self, _session: Session) -> None:
        self.standbys += 1


@contextlib.asynccontextmanager
async def contending(database_url: str, count: int) -> AsyncIterator[list[Contender]]:
    key = secrets.randbits(62)  # a lock of this test's own
    contenders = [
        Contender(
            Leadership(
                database_url, key, name=f"contender-{i}", standby_interval=0.05, backoff=Backoff(0.05, 0.2)
            )
        )
        for i in range(count)
    ]
    for c in contenders:
        c.task = asyncio.create_task(c.leadership.run(c.lead, c.standby))
    try:
        yield contenders
    finally:
        for c in contenders:
            c.leadership.stopping.set()
            assert c.task is not None
            c.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await c.task


def leaders(contenders: list[Contender]) -> list[Contender]:
    return [c for c in contenders if c.leadership.leading]


async def terminate(database_url: str, session: Session) -> None:
    """Kill the session's backend from outside, as a crash or a network cut would end it."""
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", session.conn.get_server_pid())
    finally:
        await conn.close()


async def test_of_two_contenders_exactly_one_leads_and_the_other_stands_by(database_url: str) -> None:
    async with contending(database_url, 2) as contenders:
        await until(lambda: leaders(contenders), within=10, what="a leader")
        (leader,) = leaders(contenders)
        standby = next(c for c in contenders if c is not leader)
        # The standby keeps trying (and doing its standby work) and never leads meanwhile.
        seen = standby.standbys
        await until(lambda: standby.standbys >= seen + 5, within=10, what="the standby to retry")
        assert leaders(contenders) == [leader]
        assert len(leader.sessions) == 1
        assert standby.sessions == []


async def test_killing_the_leaders_connection_hands_the_lead_over(database_url: str) -> None:
    async with contending(database_url, 2) as contenders:
        await until(lambda: leaders(contenders), within=10, what="a leader")
        (first,) = leaders(contenders)
        second = next(c for c in contenders if c is not first)

        await terminate(database_url, first.sessions[-1])

        await until(lambda: second.leadership.leading, within=10, what="the standby to take the lead")
        assert not first.leadership.leading  # stepped down when its session (and lock) died
        # It comes back as a standby on a new session, and does not take the lead back.
        seen = first.standbys
        await until(lambda: first.standbys > seen, within=10, what="the old leader to stand by")
        assert leaders(contenders) == [second]
        assert len(first.sessions) == 1


async def test_a_contender_that_may_not_lead_never_does(database_url: str) -> None:
    key = secrets.randbits(62)
    watcher = Contender(Leadership(database_url, key, name="watcher", standby_interval=0.05, may_lead=False))
    task = asyncio.create_task(watcher.leadership.run(watcher.lead, watcher.standby))
    try:
        await until(lambda: watcher.standbys >= 3, within=10, what="the watcher's standby work")
        assert not watcher.leadership.leading
        # The lock is free all along: it was never even taken.
        conn = await asyncpg.connect(database_url)
        try:
            assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", key)
        finally:
            await conn.close()
    finally:
        watcher.leadership.stopping.set()
        await asyncio.wait_for(task, timeout=10)  # stopping ends it
    assert watcher.sessions == []


async def test_a_notify_wakes_a_watcher(database_url: str) -> None:
    watch = LogWatch(poll_interval=60.0)  # the poll cannot be what wakes it
    session = await Session.open(database_url)
    try:
        await watch.attach(session)
        watch.clear()
        waiting = asyncio.create_task(watch.wait())
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("SELECT pg_notify($1, '42')", NOTIFY_CHANNEL)
        finally:
            await conn.close()
        assert await asyncio.wait_for(waiting, timeout=10) is True
        assert watch.head == 42  # the position the commit announced
    finally:
        await session.close()


async def test_without_a_notify_the_poll_still_wakes_a_follower(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TABLE log (position bigint)")
        watch = LogWatch(poll_interval=0.1)  # attached to nothing: no NOTIFY can arrive
        reads = 0

        async def follow() -> int:
            nonlocal reads
            reader = await asyncpg.connect(database_url)
            try:
                while True:
                    watch.clear()
                    found = await reader.fetchval("SELECT max(position) FROM log")
                    reads += 1
                    if found is not None:
                        return int(found)
                    assert await watch.wait() is False  # woken by the poll, not a notification
            finally:
                await reader.close()

        follower = asyncio.create_task(follow())
        await until(lambda: reads >= 2, within=10, what="the follower to poll the empty log")
        await conn.execute("INSERT INTO log VALUES (7)")  # committed, and never notified
        assert await asyncio.wait_for(follower, timeout=10) == 7
    finally:
        await conn.close()


async def test_a_kept_session_comes_back_after_its_connection_dies_and_its_locks_go_with_it(
    database_url: str,
) -> None:
    key = secrets.randbits(62)
    opened: list[Session] = []
    closed = 0

    async def use(session: Session) -> None:
        assert await session.try_lock(key)
        opened.append(session)

    def on_close() -> None:
        nonlocal closed
        closed += 1

    first = await Session.open(database_url)
    await use(first)
    kept = asyncio.create_task(
        keep_session(
            database_url,
            use,
            name="kept",
            first=first,
            keepalive=0.2,
            backoff=Backoff(0.05),
            on_close=on_close,
        )
    )
    try:
        await terminate(database_url, first)
        await until(lambda: len(opened) == 2, within=10, what="a new session")
        assert closed == 1
        assert opened[1] is not first
        # The new session took the lock again: the dead one's lock had ended with it.
        other = await Session.open(database_url)
        try:
            assert not await other.try_lock(key)
        finally:
            await other.close()
    finally:
        kept.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await kept
    assert closed == 2


@pytest.mark.parametrize("failures", [1, 3, 10])
def test_backoff_doubles_to_its_maximum_and_starts_again_after_a_success(failures: int) -> None:
    backoff = Backoff(0.1, 0.5)
    delays = [backoff.next() for _ in range(failures)]
    assert delays == [min(0.1 * 2**i, 0.5) for i in range(failures)]
    backoff.reset()
    assert backoff.next() == 0.1
