"""The complete ledger through its use cases on a real PostgreSQL: refunds, undone redemptions,
holds found by their id, adjustments, transfers, and what time alone makes due."""

from __future__ import annotations

import asyncio
import base64
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import pytest_asyncio

from domain.errors import (
    AlreadyReversed,
    DomainError,
    HoldNotActive,
    HoldNotFound,
    InsufficientPoints,
    OverRefund,
)
from domain.identities import Identity
from domain.member import Member
from service.config import Settings
from service.handlers import holds, ledger, members
from service.handlers.commands import (
    Adjust,
    CaptureHold,
    EarnPurchase,
    Enrol,
    PlaceHold,
    Redeem,
    ReleaseHold,
    ReverseEarn,
    ReverseRedemption,
    Settle,
    Transfer,
)
from service.handlers.context import CommandContext
from service.handlers.errors import InvalidInput, UnknownMember
from service.handlers.program import ensure_program
from service.handlers.results import Outcome, Settled
from service.services import Services, open_services

MASTER_KEY = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
SCOPES = frozenset({"read", "earn", "redeem", "members", "award", "adjust", "transfer"})


def ctx(
    now: datetime | None = None, *, key: str | None = None, request_hash: bytes | None = None
) -> CommandContext:
    """A command from the `pos` channel, with a fresh idempotency key unless one is given."""
    return CommandContext(
        channel="pos",
        api_key_id="test",
        now=now or datetime.now(UTC),
        request_id=uuid.uuid4().hex,
        scopes=SCOPES,
        idempotency_key=key or uuid.uuid4().hex,
        request_hash=request_hash or secrets.token_bytes(8),
    )


@pytest_asyncio.fixture
async def two_instances(database_url: str) -> AsyncIterator[list[Services]]:
    """Two service instances (each with its own pool, cache and appender) on one database."""
    settings = Settings(database_url=database_url, nats_url=None, master_key=MASTER_KEY, db_pool_size=4)
    async with open_services(settings) as first, open_services(settings) as second:
        await ensure_program(first)
        yield [first, second]


@pytest_asyncio.fixture
async def services(two_instances: list[Services]) -> Services:
    return two_instances[0]


async def member_with(services: Services, amount: str, *, order_ref: str = "O-1") -> uuid.UUID:
    """A member who earned for one purchase (1 point per CNY with the default rules)."""
    enrolled = await members.enrol(
        services, ctx(), Enrol(identities=[Identity(kind="email", value=f"{uuid.uuid4().hex}@x.cn")])
    )
    member_id = enrolled.result.member_id
    await ledger.earn(
        services,
        ctx(),
        EarnPurchase(member_id=member_id, order_ref=order_ref, amount=Decimal(amount), currency="CNY"),
    )
    return member_id


async def fresh(services: Services, member_id: uuid.UUID) -> Member:
    """The member as the store holds it (not this instance's cached copy)."""
    services.repository.forget(member_id)
    member = await services.repository.member(member_id)
    assert member is not None
    return member


async def types_of(services: Services, member_id: uuid.UUID) -> list[str]:
    return [e.event_type for e in await services.store.stream_history(member_id, after=0, limit=1000)]


async def count(services: Services, table: str) -> int:
    async with services.pool.acquire() as conn:
        return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))


# -- refunds and undone redemptions ---------------------------------------------------------


async def test_a_refund_after_the_points_were_spent_makes_available_negative(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    await ledger.redeem(services, ctx(), Redeem(member_id=member_id, points=80))

    refunded = await ledger.reverse(services, ctx(), ReverseEarn(member_id=member_id, order_ref="O-1"))

    assert refunded.status == 201
    assert refunded.result.points == -100
    assert refunded.result.balance.available == -80  # shown, not hidden
    history = await services.store.stream_history(member_id, after=0, limit=100)
    assert history[-1].event_type == "earn_reversed"
    assert history[-1].event_id == refunded.result.event_id
    assert history[-1].position == refunded.position
    rules = (await services.repository.program()).rules
    assert (await fresh(services, member_id)).balance(now=datetime.now(UTC), rules=rules).available == -80


async def test_partial_refunds_add_up_to_the_order_and_an_over_refund_writes_nothing(
    services: Services,
) -> None:
    member_id = await member_with(services, "100.00")

    first = await ledger.reverse(
        services, ctx(), ReverseEarn(member_id=member_id, order_ref="O-1", amount=Decimal("33.33"))
    )
    second = await ledger.reverse(
        services, ctx(), ReverseEarn(member_id=member_id, order_ref="O-1", amount=Decimal("33.33"))
    )
    version = await services.store.stream_version(member_id)
    with pytest.raises(OverRefund):
        await ledger.reverse(
            services, ctx(), ReverseEarn(member_id=member_id, order_ref="O-1", amount=Decimal("40"))
        )
    assert await services.store.stream_version(member_id) == version
    last = await ledger.reverse(services, ctx(), ReverseEarn(member_id=member_id, order_ref="O-1"))

    assert [first.result.points, second.result.points, last.result.points] == [-33, -33, -34]
    assert last.result.balance.available == 0
    assert (await types_of(services, member_id)).count("earn_reversed") == 3


async def test_a_redemption_is_undone_by_its_id_once(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    redeemed = await ledger.redeem(services, ctx(), Redeem(member_id=member_id, points=40))
    undo = ReverseRedemption(member_id=member_id, redemption_id=redeemed.result.redemption_id)

    undone = await ledger.reverse(services, ctx(), undo)

    assert undone.result.points == 40
    assert undone.result.balance.available == 100
    assert (await types_of(services, member_id))[-1] == "redemption_reversed"
    with pytest.raises(AlreadyReversed):
        await ledger.reverse(services, ctx(), undo)


async def test_a_retried_reversal_is_answered_with_its_first_outcome(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    retry = ctx(key="refund-1", request_hash=b"same")
    command = ReverseEarn(member_id=member_id, order_ref="O-1")

    first = await ledger.reverse(services, retry, command)
    again = await ledger.reverse(services, retry, command)  # the order is refunded in full now

    assert again.replayed
    assert (again.result, again.position) == (first.result, first.position)
    assert (await types_of(services, member_id)).count("earn_reversed") == 1


# -- holds ------------------------------------------------------------------------------------


async def test_a_hold_is_found_by_its_id_at_once_and_captured_in_part(two_instances: list[Services]) -> None:
    first, second = two_instances
    member_id = await member_with(first, "100.00")
    await second.repository.member(member_id)  # cached there before the hold: stale after it

    placed = await holds.place(first, ctx(), PlaceHold(member_id=member_id, points=50, ttl_seconds=60))
    assert placed.result.balance.available == 50
    assert placed.result.balance.held == 50
    # Another instance, right after: found through the index written with the event.
    captured = await holds.capture(second, ctx(), CaptureHold(hold_id=placed.result.hold_id, points=20))

    assert captured.result.member_id == member_id
    assert (captured.result.captured, captured.result.released) == (20, 30)
    assert captured.result.balance.available == 80
    assert captured.result.balance.held == 0
    with pytest.raises(HoldNotActive):
        await holds.capture(first, ctx(), CaptureHold(hold_id=placed.result.hold_id))
    with pytest.raises(HoldNotActive):
        await holds.release(second, ctx(), ReleaseHold(hold_id=placed.result.hold_id))


async def test_each_hold_is_indexed_in_the_transaction_of_its_points_held_event(services: Services) -> None:
    member_ids = [await member_with(services, "100.00", order_ref=f"O-{i}") for i in range(10)]
    now = datetime.now(UTC)

    # Together: the appender commits them in shared batches.
    placed = await asyncio.gather(
        *(
            holds.place(services, ctx(now), PlaceHold(member_id=m, points=10, ttl_seconds=900 + i))
            for i, m in enumerate(member_ids)
        )
    )

    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT h.hold_id, h.member_id, h.expires_at, h.position, e.stream_id, e.event_type,"
            " h.xmin = e.xmin AS same_tx FROM holds h JOIN events e ON e.position = h.position"
        )
    indexed = {r["hold_id"]: r for r in rows}
    assert len(indexed) == len(placed)
    for outcome in placed:
        row = indexed[outcome.result.hold_id]
        assert row["member_id"] == row["stream_id"] == outcome.result.member_id
        assert row["expires_at"] == outcome.result.expires_at
        assert row["position"] == outcome.position
        assert row["event_type"] == "points_held"
        assert row["same_tx"]


async def test_a_released_hold_gives_its_points_back(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    placed = await holds.place(services, ctx(), PlaceHold(member_id=member_id, points=30))

    released = await holds.release(services, ctx(), ReleaseHold(hold_id=placed.result.hold_id))

    assert (released.result.captured, released.result.released) == (0, 30)
    assert released.result.balance.available == 100
    assert (await types_of(services, member_id))[-1] == "hold_released"


async def test_an_unknown_hold_is_not_found(services: Services) -> None:
    unknown = uuid.uuid4()

    with pytest.raises(HoldNotFound) as captured:
        await holds.capture(services, ctx(), CaptureHold(hold_id=unknown))
    with pytest.raises(HoldNotFound):
        await holds.release(services, ctx(), ReleaseHold(hold_id=unknown))

    assert (captured.value.status, captured.value.code) == (404, "hold_not_found")


@pytest.mark.parametrize("ttl_seconds", [0, -1, 86_401])
async def test_a_hold_ttl_out_of_range_is_invalid_and_writes_nothing(
    services: Services, ttl_seconds: int
) -> None:
    member_id = await member_with(services, "100.00")
    version = await services.store.stream_version(member_id)

    with pytest.raises(InvalidInput) as refused:
        await holds.place(services, ctx(), PlaceHold(member_id=member_id, points=10, ttl_seconds=ttl_seconds))

    assert [e["field"] for e in refused.value.extra["errors"]] == ["ttl_seconds"]  # type: ignore[attr-defined]
    assert await services.store.stream_version(member_id) == version
    assert await count(services, "holds") == 0


async def test_a_retried_hold_is_the_same_hold(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    retry = ctx(key="hold-1", request_hash=b"same")
    command = PlaceHold(member_id=member_id, points=60)

    first = await holds.place(services, retry, command)
    again = await holds.place(services, retry, command)  # 60 more would not fit: answered, not refused

    assert again.replayed
    assert again.result.hold_id == first.result.hold_id
    assert await count(services, "holds") == 1


async def settle_after(
    services: Services, member_id: uuid.UUID, hold_id: uuid.UUID, now: datetime, *, lookups: int
) -> Outcome[Settled]:
    """A settle that first gives a racing capture (which looks its hold up first) a head start
    of a few round trips, so that either of them may reach the appender first."""
    for _ in range(lookups):
        await services.store.hold_owner(hold_id)
    return await ledger.settle(services, ctx(now), Settle(member_id=member_id))


async def test_a_capture_racing_the_settle_of_its_expiring_hold_never_both_win(
    two_instances: list[Services],
) -> None:
    first, second = two_instances
    member_id = await member_with(first, "1000.00")
    start = datetime.now(UTC)
    winners: list[str] = []
    for i in range(12):
        placed = await holds.place(
            first, ctx(start), PlaceHold(member_id=member_id, points=10, ttl_seconds=60)
        )
        hold_id = placed.result.hold_id
        # Both instances decide on the same version of the member: only the append's version
        # check can stop the second one.
        second.repository.forget(member_id)
        await second.repository.member(member_id)

        # The capture was asked just before the hold expired; the settle, by the clock, just after.
        capture, settle = await asyncio.gather(
            holds.capture(second, ctx(start + timedelta(seconds=59)), CaptureHold(hold_id=hold_id)),
            settle_after(first, member_id, hold_id, start + timedelta(seconds=61), lookups=i % 4),
            return_exceptions=True,
        )

        assert not isinstance(settle, BaseException)
        if isinstance(capture, BaseException):
            assert isinstance(capture, HoldNotActive)
            assert settle.result.events == 1  # the expired hold released
            winners.append("hold_released")
        else:
            assert settle.result.events == 0  # nothing left to release
            winners.append("hold_captured")
        assert (await types_of(first, member_id))[-1] == winners[-1]

    member = await fresh(first, member_id)
    assert not member.holds
    assert member.balance(now=start, rules=(await first.repository.program()).rules).available == (
        1000 - 10 * winners.count("hold_captured")
    )


# -- adjustments and transfers ----------------------------------------------------------------


async def test_a_negative_adjustment_past_available_needs_allow_negative(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    version = await services.store.stream_version(member_id)

    with pytest.raises(InsufficientPoints):
        await ledger.adjust(services, ctx(), Adjust(member_id=member_id, points=-150, reason="fraud"))
    assert await services.store.stream_version(member_id) == version
    adjusted = await ledger.adjust(
        services, ctx(), Adjust(member_id=member_id, points=-150, reason="fraud", allow_negative=True)
    )

    assert adjusted.result.points == -150
    assert adjusted.result.balance.available == -50
    history = await services.store.stream_history(member_id, after=0, limit=100)
    assert (history[-1].event_type, history[-1].event_id) == ("points_adjusted", adjusted.result.event_id)


async def test_a_positive_adjustment_adds_spendable_points(services: Services) -> None:
    member_id = await member_with(services, "100.00")

    adjusted = await ledger.adjust(services, ctx(), Adjust(member_id=member_id, points=25, reason="goodwill"))

    assert adjusted.result.balance.available == 125
    assert len((await fresh(services, member_id)).lots) == 2


async def test_a_transfer_is_two_events_at_consecutive_positions_in_one_commit(services: Services) -> None:
    sender = await member_with(services, "100.00", order_ref="O-A")
    receiver = await member_with(services, "10.00", order_ref="O-B")
    sent_lot = (await fresh(services, sender)).lots[0]

    moved = await ledger.transfer(
        services, ctx(), Transfer(member_id=sender, to_member_id=receiver, points=60)
    )

    assert moved.result.balance.available == 40
    async with services.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT position, stream_id, event_type, xmin::text AS tx FROM events"
            " WHERE event_type = 'points_transferred' ORDER BY position"
        )
    assert [r["stream_id"] for r in rows] == [sender, receiver]
    assert [r["position"] for r in rows] == [moved.position - 1, moved.position]
    assert rows[0]["tx"] == rows[1]["tx"]  # one transaction
    got = await fresh(services, receiver)
    moved_lot = next(lot for lot in got.lots if lot.points == 60)
    assert moved_lot.expires_at == sent_lot.expires_at  # the points keep their expiry
    assert (
        got.balance(now=datetime.now(UTC), rules=(await services.repository.program()).rules).available == 70
    )


async def test_a_transfer_to_an_unknown_member_is_not_found_and_writes_nothing(services: Services) -> None:
    sender = await member_with(services, "100.00")
    version = await services.store.stream_version(sender)

    with pytest.raises(UnknownMember) as refused:
        await ledger.transfer(
            services, ctx(), Transfer(member_id=sender, to_member_id=uuid.uuid4(), points=10)
        )

    assert (refused.value.status, refused.value.code) == (404, "member_not_found")
    assert await services.store.stream_version(sender) == version


# -- settle -----------------------------------------------------------------------------------


async def test_settle_with_nothing_due_appends_nothing(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    events, keys = await count(services, "events"), await count(services, "idempotency_keys")
    batches = services.appender.batches

    settled = await ledger.settle(services, ctx(), Settle(member_id=member_id))

    assert settled.result.events == 0
    assert not settled.replayed
    assert await count(services, "events") == events
    assert await count(services, "idempotency_keys") == keys
    assert services.appender.batches == batches  # not even an empty transaction


async def test_settle_on_another_instance_releases_a_hold_its_cached_copy_never_saw(
    two_instances: list[Services],
) -> None:
    first, second = two_instances
    member_id = await member_with(first, "100.00")
    await second.repository.member(member_id)  # cached there before the hold
    now = datetime.now(UTC)
    placed = await holds.place(first, ctx(now), PlaceHold(member_id=member_id, points=40, ttl_seconds=60))

    settled = await ledger.settle(second, ctx(now + timedelta(seconds=60)), Settle(member_id=member_id))

    assert settled.result.events == 1
    history = await first.store.stream_history(member_id, after=placed.position, limit=10)
    assert [e.event_type for e in history] == ["hold_released"]


async def test_settle_expires_lots_past_their_date_and_a_retry_replays_it(services: Services) -> None:
    member_id = await member_with(services, "100.00")
    later = ctx(datetime.now(UTC) + timedelta(days=400), key="settle-1", request_hash=b"same")

    settled = await ledger.settle(services, later, Settle(member_id=member_id))
    again = await ledger.settle(services, later, Settle(member_id=member_id))

    assert settled.result.events == 1
    assert (await types_of(services, member_id))[-1] == "points_expired"
    assert again.replayed
    assert (again.result, again.position) == (settled.result, settled.position)


async def test_settle_of_an_unknown_member_is_not_found(services: Services) -> None:
    with pytest.raises(DomainError) as refused:
        await ledger.settle(services, ctx(), Settle(member_id=uuid.uuid4()))

    assert refused.value.code == "member_not_found"
