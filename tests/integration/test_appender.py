"""The appender on a real PostgreSQL: positions, optimistic concurrency, claims, idempotency."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest_asyncio

from service.store.appender import (
    Appender,
    AppendRequest,
    Committed,
    IdempotencyKeyReused,
    IdempotencyRecord,
    IdentityClaim,
    IdentityClaimed,
    NewEvent,
    OrderClaimed,
    Replayed,
    StreamConflict,
)
from service.store.migrate import migrate


def event(stream_id: uuid.UUID, version: int) -> NewEvent:
    return NewEvent(
        stream_id=stream_id,
        stream_version=version,
        event_type="thing_happened",
        topic="tests:Thing",
        data=b"{}",
        occurred_at=datetime.now(UTC),
    )


@pytest_asyncio.fixture
async def pools(database_url: str) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two pools: two service instances on one database."""
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    created = [await asyncpg.create_pool(database_url, min_size=1, max_size=4) for _ in range(2)]
    yield created
    for pool in created:
        await pool.close()


@pytest_asyncio.fixture
async def appenders(pools: list[asyncpg.Pool]) -> AsyncIterator[list[Appender]]:
    started = [Appender(pool) for pool in pools]
    for appender in started:
        await appender.start()
    yield started
    for appender in started:
        await appender.stop()


async def test_two_instances_appending_at_once_get_gapless_positions_in_commit_order(
    pools: list[asyncpg.Pool], appenders: list[Appender]
) -> None:
    streams = [uuid.uuid4() for _ in range(20)]
    versions = dict.fromkeys(streams, 0)
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        # A follower of the log that only ever asks for "after the last position I saw".
        last = 0
        while True:
            finished = done.is_set()
            rows = await pools[0].fetch(
                "SELECT position FROM events WHERE position > $1 ORDER BY position", last
            )
            for row in rows:
                seen.append(row["position"])
                last = row["position"]
            if finished:
                return
            await asyncio.sleep(0)

    async def writer(appender: Appender, stream_id: uuid.UUID) -> None:
        for _ in range(25):
            versions[stream_id] += 1
            await appender.append(
                AppendRequest(
                    events=[event(stream_id, versions[stream_id])],
                    expected={stream_id: versions[stream_id] - 1},
                )
            )

    follower = asyncio.create_task(reader())
    await asyncio.gather(*(writer(appenders[i % 2], s) for i, s in enumerate(streams)))
    done.set()
    await follower

    total = 20 * 25
    assert seen == list(range(1, total + 1))  # the follower missed nothing and saw no gap filled later
    rows = await pools[0].fetch("SELECT stream_id, stream_version FROM events ORDER BY position")
    by_stream: dict[uuid.UUID, list[int]] = {}
    for row in rows:
        by_stream.setdefault(row["stream_id"], []).append(row["stream_version"])
    assert all(v == list(range(1, 26)) for v in by_stream.values())


async def test_racing_appends_at_the_same_version_one_wins_the_rest_conflict(
    appenders: list[Appender],
) -> None:
    stream_id = uuid.uuid4()
    await appenders[0].append(AppendRequest(events=[event(stream_id, 1)], expected={stream_id: 0}))

    results = await asyncio.gather(
        *(
            appenders[i % 2].append(AppendRequest(events=[event(stream_id, 2)], expected={stream_id: 1}))
            for i in range(10)
        ),
        return_exceptions=True,
    )

    assert sum(isinstance(r, Committed) for r in results) == 1
    conflicts = [r for r in results if isinstance(r, StreamConflict)]
    assert len(conflicts) == 9
    assert all(c.actual == 2 and c.expected == 1 for c in conflicts)


async def test_a_refused_request_does_not_sink_the_others_in_its_batch(appenders: list[Appender]) -> None:
    appender = appenders[0]
    taken = uuid.uuid4()
    await appender.append(AppendRequest(events=[event(taken, 1)], expected={taken: 0}))
    requests = [AppendRequest(events=[event(uuid.uuid4(), 1)], expected={}) for _ in range(30)]
    requests.insert(15, AppendRequest(events=[event(taken, 1)], expected={taken: 0}))

    results = await asyncio.gather(*(appender.append(r) for r in requests), return_exceptions=True)

    assert isinstance(results[15], StreamConflict)
    assert all(isinstance(r, Committed) for i, r in enumerate(results) if i != 15)


async def test_a_request_failing_in_the_database_does_not_sink_its_batch(appenders: list[Appender]) -> None:
    # Without an expected version only the database's unique constraint catches the clash.
    appender = appenders[0]
    taken = uuid.uuid4()
    await appender.append(AppendRequest(events=[event(taken, 1)], expected={}))
    requests = [AppendRequest(events=[event(uuid.uuid4(), 1)], expected={}) for _ in range(10)]
    requests.insert(5, AppendRequest(events=[event(taken, 1)], expected={}))

    results = await asyncio.gather(*(appender.append(r) for r in requests), return_exceptions=True)

    assert isinstance(results[5], asyncpg.UniqueViolationError)
    assert sum(isinstance(r, Committed) for r in results) == 10


async def test_an_order_is_claimed_once_even_within_one_batch(appenders: list[Appender]) -> None:
    member_a, member_b = uuid.uuid4(), uuid.uuid4()
    results = await asyncio.gather(
        appenders[0].append(
            AppendRequest(events=[event(member_a, 1)], expected={}, order_claims=[("O-1", member_a)])
        ),
        appenders[0].append(
            AppendRequest(events=[event(member_b, 1)], expected={}, order_claims=[("O-1", member_b)])
        ),
        return_exceptions=True,
    )
    later = await asyncio.gather(
        appenders[1].append(
            AppendRequest(events=[event(uuid.uuid4(), 1)], expected={}, order_claims=[("O-1", uuid.uuid4())])
        ),
        return_exceptions=True,
    )

    assert isinstance(results[0], Committed)
    assert isinstance(results[1], OrderClaimed)
    assert results[1].member_id == member_a
    assert isinstance(later[0], OrderClaimed)


async def test_an_identity_has_one_owner_across_instances(appenders: list[Appender]) -> None:
    value_hash = random.randbytes(32)
    members = [uuid.uuid4() for _ in range(20)]
    results = await asyncio.gather(
        *(
            appenders[i % 2].append(
                AppendRequest(
                    events=[event(m, 1)],
                    expected={m: 0},
                    identity_claims=[IdentityClaim("phone", value_hash, m)],
                )
            )
            for i, m in enumerate(members)
        ),
        return_exceptions=True,
    )
    winners = [m for m, r in zip(members, results, strict=True) if isinstance(r, Committed)]
    assert len(winners) == 1
    assert all(
        isinstance(r, IdentityClaimed) and r.member_id == winners[0]
        for r in results
        if not isinstance(r, Committed)
    )


async def test_idempotency_key_replays_or_refuses_even_within_one_batch(appenders: list[Appender]) -> None:
    def request(body_hash: bytes) -> AppendRequest:
        stream_id = uuid.uuid4()
        return AppendRequest(
            events=[event(stream_id, 1)],
            expected={stream_id: 0},
            idempotency=IdempotencyRecord("pos", "key-1", body_hash, 201, b"answer-" + body_hash),
        )

    first, same, other = await asyncio.gather(
        appenders[0].append(request(b"A")),
        appenders[0].append(request(b"A")),
        appenders[0].append(request(b"B")),
        return_exceptions=True,
    )
    again = await appenders[1].append(request(b"A"))

    assert isinstance(first, Committed)
    # The first answer, with the position of the first command's event (even within its batch).
    assert isinstance(same, Replayed)
    assert (same.response, same.position) == (b"answer-A", first.last_position)
    assert isinstance(other, IdempotencyKeyReused)
    assert isinstance(again, Replayed)
    assert (again.response, again.position) == (b"answer-A", first.last_position)


async def test_a_batch_waiting_for_the_lock_sees_what_the_batch_before_it_committed(
    pools: list[asyncpg.Pool],
) -> None:
    # Small batches, two transactions in flight: the claims and the stream versions of one
    # batch must be checked against the batch that committed just before it.
    appender = Appender(pools[0], max_batch=3, in_flight=2)
    await appender.start()
    try:
        stream = uuid.uuid4()
        claims = [
            AppendRequest(
                events=[event(uuid.uuid4(), 1)], expected={}, order_claims=[("O-race", uuid.uuid4())]
            )
            for _ in range(30)
        ]
        versions = [AppendRequest(events=[event(stream, 1)], expected={stream: 0}) for _ in range(30)]
        results = await asyncio.gather(
            *(appender.append(r) for pair in zip(claims, versions, strict=True) for r in pair),
            return_exceptions=True,
        )
    finally:
        await appender.stop()

    assert appender.batches >= 10  # many batches did take part
    committed = [r for r in results if isinstance(r, Committed)]
    assert len(committed) == 2  # one claim of the order, one first event of the stream
    assert sum(isinstance(r, OrderClaimed) for r in results) == 29
    assert sum(isinstance(r, StreamConflict) for r in results) == 29
    async with pools[0].acquire() as conn:
        positions = [r["position"] for r in await conn.fetch("SELECT position FROM events ORDER BY position")]
    assert positions == list(range(1, len(positions) + 1))
