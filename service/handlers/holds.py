"""Holds: reserve points at a checkout, then capture them (whole or in part) or release them.

A capture or a release names only the hold: its member is found by the hold's id in the `holds`
index, which the appender writes in the transaction of the points_held event.
"""

from __future__ import annotations

from datetime import timedelta
from uuid import UUID, uuid4

from domain.errors import HoldNotFound
from domain.member import Member
from service.services import Services

from .commands import CaptureHold, PlaceHold, ReleaseHold
from .context import CommandContext
from .errors import InvalidInput
from .results import Held, HoldClosed, Outcome
from .unit_of_work import UnitOfWork, execute

MAX_TTL_SECONDS = 86_400  # a day: a checkout that takes longer is abandoned (SPEC §4)


async def place(services: Services, ctx: CommandContext, cmd: PlaceHold) -> Outcome[Held]:
    """Reserve points for `ttl_seconds`; they leave `available` until captured or released."""
    if not 1 <= cmd.ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidInput([("ttl_seconds", f"must be between 1 and {MAX_TTL_SECONDS}")])
    hold_id = uuid4()  # ids enter at the edge; kept across retries of a conflict
    expires_at = ctx.now + timedelta(seconds=cmd.ttl_seconds)

    async def decide(uow: UnitOfWork) -> Held:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        member.hold(
            hold_id=hold_id,
            points=cmd.points,
            expires_at=expires_at,
            order_ref=cmd.order_ref,
            at=ctx.now,
            channel=ctx.channel,
            rules=program.rules,
        )
        uow.claim_hold(hold_id, cmd.member_id, expires_at)
        return Held(
            member_id=cmd.member_id,
            hold_id=hold_id,
            points=cmd.points,
            expires_at=expires_at,
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [cmd.member_id], decide, Held)


async def capture(services: Services, ctx: CommandContext, cmd: CaptureHold) -> Outcome[HoldClosed]:
    """Spend a hold, whole or in part; what is not spent goes back to `available`."""
    member_id = await _owner(services, cmd.hold_id)

    async def decide(uow: UnitOfWork) -> HoldClosed:
        member = await _holder(services, uow, member_id, cmd.hold_id)
        program = await uow.program()
        held = member.holds.get(str(cmd.hold_id))
        captured = member.capture(hold_id=cmd.hold_id, points=cmd.points, at=ctx.now, channel=ctx.channel)
        return HoldClosed(
            member_id=member_id,
            hold_id=cmd.hold_id,
            captured=captured,
            released=(held.points if held else captured) - captured,  # held: the capture found it
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [member_id], decide, HoldClosed)


async def release(services: Services, ctx: CommandContext, cmd: ReleaseHold) -> Outcome[HoldClosed]:
    """End a hold without spending it; its points go back to `available`."""
    member_id = await _owner(services, cmd.hold_id)

    async def decide(uow: UnitOfWork) -> HoldClosed:
        member = await _holder(services, uow, member_id, cmd.hold_id)
        program = await uow.program()
        held = member.holds.get(str(cmd.hold_id))
        member.release(hold_id=cmd.hold_id, at=ctx.now, channel=ctx.channel)
        return HoldClosed(
            member_id=member_id,
            hold_id=cmd.hold_id,
            captured=0,
            released=held.points if held else 0,  # held: the release found it
            balance=member.balance(now=ctx.now, rules=program.rules),
        )

    return await execute(services, ctx, [member_id], decide, HoldClosed)


async def _owner(services: Services, hold_id: UUID) -> UUID:
    """The member who placed the hold; 404 hold_not_found when no one did."""
    member_id = await services.store.hold_owner(hold_id)
    if member_id is None:
        raise HoldNotFound(f"no hold {hold_id}", hold_id=str(hold_id))
    return member_id


async def _holder(services: Services, uow: UnitOfWork, member_id: UUID, hold_id: UUID) -> Member:
    """The hold's member, knowing the hold: a copy cached by this instance may predate a hold
    placed through another one (the index commits with the event, so the store has it)."""
    cached = await services.repository.member(member_id)
    key = str(hold_id)
    if cached is not None and key not in cached.holds and key not in cached.closed_holds:
        services.repository.forget(member_id)
    return await uow.member(member_id)
