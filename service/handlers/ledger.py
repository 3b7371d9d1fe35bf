"""Points: earn (purchase or award), quote, redeem; balance and history reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

from domain.errors import CurrencyMismatch
from domain.member import Member, PurchaseItem
from domain.money import check_amount
from domain.program import Program
from domain.rules import quote_purchase
from service.api.schemas import (
    BalanceAtOut,
    EarnIn,
    EarnOut,
    HistoryItemOut,
    HistoryOut,
    QuoteOut,
    RedeemIn,
    RedeemOut,
)
from service.services import Services

from .context import CommandContext, Reply
from .errors import InvalidInput, UnknownMember
from .unit_of_work import Render, UnitOfWork, execute
from .views import balance_out, breakdown_out

# A POS catching up offline may send old purchases; a clock far ahead is a mistake.
MAX_CLOCK_SKEW = timedelta(minutes=5)

_PURCHASE_FIELDS = ("order_ref", "amount", "currency", "occurred_at", "items")
_AWARD_FIELDS = ("points", "reason")


def earn_kind(body: EarnIn) -> str:
    """'purchase' or 'award', checking that the body is wholly one of them."""
    given = {f for f in (*_PURCHASE_FIELDS, *_AWARD_FIELDS) if getattr(body, f) is not None}
    if given & set(_AWARD_FIELDS) and given & set(_PURCHASE_FIELDS):
        stray = sorted(given & set(_AWARD_FIELDS))
        raise InvalidInput(
            [(f, "not allowed in a purchase earn (an award has only points and reason)") for f in stray]
        )
    kind = "award" if given & set(_AWARD_FIELDS) else "purchase"
    required = ("points", "reason") if kind == "award" else ("order_ref", "amount", "currency")
    missing = [
        (f, f"required for {'an award' if kind == 'award' else 'a purchase'}")
        for f in required
        if getattr(body, f) is None
    ]
    if missing:
        raise InvalidInput(missing)
    return kind


def business_time(
    value: datetime | None, *, now: datetime, max_backdate_days: int, field: str = "occurred_at"
) -> datetime:
    """A business time within the accepted window (SPEC §4), or `now` when none was given."""
    if value is None:
        return now
    if value.tzinfo is None:
        raise InvalidInput([(field, "must include a time zone offset")])
    ahead = value - now  # aware datetimes: compared in UTC
    if ahead > MAX_CLOCK_SKEW:
        raise InvalidInput([(field, "is more than 5 minutes in the future")])
    if -ahead > timedelta(days=max_backdate_days):
        raise InvalidInput([(field, f"is more than {max_backdate_days} days in the past")])
    return value


def _items(body: EarnIn) -> list[PurchaseItem]:
    return [
        PurchaseItem(sku=i.sku, category=i.category, amount=Decimal(i.amount), quantity=i.quantity)
        for i in body.items or ()
    ]


async def earn(
    services: Services, ctx: CommandContext, member_id: UUID, body: EarnIn, kind: str | None = None
) -> Reply:
    """Earn points for a purchase (`kind` "purchase") or award them ("award")."""
    kind = kind or earn_kind(body)
    occurred_at = business_time(
        body.occurred_at, now=ctx.now, max_backdate_days=services.settings.max_backdate_days
    )

    async def decide(uow: UnitOfWork) -> Render:
        member = await uow.member(member_id)
        program = await uow.program()
        rules, version = program.rules, program.rules_version
        if kind == "purchase":
            assert body.order_ref is not None
            assert body.amount is not None
            assert body.currency is not None
            result = member.earn_purchase(
                order_ref=body.order_ref,
                amount=Decimal(body.amount),
                currency=body.currency,
                items=_items(body),
                occurred_at=occurred_at,
                at=ctx.now,
                channel=ctx.channel,
                rules=rules,
                rules_version=version,
            )
            uow.claim_order(body.order_ref, member_id)
        else:
            assert body.points is not None
            assert body.reason is not None
            result = member.award(
                points=body.points,
                reason=body.reason,
                at=ctx.now,
                channel=ctx.channel,
                rules=rules,
                rules_version=version,
            )
        return lambda position: EarnOut(
            member_id=member_id,
            event_id=uow.event_ids[0] if uow.event_ids else None,
            points=result.points,
            breakdown=breakdown_out(result.breakdown),
            rules_version=result.rules_version,
            available_at=result.available_at,
            expires_at=result.expires_at,
            position=position,
            balance=balance_out(member.balance(now=ctx.now, rules=rules)),
        )

    return await execute(services, ctx, [member_id], decide)


async def quote(services: Services, member_id: UUID, body: EarnIn, *, now: datetime) -> QuoteOut:
    """What a purchase would earn this member now; nothing is written."""
    if earn_kind(body) != "purchase":
        raise InvalidInput([("order_ref", "a quote is for a purchase")])
    assert body.amount is not None
    assert body.currency is not None
    member = await _member(services, member_id)
    program = await services.repository.program()
    check_amount(Decimal(body.amount), body.currency)
    if body.currency != program.rules.currency:
        raise CurrencyMismatch(
            f"the program earns in {program.rules.currency}", expected=program.rules.currency
        )
    quoted = quote_purchase(program.rules, program.rules_version, member.tier, Decimal(body.amount))
    return QuoteOut(
        member_id=member_id,
        points=quoted.points,
        breakdown=breakdown_out(quoted.breakdown),
        rules_version=quoted.rules_version,
        tier=quoted.tier,
    )


async def redeem(services: Services, ctx: CommandContext, member_id: UUID, body: RedeemIn) -> Reply:
    """Spend available points (never below zero)."""

    async def decide(uow: UnitOfWork) -> Render:
        member = await uow.member(member_id)
        program = await uow.program()
        result = member.redeem(
            points=body.points,
            reward_ref=body.reward_ref,
            order_ref=body.order_ref,
            at=ctx.now,
            channel=ctx.channel,
            rules=program.rules,
        )
        return lambda position: RedeemOut(
            member_id=member_id,
            redemption_id=uow.event_ids[0],
            points=result.points,
            reward_ref=body.reward_ref,
            order_ref=body.order_ref,
            position=position,
            balance=balance_out(member.balance(now=ctx.now, rules=program.rules)),
        )

    return await execute(services, ctx, [member_id], decide)


async def _member(services: Services, member_id: UUID) -> Member:
    member = await services.repository.member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    return member


async def balance(
    services: Services, member_id: UUID, *, now: datetime, as_of: datetime | None
) -> BalanceAtOut:
    """The balance now, or as it was at `as_of` (replayed from the log)."""
    program: Program = await services.repository.program()
    if as_of is None:
        member = await _member(services, member_id)
        at = now
    else:
        if as_of.tzinfo is None:
            raise InvalidInput([("as_of", "must include a time zone offset")])
        try:
            at = min(as_of, now).astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+00:01: before year 1 in UTC
            raise InvalidInput([("as_of", "is out of range")]) from None
        replayed = await services.repository.as_of(Member, member_id, at)
        if replayed is None:
            await _member(services, member_id)  # 404 if it never existed
            raise InvalidInput([("as_of", "is before the member enrolled")])
        member = replayed
    return BalanceAtOut(
        member_id=member_id, as_of=at, balance=balance_out(member.balance(now=at, rules=program.rules))
    )


async def history(services: Services, member_id: UUID, *, after: int, limit: int) -> HistoryOut:
    """The member's events, oldest first, paged by position."""
    await _member(services, member_id)
    events = await services.store.stream_history(member_id, after=after, limit=limit)
    items = [
        HistoryItemOut(
            position=e.position,
            event_id=e.event_id,
            stream_version=e.stream_version,
            type=e.event_type,
            channel=e.channel,
            points=_signed_points(e.event_type, e.event),
            occurred_at=e.occurred_at,
            recorded_at=e.recorded_at,
        )
        for e in events
    ]
    return HistoryOut(
        member_id=member_id, events=items, next_after=items[-1].position if len(items) == limit else None
    )


def _signed_points(event_type: str, event: object) -> int | None:
    points = getattr(event, "points", None)
    if not isinstance(points, int):
        return None
    return -points if event_type == "points_redeemed" else points
