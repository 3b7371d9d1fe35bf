"""Members and their identities: enrol, link, look up, read."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID, uuid4

import msgspec

from domain.errors import InvalidIdentity
from domain.identities import Identity, normalise_identity
from domain.member import Member, Profile
from projections.members import member_view
from service.api.schemas import EnrolIn, IdentityIn, MemberOut, MergeIn
from service.services import Services

from .context import CommandContext, Reply
from .errors import InvalidInput, NoSuchIdentity, NotCaughtUp, UnknownMember
from .unit_of_work import Render, UnitOfWork, execute
from .views import member_out


def normalise(services: Services, identity: IdentityIn, *, field: str) -> Identity:
    """Normalise one identity, naming the field that is wrong."""
    try:
        return normalise_identity(
            identity.kind, identity.value, default_region=services.settings.default_region
        )
    except InvalidIdentity as exc:
        inner = str(exc.extra.get("field", "value"))
        name = f"{field}.{inner}" if field else inner
        raise InvalidInput([(name, exc.detail)]) from None


async def enrol(services: Services, ctx: CommandContext, body: EnrolIn) -> Reply:
    """Enrol a new member with one or more identities (each must be free)."""
    identities: list[Identity] = []
    for i, given in enumerate(body.identities):
        identity = normalise(services, given, field=f"identities[{i}]")
        if identity not in identities:
            identities.append(identity)
    profile = None
    if body.profile is not None:
        profile = Profile(name=body.profile.name, birthday=body.profile.birthday, locale=body.profile.locale)
    member_id = uuid4()

    async def decide(uow: UnitOfWork) -> Render:
        program = await uow.program()
        member = Member.enrol(
            member_id=member_id,
            identities=identities,
            profile=profile,
            channel=ctx.channel,
            at=ctx.now,
            rules=program.rules,
        )
        uow.new_member(member)
        for identity in identities:
            uow.claim_identity(identity, member_id)
        return lambda position: member_out(
            member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes, position=position
        )

    return await execute(services, ctx, [member_id], decide)


async def link_identity(services: Services, ctx: CommandContext, member_id: UUID, body: IdentityIn) -> Reply:
    """Bind one more identity to a member (409 if another member holds it)."""
    identity = normalise(services, body, field="")

    async def decide(uow: UnitOfWork) -> Render:
        member = await uow.member(member_id)
        program = await uow.program()
        if member.link_identity(identity=identity, channel=ctx.channel, at=ctx.now):
            uow.claim_identity(identity, member_id)
        return lambda position: member_out(
            member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes, position=position
        )

    return await execute(services, ctx, [member_id], decide)


async def unlink_identity(
    services: Services, ctx: CommandContext, member_id: UUID, body: IdentityIn
) -> Reply:
    """Unbind one identity from a member (never the last one); it is free to bind again."""
    identity = normalise(services, body, field="")

    async def decide(uow: UnitOfWork) -> Render:
        member = await uow.member(member_id)
        program = await uow.program()
        member.unlink_identity(identity=identity, channel=ctx.channel, at=ctx.now)
        uow.release_identity(identity, member_id)
        return lambda position: member_out(
            member, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes, position=position
        )

    return await execute(services, ctx, [member_id], decide)


async def merge(services: Services, ctx: CommandContext, target_id: UUID, body: MergeIn) -> Reply:
    """The target absorbs a duplicate member, in one atomic append to both streams."""
    source_id = body.source_member_id

    async def decide(uow: UnitOfWork) -> Render:
        target = await uow.member(target_id)
        source = await uow.member(source_id)
        program = await uow.program()
        moving = list(source.identities)
        target.merge(source=source, at=ctx.now, channel=ctx.channel, rules=program.rules)
        for identity in moving:
            uow.release_identity(identity, source_id)
            uow.claim_identity(identity, target_id)
        return lambda position: member_out(
            target, now=ctx.now, rules=program.rules, reveal="privacy" in ctx.scopes, position=position
        )

    return await execute(services, ctx, [target_id, source_id], decide)


async def get_member(
    services: Services, member_id: UUID, *, reveal: bool, now: datetime, min_position: int | None = None
) -> MemberOut:
    """The member view from the `members` projection (after it reached `min_position`).

    The member itself answers instead when the view cannot: identities in the clear (the
    projection holds them masked), a balance that has changed with time since the member's
    last event (a lot unlocked or expired), or a member the projection has not reached yet.
    """
    if min_position is not None and not await services.projections.wait_for(
        "members", min_position, timeout=services.settings.read_wait_seconds
    ):
        raise NotCaughtUp("members", min_position)
    view = await member_view(services.pool, member_id)
    if view is not None:
        valid_until = view.pop("balance_valid_until", None)
        if not reveal and (valid_until is None or now < valid_until):
            return msgspec.convert(view, MemberOut)
    member = await services.repository.member(member_id)
    if member is None:
        raise UnknownMember(member_id)
    program = await services.repository.program()
    position = None if view is None else view["position"]
    return member_out(member, now=now, rules=program.rules, reveal=reveal, position=position)


async def lookup(services: Services, body: IdentityIn) -> UUID:
    """The member that owns this identity; UnknownMember when none does."""
    identity = normalise(services, body, field="")
    value_hash = services.keyring.identity_hash(identity.kind, identity.value)
    owner = await services.store.identity_owner(identity.kind, value_hash)
    if owner is None:
        raise NoSuchIdentity(identity.kind)
    return owner
