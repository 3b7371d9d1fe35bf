"""Full-rebuild throughput of the projections, on a generated log.

    python -m devtools.bench.rebuild [--events 100000] [--members 10000] [--database-url URL] [--workers N]

Without --database-url an embedded PostgreSQL is started in a temporary directory. A fresh
database is created on the server (and dropped afterwards unless --keep); the log is made of
members enrolling, then purchases and redemptions of random members, interleaved as live
traffic would be, appended through the real appender with many events per request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import random
import resource
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from domain.events import event_type
from domain.identities import Identity
from domain.member import Member
from domain.program import Program
from domain.rules import DEFAULT_RULES
from projections.runner import PROJECTIONS, rebuild
from service.store.appender import Appender, AppendRequest, Metadata, NewEvent
from service.store.codec import EventCodec
from service.store.event_store import EventStore
from service.store.keys import Keyring
from service.store.migrate import migrate

CHUNK = 250  # commands per append request
CHANNELS = ("pos-sh-01", "app", "web", "mini-wechat")


@contextlib.contextmanager
def _server(database_url: str | None) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    from devtools.embedded import EmbeddedServers  # only when no server is given

    with tempfile.TemporaryDirectory() as tmp, EmbeddedServers(Path(tmp), write_servers_json=False) as urls:
        yield urls.database_url


@contextlib.asynccontextmanager
async def _database(server_url: str, keep: bool) -> AsyncIterator[str]:
    name = f"bench_projections_{uuid.uuid4().hex[:12]}"
    admin = urlunsplit(urlsplit(server_url)._replace(path="/postgres"))
    conn = await asyncpg.connect(admin)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        yield urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    finally:
        if not keep:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


class _Generator:
    """Commands on Member aggregates, recorded as append requests of CHUNK commands each."""

    def __init__(self, appender: Appender, codec: EventCodec, keyring: Keyring, seed: int) -> None:
        self.appender, self.codec, self.keyring = appender, codec, keyring
        self.random = random.Random(seed)  # noqa: S311 -- a reproducible workload, not a secret
        self.keys: dict[uuid.UUID, bytes] = {}
        self.versions: dict[uuid.UUID, int] = {}
        self.pending: list[Member | Program] = []
        self.new_keys: list[tuple[uuid.UUID, bytes]] = []
        self.requests: list[asyncio.Future[object]] = []

    def record(self, aggregate: Member | Program) -> None:
        self.pending.append(aggregate)
        if len(self.pending) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        events: list[NewEvent] = []
        expected: dict[uuid.UUID, int] = {}
        for aggregate in self.pending:
            for domain_event in aggregate.collect_events():
                stored = self.codec.encode(domain_event, self.keys.get(aggregate.id))
                expected.setdefault(aggregate.id, self.versions.get(aggregate.id, 0))
                self.versions[aggregate.id] = stored.originator_version
                events.append(
                    NewEvent(
                        stream_id=aggregate.id,
                        stream_version=stored.originator_version,
                        event_type=event_type(type(domain_event)),
                        topic=stored.topic,
                        data=stored.state,
                        occurred_at=domain_event.timestamp,
                    )
                )
        request = AppendRequest(
            events=events, expected=expected, metadata=Metadata(channel="bench"), member_keys=self.new_keys
        )
        self.requests.append(asyncio.ensure_future(self.appender.append(request)))
        self.pending, self.new_keys = [], []

    async def run(self, members: int, events: int) -> None:
        start = datetime.now(UTC) - timedelta(days=400)
        program = Program.create(at=start)
        self.record(program)
        self.flush()
        await asyncio.gather(*self.requests)
        everyone: list[Member] = []
        for i in range(members):
            member_id = uuid.uuid4()
            key, wrapped = self.keyring.new_member_key(member_id)
            self.keys[member_id] = key
            self.new_keys.append((member_id, wrapped))
            member = Member.enrol(
                member_id=member_id,
                identities=[Identity(kind="phone", value=f"+86138{i:08d}")],
                profile=None,
                channel=self.random.choice(CHANNELS),
                at=start,
                rules=DEFAULT_RULES,
            )
            everyone.append(member)
            self.record(member)
        step = timedelta(days=399) / max(1, events)
        at = start
        made = members + 2
        while made < events:
            at += step
            member = self.random.choice(everyone)
            channel = self.random.choice(CHANNELS)
            if self.random.random() < 0.2 and member.balance(now=at, rules=DEFAULT_RULES).available >= 50:
                member.redeem(
                    redemption_id=uuid.UUID(int=self.random.getrandbits(128)),
                    points=50,
                    reward_ref=None,
                    order_ref=None,
                    at=at,
                    channel=channel,
                    rules=DEFAULT_RULES,
                )
            else:
                member.earn_purchase(
                    order_ref=uuid.uuid4().hex,
                    amount=Decimal(self.random.randrange(100, 100_000)) / 100,
                    currency="CNY",
                    items=[],
                    occurred_at=at,
                    at=at,
                    channel=channel,
                    rules=DEFAULT_RULES,
                    rules_version=1,
                )
            made += 1
            self.record(member)
        self.flush()
        await asyncio.gather(*self.requests)


async def _generate(url: str, keyring: Keyring, args: argparse.Namespace) -> None:
    conn = await asyncpg.connect(url)
    await migrate(conn)
    await conn.close()
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        appender = Appender(pool)
        await appender.start()
        started = time.perf_counter()
        await _Generator(appender, EventCodec(keyring), keyring, args.seed).run(args.members, args.events)
        await appender.stop()
        total = await pool.fetchval("SELECT max(position) FROM events")
        print(f"generated {total} events in {time.perf_counter() - started:.1f} s")
    finally:
        await pool.close()


async def _rebuild_all(url: str, keyring: Keyring, args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=4)
    try:
        for name in args.projection or list(PROJECTIONS):
            rates = []
            for _ in range(args.repeat):
                store = EventStore(pool, EventCodec(keyring), keyring)
                cpu = _cpu()
                report = await rebuild(pool, store, name, database_url=url, workers=args.workers)
                cpu = _cpu() - cpu
                rates.append(report.events_per_second)
                print(
                    f"rebuild {name}: {report.events} events in {report.seconds:.2f} s"
                    f" = {report.events_per_second:,.0f} events/s, {report.workers} process(es)"
                    f" (CPU of this process and its workers: {cpu:.2f} s,"
                    f" {report.events / cpu:,.0f} events/CPU-s)"
                )
            if len(rates) > 1:
                print(
                    f"rebuild {name}: best {max(rates):,.0f}, median {statistics.median(rates):,.0f} events/s"
                )
    finally:
        await pool.close()


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


async def _bench(server_url: str, args: argparse.Namespace) -> None:
    if args.reuse:
        # A database kept by an earlier --keep run, with the master key it printed.
        await _rebuild_all(args.reuse, Keyring(base64.urlsafe_b64decode(args.master_key)), args)
        return
    async with _database(server_url, args.keep) as url:
        master = secrets.token_bytes(32)
        await _generate(url, Keyring(master), args)
        if args.keep:
            print(f"kept: --reuse {url} --master-key {base64.urlsafe_b64encode(master).decode()}")
        await _rebuild_all(url, Keyring(master), args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", help="a PostgreSQL server to use (a database is created on it)")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--projection", action="append", choices=list(PROJECTIONS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="rebuild each projection this many times")
    parser.add_argument(
        "--workers",
        type=int,
        help="processes folding the log (default: one per CPU, as `loyalty projections rebuild`)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated database")
    parser.add_argument("--reuse", metavar="URL", help="rebuild on a database kept by --keep")
    parser.add_argument("--master-key", help="the master key printed by --keep (with --reuse)")
    args = parser.parse_args()
    with _server(args.database_url) as server_url:
        asyncio.run(_bench(server_url, args))


if __name__ == "__main__":
    main()
