"""Campaigns through their use cases on a real PostgreSQL, with two service instances: caps under
concurrent earns, earns racing rule and campaign changes, variants on both instances, quotes,
the analytics projection, and balances as of a past instant under the rules of that instant."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from msgspec.structs import replace

from domain.campaigns import Campaign, CampaignVariant, variant_of
from domain.identities import Identity
from domain.member import Member
from domain.member_values import PurchaseItem
from domain.program import PROGRAM_ID, Program
from domain.rules import DEFAULT_RULES
from projections.campaigns import CampaignMembersProjection, campaign_results
from projections.runner import ProjectionRunner, rebuild
from service.handlers import campaigns, ledger, members, program
from service.handlers.commands import (
    EarnPurchase,
    EndCampaign,
    Enrol,
    PublishRules,
    QuotePurchase,
    ReverseEarn,
    StartCampaign,
)
from service.handlers.context import CommandContext
from service.services import Services
from service.store.access import Channel
from service.store.event_store import replay
from tests.integration.test_ledger_operations import ctx, two_instances  # noqa: F401 (fixture)

CHANNELS = ("pos", "app", "web")


def on(channel: str, now: datetime | None = None) -> CommandContext:
    base = ctx(now)
    return CommandContext(
        channel=channel,
        api_key_id=base.api_key_id,
        now=base.now,
        request_id=base.request_id,
        scopes=base.scopes,
        idempotency_key=base.idempotency_key,
        request_hash=base.request_hash,
    )


async def with_channels(services: Services) -> None:
    for channel in CHANNELS:
        await services.access.create_channel(Channel(id=channel, name=channel, kind="pos"))


async def start(services: Services, **fields: Any) -> uuid.UUID:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "name": "Promo",
        "starts_at": now - timedelta(hours=1),
        "ends_at": now + timedelta(days=7),
    }
    values.update(fields)
    outcome = await campaigns.start_campaign(services, on("ops"), StartCampaign(campaign=Campaign(**values)))
    return outcome.result.campaign_id


async def enrol(services: Services) -> uuid.UUID:
    identity = Identity(kind="email", value=f"{uuid.uuid4().hex}@example.cn")
    return (await members.enrol(services, ctx(), Enrol(identities=[identity]))).result.member_id


def purchase(member_id: uuid.UUID, amount: str = "100.00", **kw: Any) -> EarnPurchase:
    return EarnPurchase(
        member_id=member_id, order_ref=uuid.uuid4().hex, amount=Decimal(amount), currency="CNY", **kw
    )


async def earned_events(services: Services, member_id: uuid.UUID) -> list[Any]:
    history = await services.store.stream_history(member_id, after=0, limit=1000)
    return [e for e in history if e.event_type == "points_earned"]


async def test_a_cap_of_500_holds_under_20_concurrent_earns_from_three_channels(
    two_instances: list[Services],  # noqa: F811
) -> None:
    first, _ = two_instances
    await with_channels(first)
    campaign_id = await start(first, bonus_points=100, cap_per_member=500)
    member_id = await enrol(first)
    earns = [
        ledger.earn(two_instances[i % 2], on(CHANNELS[i % 3]), purchase(member_id, "10.00"))
        for i in range(20)
    ]
    outcomes = await asyncio.gather(*earns)
    assert all(o.status == 201 for o in outcomes)
    paid = [p.points for o in outcomes for p in o.result.breakdown if p.campaign_id == campaign_id]
    assert sum(paid) == 500
    recorded = [
        p.points
        for e in await earned_events(first, member_id)
        for p in e.event.breakdown
        if p.rule == "campaign"
    ]
    assert sorted(recorded) == sorted(paid)
    assert len(recorded) == 20  # each earn applied it (0 once the cap was reached)
    first.repository.forget(member_id)
    member = await first.repository.member(member_id)
    assert member is not None
    assert member.campaign_paid() == {campaign_id: 500}


async def test_earns_racing_new_rules_and_an_ended_campaign_each_use_one_whole_program_version(
    two_instances: list[Services],  # noqa: F811
) -> None:
    first = two_instances[0]
    await with_channels(first)
    doubled = await start(first, multiplier=Decimal(2))
    await start(first, name="flat", bonus_points=7)
    buyers = [await enrol(first) for _ in range(32)]
    richer = replace(DEFAULT_RULES, earn=replace(DEFAULT_RULES.earn, points_per_unit=Decimal(3)))

    async def changes() -> None:
        # Rules and campaigns change over and over, on either instance, while the earns run.
        ending = doubled
        for round_ in range(4):
            rules = richer if round_ % 2 == 0 else DEFAULT_RULES
            await program.publish_rules(two_instances[round_ % 2], on("ops"), PublishRules(rules=rules))
            ender = two_instances[(round_ + 1) % 2]
            await campaigns.end_campaign(ender, on("ops"), EndCampaign(campaign_id=ending))
            ending = await start(two_instances[round_ % 2], name=f"late {round_}", bonus_points=11 + round_)

    earns = [ledger.earn(two_instances[i % 2], on("pos"), purchase(m, "10.00")) for i, m in enumerate(buyers)]
    results = await asyncio.gather(changes(), *earns)
    assert all(o.status == 201 for o in results[1:])

    # The program as of each of its versions, and the position at which each version began.
    program_events = await first.store.stream_history(PROGRAM_ID, after=0, limit=100)
    _, stored = await first.store.load(PROGRAM_ID)
    versions_at = [(e.position, e.stream_version) for e in program_events]
    for member_id in buyers:
        (earned,) = await earned_events(first, member_id)
        in_force = max(v for p, v in versions_at if p < earned.position)
        assert earned.event.program_version == in_force
        then: Program = replay(Program, None, stored[:in_force])
        fresh = Member.enrol(
            member_id=member_id,
            identities=[Identity(kind="email", value="x@example.cn")],
            profile=None,
            channel="pos",
            at=earned.event.at,
            rules=then.rules,
        )
        expected = fresh.quote_purchase(
            amount=Decimal("10.00"),
            currency="CNY",
            items=[],
            rules=then.rules,
            rules_version=then.rules_version,
            offers=then.offers(),
            channel="pos",
            occurred_at=earned.event.occurred_at,
        )
        assert (earned.event.rules_version, earned.event.breakdown) == (
            expected.rules_version,
            expected.breakdown,
        )


async def test_a_member_gets_the_same_variant_from_both_instances_and_in_the_earn(
    two_instances: list[Services],  # noqa: F811
) -> None:
    first, second = two_instances
    variants = [
        CampaignVariant(name=n, weight=1, bonus_points=b) for n, b in (("a", 10), ("b", 20), ("c", 30))
    ]
    campaign_id = await start(first, variants=variants)
    member_ids = [await enrol(first) for _ in range(6)]
    now = datetime.now(UTC)
    for member_id in member_ids:
        seen = [await campaigns.member_offers(s, member_id, now=now) for s in two_instances]
        (one,), (other,) = (v.offers for v in seen)
        assert (one.record.campaign_id, one.variant, one.bonus_points) == (
            other.record.campaign_id,
            other.variant,
            other.bonus_points,
        )
        done = await ledger.earn(second, on("pos"), purchase(member_id))
        (part,) = [p for p in done.result.breakdown if p.rule == "campaign"]
        assert (part.campaign_id, part.variant, part.points) == (campaign_id, one.variant, one.bonus_points)


async def test_a_quote_equals_the_earn_that_follows_it_and_writes_nothing(
    two_instances: list[Services],  # noqa: F811
) -> None:
    first, _ = two_instances
    await with_channels(first)
    await start(first, categories=["tea"], multiplier=Decimal("1.5"), channels=["app"])
    await start(first, name="big", min_amount=Decimal("50.00"), bonus_points=40, cap_per_member=60)
    member_id = await enrol(first)
    items = [
        PurchaseItem(sku="T1", category="tea", amount=Decimal("60.00"), quantity=2),
        PurchaseItem(sku="C1", category="cake", amount=Decimal("39.99"), quantity=1),
    ]
    for channel in ("app", "pos", "app"):
        position = await first.store.last_position()
        when = datetime.now(UTC) - timedelta(minutes=1)
        query = QuotePurchase(
            member_id=member_id, amount=Decimal("99.99"), currency="CNY", items=items, occurred_at=when
        )
        quoted = await ledger.quote(first, query, now=datetime.now(UTC), channel=channel)
        assert await first.store.last_position() == position
        done = await ledger.earn(
            first, on(channel), purchase(member_id, "99.99", items=items, occurred_at=when)
        )
        assert (done.result.points, done.result.breakdown) == (quoted.points, quoted.breakdown)


async def test_campaign_results_per_variant_are_projected_and_a_rebuild_gives_the_same(
    two_instances: list[Services],  # noqa: F811
    database_url: str,
) -> None:
    first, _ = two_instances
    variants = [
        CampaignVariant(name="control", weight=1, bonus_points=0),
        CampaignVariant(name="bonus", weight=1),
    ]
    campaign_id = await start(first, bonus_points=25, variants=variants)
    buyers = [await enrol(first) for _ in range(8)]
    for member_id in buyers:
        await ledger.earn(first, on("pos"), purchase(member_id, "20.00"))
    await ledger.earn(first, on("pos"), purchase(buyers[0], "30.00"))
    refunded = purchase(buyers[1], "40.00")
    await ledger.earn(first, on("pos"), refunded)
    await ledger.reverse(
        first,
        on("pos"),
        ReverseEarn(member_id=buyers[1], order_ref=refunded.order_ref, amount=Decimal("40.00")),
    )
    runner = ProjectionRunner(
        first.pool, first.store, database_url, projections=[CampaignMembersProjection(first.store)]
    )
    await runner.start()
    try:
        assert await runner.wait_for("campaign_members", await first.store.last_position(), timeout=10)
        live = await campaign_results(first.pool, campaign_id)
    finally:
        await runner.stop()
    # What each member's variant makes of these purchases (the refund takes its part back).
    expected: dict[str | None, tuple[int, int, int, Decimal]] = {}
    for m in buyers:
        chosen = variant_of(campaign_id, m, variants)
        assert chosen is not None
        earns = 2 if m in buyers[:2] else 1
        revenue = Decimal("50.00") if m == buyers[0] else Decimal("20.00")
        paid = 0 if chosen.name == "control" else 25 * (2 if m == buyers[0] else 1)
        members_, earns_, points_, revenue_ = expected.get(chosen.name, (0, 0, 0, Decimal(0)))
        expected[chosen.name] = (members_ + 1, earns_ + earns, points_ + paid, revenue_ + revenue)
    assert {r.variant: (r.members, r.earns, r.bonus_points, r.revenue) for r in live} == expected

    await rebuild(first.pool, first.store, "campaign_members")
    assert await campaign_results(first.pool, campaign_id) == live


async def test_the_balance_as_of_an_instant_uses_the_rules_in_force_then(
    two_instances: list[Services],  # noqa: F811
) -> None:
    first, _ = two_instances
    member_id = await enrol(first)
    ten_days_ago = datetime.now(UTC) - timedelta(days=10)
    await ledger.earn(first, on("pos"), purchase(member_id, "100.00", occurred_at=ten_days_ago))
    before_change = datetime.now(UTC)
    short_window = replace(DEFAULT_RULES, tier_window_days=5)
    await program.publish_rules(first, on("ops"), PublishRules(rules=short_window))
    now = datetime.now(UTC)
    then = await ledger.balance(first, member_id, now=now, as_of=before_change)
    today = await ledger.balance(first, member_id, now=now, as_of=None)
    assert (then.balance.qualifying, today.balance.qualifying) == (100, 0)
