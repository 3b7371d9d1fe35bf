"""Members and their identities: enrol, link, unlink, merge, look up, read."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import msgspec

from domain.errors import InvalidIdentity
from domain.identities import Identity, mask_identity, normalise_identity
from domain.member import Member
from domain.rules import Rules
from projections.members import member_view
from projections.segments import SEGMENTS, Facts, member_segments, segments_at
from service.services import Services

from .commands import Enrol, LinkIdentity, Merge, UnlinkIdentity
from .context import CommandContext
from .errors import InvalidInput, NoSuchIdentity, NotCaughtUp, UnknownMember
from .results import MemberState, Outcome
from .unit_of_work import UnitOfWork, execute


def normalise(services: Services, identity: Identity, *, field: str) -> Identity:
    """Normalise one identity, naming the field that is wrong."""
    try:
        return normalise_identity(
            identity.kind, identity.value, default_region=services.settings.default_region
        )
    except InvalidIdentity as exc:
        inner = str(exc.extra.get("field", "value"))
        name = f"{field}.{inner}" if field else inner
        raise InvalidInput([(name, exc.detail)]) from None


def member_state(member: Member, *, now: datetime, rules: Rules, reveal: bool) -> MemberState:
    """The member as a result; identity values are masked unless the caller may see them."""
    return MemberState(
        member_id=member.id,
        status=str(member.status),
        merged_into=member.merged_into,
        tier=member.tier,
        identities=[
            i if reveal else Identity(kind=i.kind, value=mask_identity(i)) for i in member.identities
        ],
        balance=member.balance(now=now, rules=rules),
        channels=list(member.channels),
        first_activity_at=member.first_activity_at,
        last_activity_at=member.last_activity_at,
    )


async def enrol(services: Services, ctx: CommandContext, cmd: Enrol) -> Outcome[MemberState]:
    """Enrol a new member with one or more identities (each must be free)."""
    identities: list[Identity] = []
    for i, given in enumerate(cmd.identities):
        identity = normalise(services, given, field=f"identities[{i}]")
        if identity not in identities:
            identities.append(identity)
    member_id = uuid4()

    async def decide(uow: UnitOfWork) -> MemberState:
        program = await uow.program()
        member = Member.enrol(
            member_id=member_id,
            identities=identities,
            profile=cmd.profile,
            channel=ctx.channel,
            at=ctx.now,
            rules=program.rules,
        )
        uow.new_member(member)
        for identity in identities:
            uow.claim_identity(identity, member_id)
        return member_state(member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes)

    return await execute(services, ctx, [member_id], decide, MemberState)


async def link_identity(services: Services, ctx: CommandContext, cmd: LinkIdentity) -> Outcome[MemberState]:
    """Bind one more identity to a member (409 if another member holds it)."""
    identity = normalise(services, cmd.identity, field="")

    async def decide(uow: UnitOfWork) -> MemberState:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        if member.link_identity(identity=identity, channel=ctx.channel, at=ctx.now):
            uow.claim_identity(identity, cmd.member_id)
        return member_state(member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes)

    return await execute(services, ctx, [cmd.member_id], decide, MemberState)


async def unlink_identity(
    services: Services, ctx: CommandContext, cmd: UnlinkIdentity
) -> Outcome[MemberState]:
    """Unbind one identity from a member (never the last one); it is free to bind again."""
    identity = normalise(services, cmd.identity, field="")

    async def decide(uow: UnitOfWork) -> MemberState:
        member = await uow.member(cmd.member_id)
        program = await uow.program()
        member.unlink_identity(identity=identity, channel=ctx.channel, at=ctx.now)
        uow.release_identity(identity, cmd.member_id)
        return member_state(member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes)

    return await execute(services, ctx, [cmd.member_id], decide, MemberState)


async def merge(services: Services, ctx: CommandContext, cmd: Merge) -> Outcome[MemberState]:
    """The target absorbs a duplicate member, in one atomic append to both streams."""

    async def decide(uow: UnitOfWork) -> MemberState:
        target = await uow.member(cmd.target_id)
        source = await uow.member(cmd.source_id)
        program = await uow.program()
        moving = list(source.identities)
        target.merge(source=source, at=ctx.now, channel=ctx.channel, rules=program.rules)
        for identity in moving:
            uow.release_identity(identity, cmd.source_id)
            uow.claim_identity(identity, cmd.target_id)
        return member_state(target, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes)

    return await execute(services, ctx, [cmd.target_id, cmd.source_id], decide, MemberState)


async def get_member(
    services: Services, member_id: UUID, *, reveal: bool, now: datetime, min_position: int | None = None
) -> tuple[MemberState, int | None]:
    """The member view from the `members` projection (after it reached `min_position`), and the
    position of the member's last event it reflects.

    The member itself answers instead when the view cannot: identities in the clear (the
    projection holds them masked), a balance that has changed with time since the member's
    last event (a lot unlocked or expired), or a member the projection has not reached yet.
    """
    if min_position is not None:
        for name in ("members", "segments"):
            if not await services.projections.wait_for(
                name, min_position, timeout=services.settings.read_wait_seconds
            ):
                raise NotCaughtUp(name, min_position)
    view = await member_view(services.pool, member_id)
    segments = await member_segments(services.pool, member_id)
    if (
        view is not None
        and not reveal
        and (view.balance_valid_until is None or now < view.balance_valid_until)
    ):
        state = MemberState(
            member_id=view.member_id,
            status=view.status,
            merged_into=view.merged_into,
            tier=view.tier,
            identities=view.identities,
            balance=view.balance,
            channels=view.channels,
            first_activity_at=view.first_activity_at,
            last_activity_at=view.last_activity_at,
            segments=segments,
        )
        return state, view.position
    member = await services.repository.current_member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    program = await services.repository.program()
    position = None if view is None else view.position
    if segments is None:  # the projection has not reached the member yet: decide them here
        flags = segments_at(Facts.of(member), now, program.rules.segments)
        segments = [s for s, inside in zip(SEGMENTS, flags, strict=True) if inside]
    state = member_state(member, now=now, rules=program.rules, reveal=reveal)
    return msgspec.structs.replace(state, segments=segments), position


async def lookup(services: Services, identity: Identity) -> UUID:
    """The member that owns this identity; UnknownMember when none does."""
    normalised = normalise(services, identity, field="")
    value_hash = services.keyring.identity_hash(normalised.kind, normalised.value)
    owner = await services.store.identity_owner(normalised.kind, value_hash)
    if owner is None:
        raise NoSuchIdentity(normalised.kind)
    return owner
