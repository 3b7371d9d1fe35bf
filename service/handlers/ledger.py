"""Points: earn (purchase or award), quote, redeem; balance and history reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from domain.member import Member
from domain.program import Program
from service.services import Services

from .commands import Award, EarnPurchase, QuotePurchase, Redeem
from .context import CommandContext
from .errors import InvalidInput, UnknownMember
from .results import BalanceAt, Earned, History, HistoryItem, Outcome, Quote, Redeemed
from .unit_of_work import UnitOfWork, execute

# A POS catching up offline may send old purchases; a clock far ahead is a mistake.
MAX_CLOCK_SKEW = timedelta(minutes=5)


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


async def earn(services: Services, ctx: CommandContext, cmd: EarnPurchase | Award) -> Outcome[Earned]:
    """Earn points for a purchase (once per order, program-wide), or award them."""
    occurred_at = (
        business_time(cmd.occurred_at, now=ctx.now, max_backdate_days=services.settings.max_backdate_days)
        if isinstance(cmd, EarnPurchase)
        else ctx.now
    )

    async def decide(uow: UnitOfWork) -> Earned:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        rules, version = program.rules, program.rules_version
        if isinstance(cmd, EarnPurchase):
            done = member.earn_purchase(
                order_ref=cmd.order_ref,
                amount=cmd.amount,
                currency=cmd.currency,
                items=list(cmd.items),
                occurred_at=occurred_at,
                at=ctx.now,
                channel=ctx.channel,
                rules=rules,
                rules_version=version,
            )
            uow.claim_order(cmd.order_ref, cmd.member_id)
        else:
            done = member.award(
                points=cmd.points,
                reason=cmd.reason,
                at=ctx.now,
                channel=ctx.channel,
                rules=rules,
                rules_version=version,
            )
        return Earned(
            member_id=cmd.member_id,
            event_id=uow.event_id(0),  # the points_earned event: the first one recorded
            points=done.points,
            breakdown=done.breakdown,
            rules_version=done.rules_version,
            available_at=done.available_at,
            expires_at=done.expires_at,
            balance=member.balance(now=ctx.now, rules=rules),
        )

    return await execute(services, ctx, [cmd.member_id], decide, Earned)


async def quote(services: Services, query: QuotePurchase) -> Quote:
    """What a purchase would earn this member now; nothing is written."""
    member = await _member(services, query.member_id)
    program = await services.repository.program()
    quoted = member.quote_purchase(
        amount=query.amount,
        currency=query.currency,
        items=list(query.items),
        rules=program.rules,
        rules_version=program.rules_version,
    )
    return Quote(
        member_id=query.member_id,
        points=quoted.points,
        breakdown=quoted.breakdown,
        rules_version=quoted.rules_version,
        tier=quoted.tier,
    )


async def redeem(services: Services, ctx: CommandContext, cmd: Redeem) -> Outcome[Redeemed]:
    """Spend available points (never below zero)."""

    async def decide(uow: UnitOfWork) -> Redeemed:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        redemption_id = uow.event_id(0)  # the points_redeemed event's id names the redemption
        done = member.redeem(
            redemption_id=redemption_id,
            points=cmd.points,
            reward_ref=cmd.reward_ref,
            order_ref=cmd.order_ref,
            at=ctx.now,
            channel=ctx.channel,
            rules=program.rules,
        )
        return Redeemed(
            member_id=cmd.member_id,
            redemption_id=done.redemption_id,
            points=done.points,
            reward_ref=cmd.reward_ref,
            order_ref=cmd.order_ref,
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [cmd.member_id], decide, Redeemed)


async def _member(services: Services, member_id: UUID) -> Member:
    member = await services.repository.member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    return member


async def balance(services: Services, member_id: UUID, *, now: datetime, as_of: datetime | None) -> BalanceAt:
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
    return BalanceAt(member_id=member_id, as_of=at, balance=member.balance(now=at, rules=program.rules))


async def history(services: Services, member_id: UUID, *, after: int, limit: int) -> History:
    """The member's events, oldest first, paged by position."""
    await _member(services, member_id)
    events = await services.store.stream_history(member_id, after=after, limit=limit)
    items = [
        HistoryItem(
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
    return History(
        member_id=member_id, events=items, next_after=items[-1].position if len(items) == limit else None
    )


def _signed_points(event_type: str, event: object) -> int | None:
    points = getattr(event, "points", None)
    if not isinstance(points, int):
        return None
    return -points if event_type == "points_redeemed" else points
