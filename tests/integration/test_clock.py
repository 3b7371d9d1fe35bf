"""The clock on a real PostgreSQL and NATS: what time alone makes due is recorded once, by the
service itself, with several instances running (service/clock.py, ADR 12)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from domain.errors import HoldNotActive
from domain.identities import Identity
from domain.lots import add_months
from domain.rules import EarnRule, Rules
from projections.balances import balance_row
from service.clock import Clock
from service.config import Settings
from service.handlers import holds, ledger, members
from service.handlers.commands import CaptureHold, EarnPurchase, Enrol, PlaceHold, PublishRules, Settle
from service.handlers.context import CommandContext
from service.handlers.program import ensure_program, publish_rules
from service.metrics import clock_metrics
from service.services import Services, open_services
from tests.waiting import until

pytestmark = pytest.mark.asyncio


def _settings(database_url: str, nats_url: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings(
        database_url=database_url,
        nats_url=nats_url,
        stream_name=f"LOYALTY_{tag}",
        subject_prefix=f"t{tag}.events",
        db_pool_size=6,
        master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        clock_interval_seconds=0.1,
    )


@contextlib.asynccontextmanager
async def instance(settings: Settings) -> AsyncIterator[Services]:
    """One instance whose followers (and clock) lead, as `LOYALTY_FOLLOWERS=inline` runs them."""
    async with open_services(settings, lead=True) as services:
        await ensure_program(services)
        yield services


def ctx(channel: str = "pos-sh-01") -> CommandContext:
    return CommandContext(
        channel=channel, api_key_id="test", now=datetime.now(UTC), request_id=uuid.uuid4().hex
    )


async def enrol(services: Services) -> UUID:
    phone = f"+8613{secrets.randbelow(10**9):09d}"
    outcome = await members.enrol(services, ctx(), Enrol(identities=[Identity(kind="phone", value=phone)]))
    return outcome.result.member_id


async def earn(services: Services, member_id: UUID, amount: str, occurred_at: datetime | None = None) -> None:
    cmd = EarnPurchase(
        member_id=member_id,
        order_ref=uuid.uuid4().hex,
        amount=Decimal(amount),
        currency="CNY",
        occurred_at=occurred_at,
    )
    await ledger.earn(services, ctx(), cmd)


async def events(services: Services, event_type: str) -> list[Any]:
    """Every recorded event of this type, decoded (all members)."""
    async with services.pool.acquire() as conn:
        streams = await conn.fetch("SELECT DISTINCT stream_id FROM events WHERE event_type = $1", event_type)
    found = []
    for row in streams:
        history = await services.store.stream_history(row["stream_id"], after=0, limit=10_000)
        found += [e for e in history if e.event_type == event_type]
    return found


async def available(services: Services, member_id: UUID) -> int:
    outcome = await ledger.balance(services, member_id, now=datetime.now(UTC), as_of=None)
    return outcome.balance.available


def leader(*instances: Services) -> Clock:
    clocks = [s.clock for s in instances if s.clock is not None and s.clock.status().active]
    assert len(clocks) <= 1, "one clock leads at a time"
    return clocks[0] if clocks else None  # type: ignore[return-value]


async def passes_after(clock: Clock, count: int) -> None:
    """Until the clock has made `count` more passes (each reads the state anew)."""
    start = clock.passes
    await until(lambda: clock.passes >= start + count, what=f"{count} passes of the clock")


async def test_holds_expire_on_their_own_with_two_instances_once_each(
    database_url: str, nats_url: str
) -> None:
    settings = _settings(database_url, nats_url)
    async with instance(settings) as first, instance(settings) as second:
        member_ids = [await enrol(first) for _ in range(3)]
        for member_id in member_ids:
            await earn(first, member_id, "500")
        placed = []
        for i, member_id in enumerate(member_ids):
            on = first if i % 2 == 0 else second  # holds placed through both instances
            for n in (1, 2):
                cmd = PlaceHold(member_id=member_id, points=100, ttl_seconds=1)
                outcome = await holds.place(on, ctx("app"), cmd)
                assert outcome.result.balance.available == 500 - 100 * n
                placed.append(outcome.result.hold_id)

        released = await until(
            lambda: _released_all(first, placed), within=30, what="every hold released by the clock"
        )
        # One hold_released each, reason expired, from the service itself.
        assert sorted(e.event.hold_id for e in released) == sorted(placed)
        assert {(e.event.reason, e.channel, e.api_key_id) for e in released} == {
            ("expired", "system", "system")
        }
        # The held points are available again (the projection, as every instance reads it).
        for member_id in member_ids:
            await until(
                lambda m=member_id: _projected_available(first, m, 500), what="points available again"
            )
        # Exactly one clock led and settled them; more passes record nothing further.
        clock = await until(lambda: leader(first, second), what="a leading clock")
        # (a member's two holds expire a few ms apart: one settle may release both, or each)
        assert len(member_ids) <= clock.status().members_settled <= len(placed)
        assert clock.status().events == len(placed)
        await passes_after(clock, 3)
        assert len(await events(first, "hold_released")) == len(placed)
        assert sum(s.clock.status().events for s in (first, second) if s.clock is not None) == len(placed)
        exposed = {sample.name: sample.value for m in clock_metrics(clock) for sample in m.samples}
        assert exposed["loyalty_clock_settled_members_total"] == clock.status().members_settled
        assert exposed["loyalty_clock_events_total"] == len(placed)


async def _projected_available(services: Services, member_id: UUID, points: int) -> bool:
    row = await balance_row(services.pool, member_id)
    return row is not None and row["available"] == points and row["held"] == 0


async def _released_all(services: Services, placed: list[UUID]) -> list[Any] | None:
    released = await events(services, "hold_released")
    return released if len(released) >= len(placed) else None


async def test_a_lot_past_its_expiry_expires_without_a_command(database_url: str, nats_url: str) -> None:
    settings = _settings(database_url, nats_url)
    async with instance(settings) as services:
        member_id = await enrol(services)
        # A purchase backdated (within LOYALTY_MAX_BACKDATE_DAYS) so that its 12-month expiry
        # comes two seconds after it is recorded: nothing else touches the member after that.
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        occurred = expires.replace(year=expires.year - 1)
        assert add_months(occurred, 12) == expires
        await earn(services, member_id, "250", occurred_at=occurred)
        expired = await until(lambda: events(services, "points_expired"), what="the lot's points_expired")
        assert [(e.stream_id, e.event.points, e.channel) for e in expired] == [(member_id, 250, "system")]
        assert await available(services, member_id) == 0
        assert services.clock is not None
        await passes_after(services.clock, 3)
        assert len(await events(services, "points_expired")) == 1


async def test_a_settle_that_records_nothing_is_not_repeated(database_url: str, nats_url: str) -> None:
    settings = _settings(database_url, nats_url)
    async with instance(settings) as services:
        clock = services.clock
        assert clock is not None
        # Points pending for a day, earned so that they unlock two seconds from now: the row's
        # next_change_at passes and the settle then records nothing (unlocking is no event).
        await publish_rules(services, ctx("admin"), PublishRules(rules=Rules(earn=EarnRule(pending_days=1))))
        member_id = await enrol(services)
        unlock = datetime.now(UTC) + timedelta(seconds=2)
        await earn(services, member_id, "120", occurred_at=unlock - timedelta(days=1))
        assert await available(services, member_id) == 0
        await until(lambda: clock.status().settles >= 1, what="the settle at the unlock")
        assert (clock.status().settles, clock.status().events) == (1, 0)
        assert clock.status().deferred == 1  # its next change (the expiry) is kept from the aggregate
        await passes_after(clock, 5)
        assert clock.status().settles == 1, "a member whose settle recorded nothing was picked again"
        assert await available(services, member_id) == 120


async def test_a_restart_of_the_clock_does_not_settle_a_member_twice(
    database_url: str, nats_url: str
) -> None:
    settings = _settings(database_url, nats_url)
    async with instance(settings) as services:
        member_id = await enrol(services)
        await earn(services, member_id, "300")
        await holds.place(services, ctx("app"), PlaceHold(member_id=member_id, points=50, ttl_seconds=1))
        await until(lambda: events(services, "hold_released"), what="the hold released")
        clock = services.clock
        assert clock is not None
        assert (clock.status().members_settled, clock.status().events) == (1, 1)
        await clock.stop()
    # A new process (a restart): its clock starts from nothing and finds nothing due.
    async with instance(settings) as restarted:
        clock = restarted.clock
        assert clock is not None
        await until(lambda: clock.status().active, what="the restarted clock leading")
        await passes_after(clock, 5)
        assert (clock.status().settles, clock.status().events) == (0, 0)
        assert len(await events(restarted, "hold_released")) == 1
        assert await available(restarted, member_id) == 300


async def test_a_settle_racing_a_capture_of_the_same_hold(database_url: str, nats_url: str) -> None:
    """The clock releasing an expired hold and a capture of it: the stream's expected version
    lets one of them record, and the other sees the new state."""
    settings = _settings(database_url, nats_url)
    async with instance(settings) as services:
        clock = services.clock
        assert clock is not None
        member_id = await enrol(services)
        await earn(services, member_id, "400")
        captured = released = 0
        for _ in range(5):
            placed = await holds.place(
                services, ctx("app"), PlaceHold(member_id=member_id, points=40, ttl_seconds=1)
            )
            hold_id, expires_at = placed.result.hold_id, placed.result.expires_at
            await until(
                lambda at=expires_at: datetime.now(UTC) >= at - timedelta(milliseconds=5), what="the expiry"
            )
            # A capture decided just before the expiry and a settle just after it, at once,
            # while the clock's own passes run too.
            before = CommandContext(
                channel="app", api_key_id="test", now=expires_at - timedelta(milliseconds=1), request_id="c"
            )
            after = CommandContext(channel="system", api_key_id="system", now=expires_at, request_id="s")
            capture, _settle = await asyncio.gather(
                holds.capture(services, before, CaptureHold(hold_id=hold_id)),
                ledger.settle(services, after, Settle(member_id=member_id)),
                return_exceptions=True,
            )
            if isinstance(capture, BaseException) and not isinstance(capture, HoldNotActive):
                raise capture
            closed = await until(lambda h=hold_id: _closed(services, h), what="the hold closed")
            assert (closed == "hold_captured") == (not isinstance(capture, BaseException))
            captured += closed == "hold_captured"
            released += closed == "hold_released"
        assert captured + released == 5
        # Each hold closed exactly once, whichever came first; the balance agrees.
        assert len(await events(services, "hold_captured")) == captured
        assert len(await events(services, "hold_released")) == released
        assert await available(services, member_id) == 400 - 40 * captured


async def _closed(services: Services, hold_id: UUID) -> str | None:
    found = [
        e.event_type
        for kind in ("hold_captured", "hold_released")
        for e in await events(services, kind)
        if e.event.hold_id == hold_id
    ]
    assert len(found) <= 1, f"hold {hold_id} closed twice: {found}"
    return found[0] if found else None
