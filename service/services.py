"""The resources of a running service, opened and closed together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg

from projections.runner import ProjectionRunner
from service.bus import segments
from service.bus.connection import NatsConnection
from service.bus.relay import Relay
from service.config import Settings
from service.store.access import Access
from service.store.appender import Appender
from service.store.codec import EventCodec
from service.store.event_store import EventStore
from service.store.evictions import ForgottenEvictions
from service.store.idempotency import IdempotencyRecords
from service.store.keys import Keyring, MasterKeyError, parse_master_key
from service.store.master_key import load_keyring
from service.store.migrate import migrate
from service.store.repository import Repository
from service.store.tail import LogTail

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    """Everything a handler needs, handed in by dependency injection."""

    settings: Settings
    pool: asyncpg.Pool
    keyring: Keyring
    store: EventStore
    repository: Repository
    appender: Appender
    idempotency: IdempotencyRecords
    access: Access
    nats: NatsConnection | None
    relay: Relay | None
    projections: ProjectionRunner
    tail: LogTail  # wakes the readers of the live event stream
    # A service.clock.Clock where the followers lead (`lead`). Typed loosely: the clock drives
    # the use cases, which import this module, and DI resolves these annotations at run time.
    clock: Any = None
    # Publishes segment changes to their own stream (service/bus/segments.py).
    segments_relay: Relay | None = None
    # A service.checkpoints.Checkpointer where the followers lead (typed loosely, as the clock).
    checkpointer: Any = None


def master_key(settings: Settings) -> bytes:
    """LOYALTY_MASTER_KEY (in embedded mode `loyalty serve` supplies one from the data dir)."""
    if not settings.master_key:
        raise MasterKeyError("LOYALTY_MASTER_KEY is required when the servers are configured")
    return parse_master_key(settings.master_key)


def previous_master_key(settings: Settings) -> bytes | None:
    """LOYALTY_PREVIOUS_MASTER_KEY, set only while the master key is rotated."""
    if not settings.previous_master_key:
        return None
    return parse_master_key(settings.previous_master_key, "LOYALTY_PREVIOUS_MASTER_KEY")


async def open_keyring(settings: Settings, conn: Any) -> Keyring:
    """The keyring of these settings' master key(s), with the service secrets stored in `conn`'s
    database (created there on its first start)."""
    return await load_keyring(conn, master_key(settings), previous_master_key(settings))


@contextlib.asynccontextmanager
async def open_services(settings: Settings, *, lead: bool | None = None) -> AsyncIterator[Services]:
    """Connect, migrate, start the appender and the followers of the log; close them on exit.

    The relay, the projection runner and the clock lead (compete for the lead) when `lead`,
    by default when `settings.followers` is "inline"; otherwise the relay and the runner only
    watch the leaders' progress, and there is no clock.
    """
    lead = settings.leads_followers if lead is None else lead
    if settings.database_url is None:
        raise ValueError("database_url is not set")
    # A malformed key fails here, before connecting.
    master_key(settings)
    previous_master_key(settings)
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=2,
        max_size=settings.db_pool_size,
        command_timeout=30,
    )
    try:
        async with pool.acquire() as conn:
            applied = await migrate(conn)
            keyring = await open_keyring(settings, conn)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        store = EventStore(pool, EventCodec(keyring), keyring)
        appender = Appender(pool)
        await appender.start()
        bus = NatsConnection(settings.nats_url) if settings.nats_url else None
        relay = segments_relay = None
        if bus is not None:
            await bus.start()
            relay = Relay(store, bus, settings, subject_prefix=settings.subject_prefix, lead=lead)
            await relay.start()
            prefix = segments.subject_prefix(settings.subject_prefix)
            segments_relay = Relay(
                store,
                bus,
                settings,
                subject_prefix=prefix,
                feed=segments.SegmentFeed(prefix),
                stream_name=segments.stream_name(settings),
                lead=lead,
            )
            await segments_relay.start()
        services = Services(
            settings=settings,
            pool=pool,
            keyring=keyring,
            store=store,
            repository=Repository(store),
            appender=appender,
            idempotency=IdempotencyRecords(pool),
            access=Access(pool),
            nats=bus,
            relay=relay,
            segments_relay=segments_relay,
            projections=ProjectionRunner(pool, store, settings.database_url, lead=lead),
            tail=LogTail(settings.database_url),
        )
        if lead:
            # Imported here: the clock runs use cases, and the use cases import this module.
            from service.checkpoints import Checkpointer
            from service.clock import Clock

            services = replace(services, clock=Clock(services, interval=settings.clock_interval_seconds))
            services = replace(services, checkpointer=Checkpointer(services))
        pruner: asyncio.Task[None] | None = None
        evictions = ForgottenEvictions(settings.database_url, store, services.repository)
        try:
            await evictions.start()
            await services.projections.start()
            if services.clock is not None:
                await services.clock.start()
            if services.checkpointer is not None:
                await services.checkpointer.start()
            if settings.admin_key:
                await services.access.ensure_admin_key(settings.admin_key)
            pruner = asyncio.create_task(
                _prune_idempotency_keys(services.idempotency), name="idempotency-prune"
            )
            yield services
        finally:
            if pruner is not None:
                pruner.cancel()
                # Awaited: a prune cancelled mid-query gives its connection back before the pool
                # is closed (which waits for every connection to come back).
                await _stopped("idempotency pruner", _cancelled(pruner))
            if services.checkpointer is not None:
                await _stopped("audit checkpoints", services.checkpointer.stop())
            if services.clock is not None:
                await _stopped("clock", services.clock.stop())  # before the appender: it appends
            await _stopped("projections", services.projections.stop())
            await _stopped("log tail", services.tail.stop())
            await _stopped("forgotten evictions", evictions.stop())
            await _stopped("appender", appender.stop())
            if relay is not None:
                await _stopped("relay", relay.stop())  # publishes what was just committed, if quick
            if segments_relay is not None:
                await _stopped("segments relay", segments_relay.stop())
            if bus is not None:
                await _stopped("nats", bus.close())
    finally:
        if not await _stopped("pool", pool.close()):
            pool.terminate()  # a connection never given back must not keep the process alive


# How long one part of a stopping service may take before it is left behind (logged): a stop
# must end, even when a part hangs (the appender's own drain is bounded by the requests it has).
STOP_TIMEOUT = 10.0


async def _cancelled(task: asyncio.Task[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _stopped(what: str, stopping: Awaitable[None]) -> bool:
    """Await one part's stop, at most STOP_TIMEOUT; False (and a warning) when it did not end."""
    try:
        await asyncio.wait_for(stopping, STOP_TIMEOUT)
    except TimeoutError:
        log.warning("a part of the service did not stop in time; left behind", extra={"part": what})
        return False
    return True


async def _prune_idempotency_keys(records: IdempotencyRecords, every: float = 3600.0) -> None:
    """Delete idempotency records past their 24 h now and then (they are only replayed for 24 h)."""
    while True:
        try:
            pruned = await records.prune()
            if pruned:
                log.info("expired idempotency keys pruned", extra={"pruned": pruned})
        except Exception:
            log.exception("pruning idempotency keys failed; will retry")
        await asyncio.sleep(every)
