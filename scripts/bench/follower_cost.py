"""What the projections cost per event, catching up from zero on a fixed log.

    .venv/bin/python scripts/bench/follower_cost.py --data-dir /tmp/fs-data [--source loyalty] [--rounds 3]

The log is a database the service filled (e.g. `loyalty bench --mix batch=1 --batch-size 100`
against `scripts/bench/serve.sh`), with the service stopped (a template must have no
connections). Each round copies it (CREATE DATABASE ... TEMPLATE), empties the projections'
tables and checkpoints in the copy, and runs the projection runner of the code on PYTHONPATH
(as `loyalty follow` runs it: same batch size, heap frozen, same collector thresholds) until
every projection reaches the head of the log; then drops the copy. Printed per round: events,
this process's CPU seconds and µs per event, the CPU of the PostgreSQL server's processes (the
server should serve nothing else meanwhile), and a checksum of every read model's rows (the
same log must give the same rows, whatever the code). With pg_stat_statements loaded
(`shared_preload_libraries` in the server's postgresql.auto.conf, extension created in the
source database) the statements' calls and execution time per event follow.

To compare commits: run this script with PYTHONPATH set to a `git archive` of each commit (the
script itself only uses `ProjectionRunner`'s public face).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from projections.registry import PROJECTIONS
from projections.runner import ProjectionRunner
from service.store.codec import EventCodec
from service.store.event_store import EventStore
from service.store.keys import parse_master_key
from service.store.master_key import load_keyring

# The read models' tables (and what their projections keep beside them), emptied in the copy.
TABLES = (
    "balances",
    "members",
    "segments",
    "segment_counts",
    "journey_counts",
    "segment_transitions",
    "liability",
    "liability_sums",
    "channel_days",
    "channel_totals",
    "channel_returns",
    "campaign_members",
)
# Columns left out of the checksum: random, numbered or stamped at write time (not functions of the
# log), and how a member's liability items are numbered (by place before 2026-11-29, by lot id since).
UNSTABLE = {"transition_id", "sequence", "recorded_at", "item"}


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def _cpu_of(pids: list[int]) -> float:
    """CPU seconds (user + system) of these processes so far (gone ones count 0)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])  # the parent (ppid)


def _server_pids(postmaster: int) -> list[int]:
    """The postmaster and its children (backends, writers), as of now."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


async def _checksum(conn: asyncpg.Connection, table: str) -> str:
    columns = [
        r["column_name"]
        for r in await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = 'public'"
            " AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
        if r["column_name"] not in UNSTABLE
    ]
    listed = ", ".join(columns)
    return await conn.fetchval(
        f"SELECT md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), '')) || ':' || count(*)"
        f" FROM (SELECT {listed} FROM {table}) r"
    )


async def _round(server: str, source: str, master: bytes, statements: bool) -> dict[str, Any]:
    admin = await asyncpg.connect(_with_db(server, "postgres"))
    copy = f"follower_cost_{uuid.uuid4().hex[:10]}"
    await admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{source}"')
    url = _with_db(server, copy)
    try:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)}")
            await conn.execute(
                "UPDATE checkpoints SET position = 0 WHERE name = ANY($1::text[])", list(PROJECTIONS)
            )
            await conn.execute("DELETE FROM checkpoints WHERE name LIKE '%\\_\\_rebuild'")
            head = await conn.fetchval("SELECT coalesce(max(position), 0) FROM events")
            keyring = await load_keyring(conn, master)
            postmaster = _parent_of(await conn.fetchval("SELECT pg_backend_pid()"))
            if statements:
                await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(url, min_size=2, max_size=10, command_timeout=60)
        try:
            store = EventStore(pool, EventCodec(keyring), keyring)
            runner = ProjectionRunner(pool, store, url)
            gc.collect()
            gc.freeze()
            gc.set_threshold(10_000, 20, 10)  # as `loyalty follow` runs (service/http_server.py)
            pg_before = _cpu_of(_server_pids(postmaster))
            wall, cpu = time.perf_counter(), time.process_time()
            await runner.start()
            for name in runner.names:
                while not await runner.wait_for(name, head, timeout=3600):
                    pass
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            pg_cpu = _cpu_of(_server_pids(postmaster)) - pg_before
            await runner.stop()
            gc.unfreeze()
            async with pool.acquire() as c:
                sums = {t: await _checksum(c, t) for t in TABLES}
                top: list[dict[str, Any]] = []
                if statements:
                    rows = await c.fetch(
                        "SELECT calls, total_exec_time, rows, query FROM pg_stat_statements s"
                        " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1"
                        " ORDER BY total_exec_time DESC LIMIT 25",
                        copy,
                    )
                    top = [
                        {
                            "us_per_event": round(r["total_exec_time"] * 1000 / head, 2),
                            "calls_per_1k_events": round(r["calls"] * 1000 / head, 2),
                            "rows_per_event": round(r["rows"] / head, 2),
                            "query": " ".join(r["query"].split())[:160],
                        }
                        for r in rows
                    ]
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')
        await admin.close()
    return {
        "events": head,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(cpu * 1e6 / head, 1),
        "postgres_cpu_s": round(pg_cpu, 2),
        "postgres_cpu_us_per_event": round(pg_cpu * 1e6 / head, 1),
        "checksums": sums,
        "statements": top,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the service's LOYALTY_DATA_DIR")
    parser.add_argument("--source", default="loyalty", help="the database holding the log")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-statements", action="store_true", help="without pg_stat_statements")
    parser.add_argument("--json", action="store_true", help="one JSON document per round")
    args = parser.parse_args()
    servers = json.loads((args.data_dir / "servers.json").read_text())
    master = parse_master_key((args.data_dir / "master.key").read_text())
    for _ in range(args.rounds):
        result = await _round(servers["database_url"], args.source, master, not args.no_statements)
        if args.json:
            print(json.dumps(result))
            continue
        print(
            f"{result['events']} events: wall {result['wall_s']} s; this process {result['cpu_s']} CPU s"
            f" = {result['cpu_us_per_event']} us/event; PostgreSQL {result['postgres_cpu_s']} CPU s"
            f" = {result['postgres_cpu_us_per_event']} us/event"
        )
        for table, checksum in result["checksums"].items():
            print(f"  {table:22} {checksum}")
        for s in result["statements"]:
            print(
                f"  {s['us_per_event']:8.2f} us/event {s['calls_per_1k_events']:8.2f} calls/1k"
                f" {s['rows_per_event']:7.2f} rows/event  {s['query']}"
            )


if __name__ == "__main__":
    asyncio.run(main())
