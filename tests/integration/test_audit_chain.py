"""The hash chains on a real PostgreSQL: what migration 0010 computes for events stored before it
is what the appender computes for new ones, and verify names every kind of tampering."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from service.store import chain
from service.store.appender import Appender, AppendRequest, Metadata, NewEvent
from service.store.audit import PAGE, ChainVerifier, Verification, audit_lines
from service.store.migrate import migrate
from tests.integration.test_migrations import migrate_up_to

STREAMS = [uuid.uuid4() for _ in range(3)]


def _event(stream_id: uuid.UUID, version: int, n: int) -> NewEvent:
    # Unicode, an empty payload object, times with and without microseconds.
    return NewEvent(
        stream_id=stream_id,
        stream_version=version,
        event_type="points_earned",
        topic="domain.member:Member.PointsEarned",
        data=f'{{"n":{n},"name":"sealed:v1:é中{n}"}}'.encode(),
        occurred_at=datetime(2026, 11, 1, 12, 0, tzinfo=UTC) + timedelta(microseconds=n * 1001),
    )


async def _append_story(appender: Appender, start: dict[uuid.UUID, int]) -> None:
    """Interleaved events of three streams, some with every metadata field, some with none."""
    versions = dict(start)
    for n in range(12):
        stream_id = STREAMS[n % 3]
        versions[stream_id] += 1
        metadata = (
            Metadata(channel="pos-1", api_key_id=str(uuid.uuid4()), correlation_id="req-ü", causation_id="c")
            if n % 2
            else Metadata()
        )
        await appender.append(
            AppendRequest(
                events=[_event(stream_id, versions[stream_id], n)],
                expected={stream_id: versions[stream_id] - 1},
                metadata=metadata,
            )
        )


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    await migrate(conn)
    await conn.close()
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield created
    await created.close()


@pytest_asyncio.fixture
async def log(pool: asyncpg.Pool) -> asyncpg.Pool:
    """Twelve events of three streams, appended by the appender."""
    appender = Appender(pool)
    await appender.start()
    try:
        await _append_story(appender, dict.fromkeys(STREAMS, 0))
    finally:
        await appender.stop()
    return pool


async def verify(pool: asyncpg.Pool, after: int = 0, page: int = PAGE) -> Verification:
    async with pool.acquire() as conn:
        verifier = await ChainVerifier.resumed(conn, after)
        assert isinstance(verifier, ChainVerifier)
        return await verifier.run(conn, page=page)


async def test_migration_0010_computes_the_hashes_the_appender_computes(database_url: str) -> None:
    # Given events stored before 0010 (no hashes), written as the appender of then wrote them.
    conn = await asyncpg.connect(database_url)
    try:
        await migrate_up_to(conn, 9)
        rows = []
        for n in range(12):
            stream_id = STREAMS[n % 3]
            e = _event(stream_id, n // 3 + 1, n)
            rows.append(
                (n + 1, e.event_id, stream_id, e.stream_version, e.event_type, e.topic, e.data,
                 "pos-1" if n % 2 else None, None if n % 3 else "key-é", None, "cause" if n % 5 else None,
                 e.occurred_at)
            )  # fmt: skip
        await conn.executemany(
            "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, topic, data,"
            " channel, api_key_id, correlation_id, causation_id, occurred_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            rows,
        )

        # When 0010 runs.
        await migrate(conn)

        # Then every event's hashes are the ones chain.py computes over the stored row (and the
        # bytes hashed are those PostgreSQL computes with CONTENT_SQL, which verify reads).
        stored = await conn.fetch(f"SELECT {chain.CONTENT_SQL} AS content, * FROM events ORDER BY position")
        assert all(row["content"] == chain.row_content(row) for row in stored)
        heads: dict[uuid.UUID, bytes] = {}
        previous = chain.GENESIS
        for row in stored:
            event_hash = chain.stream_hash(heads.get(row["stream_id"], chain.GENESIS), chain.row_content(row))
            previous = chain.global_hash(previous, row["position"], event_hash)
            heads[row["stream_id"]] = event_hash
            assert (row["hash"], row["global_hash"]) == (event_hash, previous), row["position"]
    finally:
        await conn.close()

    # And the appender continues those chains: the whole log verifies, old and new events.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        appender = Appender(pool)
        await appender.start()
        try:
            await _append_story(appender, {s: 4 for s in STREAMS})
        finally:
            await appender.stop()
        result = await verify(pool)
        assert result.ok, result.broken
        assert result.events_checked == 24
    finally:
        await pool.close()


async def test_an_untouched_log_verifies_whole_and_from_any_position(log: asyncpg.Pool) -> None:
    whole = await verify(log)
    assert whole.ok, whole.broken
    assert (whole.events_checked, whole.position) == (12, 12)
    resumed = await verify(log, after=7)
    assert resumed.ok, resumed.broken
    assert resumed.events_checked == 5
    assert resumed.global_hash == whole.global_hash


async def _row(pool: asyncpg.Pool, position: int) -> asyncpg.Record:
    row: asyncpg.Record = await pool.fetchrow("SELECT * FROM events WHERE position = $1", position)
    return row


@pytest.mark.parametrize(
    "change",
    [
        "data = overlay(data placing '7' from 6 for 1)",  # one byte of the payload
        "channel = 'pos-2'",
        "occurred_at = occurred_at + interval '1 microsecond'",
        "event_type = 'points_redeemed'",
        "hash = sha256(hash)",
    ],
)
async def test_changing_one_stored_event_names_that_event(log: asyncpg.Pool, change: str) -> None:
    row = await _row(log, 5)
    await log.execute(f"UPDATE events SET {change} WHERE position = 5")

    result = await verify(log)

    assert not result.ok
    broken = result.broken
    assert broken is not None
    assert (broken.position, broken.stream, broken.version) == (5, row["stream_id"], row["stream_version"])
    assert broken.reason == "content_changed"
    assert result.events_checked == 4


async def test_deleting_an_event_is_named(log: asyncpg.Pool) -> None:
    await log.execute("DELETE FROM events WHERE position = 6")
    broken = (await verify(log)).broken
    assert broken is not None
    assert (broken.position, broken.reason) == (6, "position_gap")


async def test_a_hole_wider_than_a_page_is_named_and_exported_around(log: asyncpg.Pool) -> None:
    # Pages are read as position ranges; a hole wider than a page must not end the log early.
    assert (await verify(log, page=3)).ok
    await log.execute("DELETE FROM events WHERE position BETWEEN 4 AND 8")

    broken = (await verify(log, page=3)).broken
    assert broken is not None
    assert (broken.position, broken.reason) == (4, "position_gap")
    assert "the next is 9" in broken.detail

    exported = b"".join([chunk async for chunk in audit_lines(log, after=0, page=3)])
    positions = [msgspec.json.decode(line)["position"] for line in exported.splitlines()]
    assert positions == [1, 2, 3, 9, 10, 11, 12]
    limited = b"".join([chunk async for chunk in audit_lines(log, after=2, limit=3, page=2)])
    assert [msgspec.json.decode(line)["position"] for line in limited.splitlines()] == [3, 9, 10]


async def test_deleting_an_event_and_closing_the_gap_is_named(log: asyncpg.Pool) -> None:
    await log.execute("DELETE FROM events WHERE position = 6")
    await log.execute("UPDATE events SET position = -position WHERE position > 6")
    await log.execute("UPDATE events SET position = -position - 1 WHERE position < 0")

    broken = (await verify(log)).broken
    assert broken is not None

    # Position 6 now holds the event that was 7: the global chain no longer follows.
    assert (broken.position, broken.reason) == (6, "global_chain")


async def test_inserting_an_event_is_named(log: asyncpg.Pool) -> None:
    # A copy of event 4 made into its stream's next event at the end, its hashes copied too.
    source = await _row(log, 4)
    version = await log.fetchval(
        "SELECT max(stream_version) FROM events WHERE stream_id = $1", source["stream_id"]
    )
    await log.execute(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, topic, data,"
        " channel, api_key_id, correlation_id, causation_id, occurred_at, recorded_at, hash, global_hash)"
        " SELECT 13, $2, stream_id, $3, event_type, topic, data, channel, api_key_id, correlation_id,"
        " causation_id, occurred_at, recorded_at, hash, global_hash FROM events WHERE position = $1",
        4,
        uuid.uuid4(),
        version + 1,
    )
    broken = (await verify(log)).broken
    assert broken is not None
    assert (broken.position, broken.stream, broken.version, broken.reason) == (
        13, source["stream_id"], version + 1, "content_changed",
    )  # fmt: skip


async def test_inserting_an_event_in_the_middle_is_named(log: asyncpg.Pool) -> None:
    # A new stream's first event, its stream hash computed as the appender would, slid in at 6.
    await log.execute("UPDATE events SET position = -position WHERE position >= 6")
    await log.execute("UPDATE events SET position = -position + 1 WHERE position < 0")
    forged = _event(uuid.uuid4(), 1, 99)
    at = datetime.now(UTC)
    content = chain.content(
        forged.event_id, forged.stream_id, 1, forged.event_type, forged.topic, forged.data,
        None, None, None, None, forged.occurred_at, at,
    )  # fmt: skip
    event_hash = chain.stream_hash(chain.GENESIS, content)
    before = (await _row(log, 5))["global_hash"]
    await log.execute(
        "INSERT INTO events (position, event_id, stream_id, stream_version, event_type, topic, data,"
        " occurred_at, recorded_at, hash, global_hash) VALUES (6, $1, $2, 1, $3, $4, $5, $6, $7, $8, $9)",
        forged.event_id, forged.stream_id, forged.event_type, forged.topic, forged.data,
        forged.occurred_at, at, event_hash, chain.global_hash(before, 6, event_hash),
    )  # fmt: skip

    broken = (await verify(log)).broken
    assert broken is not None

    # The forged event chains; the one after it, moved from 6 to 7, does not.
    assert (broken.position, broken.reason) == (7, "global_chain")


async def test_swapping_two_positions_is_named(log: asyncpg.Pool) -> None:
    # Events 5 and 6 belong to different streams: each stream's chain still holds.
    a, b = await _row(log, 5), await _row(log, 6)
    assert a["stream_id"] != b["stream_id"]
    await log.execute("UPDATE events SET position = -position WHERE position IN (5, 6)")
    await log.execute(
        "UPDATE events SET position = CASE position WHEN -5 THEN 6 ELSE 5 END WHERE position < 0"
    )

    broken = (await verify(log)).broken
    assert broken is not None

    assert (broken.position, broken.stream, broken.reason) == (5, b["stream_id"], "global_chain")


async def test_swapping_two_events_of_one_stream_is_named(log: asyncpg.Pool) -> None:
    # Positions 1 and 4 are versions 1 and 2 of the first stream.
    first = await _row(log, 1)
    await log.execute("UPDATE events SET position = -position WHERE position IN (1, 4)")
    await log.execute(
        "UPDATE events SET position = CASE position WHEN -1 THEN 4 ELSE 1 END WHERE position < 0"
    )

    broken = (await verify(log)).broken
    assert broken is not None

    assert (broken.position, broken.stream, broken.version, broken.reason) == (
        1, first["stream_id"], 2, "stream_version",
    )  # fmt: skip
