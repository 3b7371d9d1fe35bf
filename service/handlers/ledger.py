"""Points: earn (purchase or award), quote, redeem, reverse, adjust, transfer, settle; balance and
history reads. Holds are in holds.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from uuid import UUID

from domain.errors import DomainError
from domain.lots import is_expired, spending_order
from domain.member import Member
from domain.program import PROGRAM_ID, Program
from service.services import Services

from .commands import (
    Adjust,
    Award,
    EarnPurchase,
    QuotePurchase,
    Redeem,
    ReverseEarn,
    ReverseRedemption,
    Settle,
    Transfer,
)
from .context import CommandContext
from .errors import InvalidInput, UnknownMember
from .results import (
    Adjusted,
    BalanceAt,
    Earned,
    History,
    HistoryItem,
    MemberLots,
    Outcome,
    Quote,
    Redeemed,
    Reversed,
    Settled,
    Transferred,
)
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
    return await execute(services, ctx, [cmd.member_id], earn_decision(services, ctx, cmd), Earned)


def earn_decision(
    services: Services, ctx: CommandContext, cmd: EarnPurchase | Award
) -> Callable[[UnitOfWork], Awaitable[Earned]]:
    """How `earn` decides (for `execute()`, or for `execute_many()` in a batch); InvalidInput
    at once for a business time outside the accepted window."""
    occurred_at = (
        business_time(cmd.occurred_at, now=ctx.now, max_backdate_days=services.settings.max_backdate_days)
        if isinstance(cmd, EarnPurchase)
        else ctx.now
    )

    async def decide(uow: UnitOfWork) -> Earned:
        member = await uow.member(cmd.member_id)
        program = await uow.program_in_force()
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
                offers=program.offers(),
                program_version=program.version,
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
                program_version=program.version,
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

    return decide


async def quote(services: Services, query: QuotePurchase, *, now: datetime, channel: str) -> Quote:
    """What a purchase would earn this member now, reported by `channel`: exactly what the same
    earn would record (campaigns included); nothing is written."""
    member = await _member(services, query.member_id)
    program = await services.repository.program()
    occurred_at = business_time(
        query.occurred_at, now=now, max_backdate_days=services.settings.max_backdate_days
    )
    quoted = member.quote_purchase(
        amount=query.amount,
        currency=query.currency,
        items=list(query.items),
        rules=program.rules,
        rules_version=program.rules_version,
        offers=program.offers(),
        channel=channel,
        occurred_at=occurred_at,
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


async def reverse(
    services: Services, ctx: CommandContext, cmd: ReverseEarn | ReverseRedemption
) -> Outcome[Reversed]:
    """Refund a purchase (its points taken back: negative) or undo a redemption (given back)."""

    async def decide(uow: UnitOfWork) -> Reversed:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        if isinstance(cmd, ReverseEarn):
            points = -member.reverse_earn(
                order_ref=cmd.order_ref,
                amount=cmd.amount,
                at=ctx.now,
                channel=ctx.channel,
                rules=program.rules,
            )
        else:
            points = member.reverse_redemption(
                redemption_id=cmd.redemption_id, at=ctx.now, channel=ctx.channel
            )
        return Reversed(
            member_id=cmd.member_id,
            event_id=uow.event_id(0),  # the earn_reversed or redemption_reversed event
            points=points,
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [cmd.member_id], decide, Reversed)


async def adjust(services: Services, ctx: CommandContext, cmd: Adjust) -> Outcome[Adjusted]:
    """Correct a balance by points of either sign; below zero only when allowed."""

    async def decide(uow: UnitOfWork) -> Adjusted:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        member.adjust(
            points=cmd.points,
            reason=cmd.reason,
            allow_negative=cmd.allow_negative,
            at=ctx.now,
            channel=ctx.channel,
            rules=program.rules,
        )
        return Adjusted(
            member_id=cmd.member_id,
            event_id=uow.event_id(0),  # the points_adjusted event
            points=cmd.points,
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [cmd.member_id], decide, Adjusted)


async def transfer(services: Services, ctx: CommandContext, cmd: Transfer) -> Outcome[Transferred]:
    """Move points to another member: both streams in one atomic append."""

    async def decide(uow: UnitOfWork) -> Transferred:
        sender = await uow.member(cmd.member_id)
        receiver = await uow.member(cmd.to_member_id)  # 404 member_not_found when unknown
        program = await uow.program()
        sender.transfer(to=receiver, points=cmd.points, at=ctx.now, channel=ctx.channel, rules=program.rules)
        return Transferred(
            member_id=cmd.member_id,
            to_member_id=cmd.to_member_id,
            points=cmd.points,
            balance=sender.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [cmd.member_id, cmd.to_member_id], decide, Transferred)


class _NothingDue(DomainError):
    """Settle found nothing due: raised out of `decide` so that `execute()` appends nothing."""

    status: ClassVar[int] = 200

    def __init__(self) -> None:
        super().__init__("nothing is due")


async def settle(services: Services, ctx: CommandContext, cmd: Settle) -> Outcome[Settled]:
    """Record what time alone has made due for a member (expiries, expired holds, downgrades).

    Nothing due writes nothing and takes no append lock (an empty append would still take it
    and write an idempotency record); execute() checks the stream's version then, so that a
    stale cached copy never hides what is due. A retry of a settle that did record events is still
    answered with its first outcome, by `execute()`.
    """

    async def decide(uow: UnitOfWork) -> Settled:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        events = member.settle(at=ctx.now, channel=ctx.channel, rules=program.rules)
        if events == 0:
            # A refusal to execute(): it makes sure its cached copy was current (else it decides
            # again), looks up the key's first answer, and appends nothing.
            raise _NothingDue()
        return Settled(member_id=cmd.member_id, events=events)

    try:
        return await execute(services, ctx, [cmd.member_id], decide, Settled, status=200)
    except _NothingDue:
        return Outcome(200, Settled(member_id=cmd.member_id, events=0), 0)  # position 0: no event


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
        # The rules in force then (the tier window), as `loyalty replay --until` decides them.
        program = await services.repository.as_of(Program, PROGRAM_ID, at) or program
    return BalanceAt(member_id=member_id, as_of=at, balance=member.balance(now=at, rules=program.rules))


async def lots(services: Services, member_id: UUID, *, now: datetime) -> MemberLots:
    """The member's lots not expired at `now`, in the order they are spent (soonest expiry first)."""
    member = await _member(services, member_id)
    return MemberLots(
        member_id=member_id,
        as_of=now,
        lots=spending_order([lot for lot in member.lots if not is_expired(lot, now)]),
    )


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
            points=signed_points(e.event_type, e.event),
            occurred_at=e.occurred_at,
            recorded_at=e.recorded_at,
        )
        for e in events
    ]
    return History(
        member_id=member_id, events=items, next_after=items[-1].position if len(items) == limit else None
    )


def signed_points(event_type: str, event: object) -> int | None:
    """What an event did to its member's points (a redemption negative), None if it moves none."""
    points = getattr(event, "points", None)
    if not isinstance(points, int):
        return None
    return -points if event_type == "points_redeemed" else points
