"""PostgreSQL's cost of the group commit alone: the Appender of a tree, driven straight.

    PYTHONPATH=TREE .venv/bin/python scripts/bench/append_cost.py DATABASE_URL [--batches 200]

Makes a fresh database beside DATABASE_URL's (its name + `_append_cost`), migrates it with the
tree's migrations, then appends earn-shaped requests through the tree's `Appender`: one event of
772 bytes (a stored points_earned's size), an idempotency record with a 503-byte sealed answer
and an order claim each, on 1,000 members, the expected version of each member's stream given.
Two shapes: `batch` (append_many of 100 requests for distinct members, as POST /v1/batch) and
`single` (64 tasks appending one request at a time, which the appender groups as it will).
Prints per request: the CPU of the PostgreSQL backends serving the pool (from /proc, so only
these statements, not the followers or anyone else), their pg_stat_statements time, blocks,
WAL bytes, and the group commits' sizes. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from service.store.appender import Appender, AppendRequest, IdempotencyRecord, Metadata, NewEvent
from service.store.migrate import migrate

TICK = os.sysconf("SC_CLK_TCK")


def cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def request(member: uuid.UUID, version: int, rng: random.Random) -> AppendRequest:
    return AppendRequest(
        events=[
            NewEvent(
                stream_id=member,
                stream_version=version + 1,
                event_type="points_earned",
                topic="domain.member:Member.PointsEarned",
                data=rng.randbytes(772),
                occurred_at=datetime.now(UTC),
            )
        ],
        expected={member: version},
        metadata=Metadata(channel="pos", api_key_id=str(uuid.uuid4()), correlation_id=str(uuid.uuid4())),
        idempotency=IdempotencyRecord(
            "pos", uuid.uuid4().hex[:21], rng.randbytes(32), 201, rng.randbytes(503)
        ),
        order_claims=[(f"order-{uuid.uuid4().hex[:12]}", member)],
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--batches", type=int, default=200, help="batches of 100 (batch shape)")
    parser.add_argument("--singles", type=int, default=10_000, help="requests (single shape)")
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--sql", default="", help="run after migrating (to try a schema change)")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    name = parts.path.lstrip("/") + "_append_cost"
    admin = await asyncpg.connect(args.url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(parts._replace(path="/" + name))
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        if args.sql:
            await conn.execute(args.sql)
        await conn.close()
        pids: list[int] = []

        async def note_pid(c: asyncpg.Connection) -> None:
            pids.append(await c.fetchval("SELECT pg_backend_pid()"))

        pool = await asyncpg.create_pool(url, min_size=4, max_size=4, init=note_pid)
        appender = Appender(pool)
        await appender.start()
        rng = random.Random(7)  # noqa: S311 - payload bytes, not secrets
        members = [uuid.uuid4() for _ in range(args.members)]
        versions = dict.fromkeys(members, 0)

        async def batch_round() -> None:
            chosen = rng.sample(members, 100)
            outcomes = await appender.append_many([request(m, versions[m], rng) for m in chosen])
            for m, outcome in zip(chosen, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    raise outcome
                versions[m] += 1

        async def single_worker(n: int, mine: list[uuid.UUID]) -> None:
            for i in range(n):
                m = mine[i % len(mine)]
                await appender.append(request(m, versions[m], rng))
                versions[m] += 1

        async def singles(n: int) -> None:
            share = [members[i::64] for i in range(64)]
            await asyncio.gather(*(single_worker(n // 64, share[i]) for i in range(64)))

        for shape, warm, run, count in (
            ("batch", lambda: batch_round(), lambda: batch_round(), args.batches),
            ("single", lambda: singles(640), lambda: singles(args.singles), 1),
        ):
            for _ in range(5 if shape == "batch" else 1):  # warm-up: every member has events
                await warm()
            stats = await asyncpg.connect(url)
            await stats.execute("SELECT pg_stat_statements_reset()")
            b0, a0, c0, t0 = appender.batches, appender.appended, cpu(pids), time.process_time()
            for _ in range(count):
                await run()
            c1, t1 = cpu(pids), time.process_time()
            n, batches = appender.appended - a0, appender.batches - b0
            rows = await stats.fetch(
                "SELECT calls, total_exec_time, shared_blks_hit + shared_blks_read AS blks,"
                " shared_blks_dirtied AS dirtied, wal_bytes, wal_fpi,"
                " regexp_replace(query, '\\s+', ' ', 'g') AS q FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC"
            )
            await stats.close()
            print(f"\n## {shape}: {n} requests in {batches} group commits ({n / batches:.1f} a commit)")
            print(
                f"PostgreSQL backends' CPU: {(c1 - c0) / n * 1e6:.1f} us a request;"
                f" this process: {(t1 - t0) / n * 1e6:.1f} us"
            )
            exec_us = sum(r["total_exec_time"] for r in rows) / n * 1000
            blocks, dirtied = sum(r["blks"] for r in rows) / n, sum(r["dirtied"] for r in rows) / n
            wal = sum(r["wal_bytes"] for r in rows) / n
            print(
                f"statements: {exec_us:.1f} us, {blocks:.1f} blocks, {dirtied:.2f} dirtied,"
                f" {wal:.0f} WAL bytes a request"
            )
            for r in rows[:8]:
                print(
                    f"  {r['total_exec_time'] / n * 1000:7.1f} us  {r['calls'] / n:6.3f} calls"
                    f"  {r['blks'] / n:6.1f} blks  {r['wal_bytes'] / n:6.0f} WAL  {r['q'][:100]}"
                )
        await appender.stop()
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
