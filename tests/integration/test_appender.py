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
    _READ_PLAN,
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
from service.store.audit import ChainVerifier
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


async def _verified(pool: asyncpg.Pool) -> int:
    """The hash chains of the whole log verify; returns how many events were checked."""
    async with pool.acquire() as conn:
        verifier = await ChainVerifier.resumed(conn, 0)
        assert isinstance(verifier, ChainVerifier)
        result = await verifier.run(conn)
    assert result.ok, result.broken
    return result.events_checked


async def test_a_stream_another_instance_appended_to_is_read_again(
    pools: list[asyncpg.Pool], appenders: list[Appender]
) -> None:
    # The first instance remembers the version and hash it left the stream at; the second moves
    # the stream on; the first must check against (and chain after) what the second wrote.
    first, second = appenders
    stream = uuid.uuid4()
    await first.append(AppendRequest(events=[event(stream, 1)], expected={stream: 0}))
    await second.append(AppendRequest(events=[event(stream, 2)], expected={stream: 1}))

    stale = await asyncio.gather(
        first.append(AppendRequest(events=[event(stream, 2)], expected={stream: 1})),
        return_exceptions=True,
    )
    moved = await first.append(AppendRequest(events=[event(stream, 3)], expected={stream: 2}))
    other = uuid.uuid4()  # and a stream only the first knows, while the second appends elsewhere
    await first.append(AppendRequest(events=[event(other, 1)], expected={other: 0}))
    await second.append(AppendRequest(events=[event(uuid.uuid4(), 1)], expected={}))
    again = await first.append(AppendRequest(events=[event(other, 2)], expected={other: 1}))

    assert isinstance(stale[0], StreamConflict)
    assert stale[0].actual == 2
    assert isinstance(moved, Committed)
    assert isinstance(again, Committed)
    assert await _verified(pools[0]) == 6


async def test_a_batch_whose_commit_fails_leaves_nothing_remembered(pools: list[asyncpg.Pool]) -> None:
    # A check deferred to COMMIT fails the whole batch after its writes (the appender has already
    # noted the streams it wrote): the retries one by one, and what follows, must see the
    # streams as the database holds them, not as the failed batch would have left them.
    async with pools[0].acquire() as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'poison at commit'; END $$;"
            " CREATE CONSTRAINT TRIGGER poison AFTER INSERT ON events DEFERRABLE INITIALLY DEFERRED"
            " FOR EACH ROW WHEN (NEW.event_type = 'poison') EXECUTE FUNCTION refuse_poison()"
        )
    appender = Appender(pools[0])
    await appender.start()
    try:
        streams = [uuid.uuid4() for _ in range(6)]
        for stream in streams:  # every stream known to the appender
            await appender.append(AppendRequest(events=[event(stream, 1)], expected={stream: 0}))
        requests = [AppendRequest(events=[event(s, 2)], expected={s: 1}) for s in streams]
        poison = NewEvent(
            stream_id=streams[2], stream_version=2, event_type="poison", topic="tests:Thing",
            data=b"{}", occurred_at=datetime.now(UTC),
        )  # fmt: skip
        requests[2] = AppendRequest(events=[poison], expected={streams[2]: 1})
        results = await appender.append_many(requests)
        after = await appender.append(AppendRequest(events=[event(streams[2], 2)], expected={streams[2]: 1}))
        last = await appender.append(AppendRequest(events=[event(streams[0], 3)], expected={streams[0]: 2}))
    finally:
        await appender.stop()

    assert isinstance(results[2], asyncpg.RaiseError)
    assert sum(isinstance(r, Committed) for r in results) == 5
    assert isinstance(after, Committed)
    assert isinstance(last, Committed)
    assert await _verified(pools[0]) == 6 + 5 + 2


async def test_a_key_past_its_24_hours_takes_a_new_answer(
    pools: list[asyncpg.Pool], appenders: list[Appender]
) -> None:
    # Not yet pruned, the old record is still there: a new command with its key is not a replay
    # of it, and its answer replaces it (in a batch beside a key never seen, written plainly).
    def request(key: str, body_hash: bytes) -> AppendRequest:
        stream_id = uuid.uuid4()
        return AppendRequest(
            events=[event(stream_id, 1)],
            expected={stream_id: 0},
            idempotency=IdempotencyRecord("pos", key, body_hash, 201, b"answer-" + body_hash),
        )

    old = await appenders[0].append(request("old-key", b"A"))
    async with pools[0].acquire() as conn:
        await conn.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    renewed, fresh, replayed = await appenders[0].append_many(
        [request("old-key", b"B"), request("new-key", b"C"), request("old-key", b"B")]
    )
    again = await appenders[1].append(request("old-key", b"B"))

    assert isinstance(old, Committed)
    assert isinstance(renewed, Committed)
    assert isinstance(fresh, Committed)
    assert isinstance(replayed, Replayed)
    assert (replayed.response, replayed.position) == (b"answer-B", renewed.last_position)
    assert isinstance(again, Replayed)
    assert (again.response, again.position) == (b"answer-B", renewed.last_position)
    async with pools[0].acquire() as conn:
        rows = await conn.fetch(
            "SELECT key, response, created_at > now() - interval '1 hour' AS new FROM idempotency_keys"
            " ORDER BY key"
        )
    assert [tuple(r) for r in rows] == [("new-key", b"answer-C", True), ("old-key", b"answer-B", True)]


async def test_the_checks_probe_by_key_whatever_plan_a_fresh_database_gets(pools: list[asyncpg.Pool]) -> None:
    # The checks are one prepared statement per connection; PostgreSQL may keep a generic plan
    # made while the tables were empty. Even that plan must look each key up, never scan a table
    # that will grow (a hash join over idempotency_keys did, run after run).
    async with pools[0].acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE checks(uuid[], text[], text[], text[], text[], bytea[]) AS {_READ_PLAN}")
        plan = "\n".join(
            r[0] for r in await conn.fetch("EXPLAIN EXECUTE checks('{}', '{}', '{}', '{}', '{}', '{}')")
        )
        await conn.execute("DEALLOCATE checks")
    assert "Seq Scan" not in plan, plan
    for index in ("idempotency_keys_pkey", "order_refs_pkey", "identities_pkey"):
        assert f"Index Scan using {index}" in plan, plan
