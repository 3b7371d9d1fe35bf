"""/v1/members: enrolment, identities, lookup, the member view."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from domain.identities import Identity
from domain.member_values import Profile
from service.handlers import members
from service.handlers.commands import Enrol, LinkIdentity, Merge, UnlinkIdentity
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .responses import reply
from .schemas import EnrolIn, IdentityIn, MemberOut, MergeIn
from .views import member_out


def _identity(given: IdentityIn) -> Identity:
    return Identity(kind=given.kind, value=given.value)


class MembersController(Controller):
    path = "/v1/members"
    tags = ["members"]
    dependencies = {"ctx": Provide(command_context)}

    @post("/", guards=[requires("members")], status_code=201, summary="Enrol a member")
    async def enrol(
        self,
        data: JSONBody[EnrolIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[MemberOut]:
        profile = None
        if data.profile is not None:
            profile = Profile(
                name=data.profile.name, birthday=data.profile.birthday, locale=data.profile.locale
            )
        cmd = Enrol(identities=[_identity(i) for i in data.identities], profile=profile)
        return reply(await members.enrol(services, ctx, cmd), member_out)

    @get("/lookup", guards=[requires("read")], summary="Find the member owning an identity")
    async def lookup(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        kind: Annotated[str, QueryParameter(max_length=20)],
        value: Annotated[str, QueryParameter(max_length=320)],
    ) -> MemberOut:
        member_id = await members.lookup(services, Identity(kind=kind, value=value))
        state, position = await members.get_member(
            services, member_id, reveal="privacy" in request.user.scopes, now=datetime.now(UTC)
        )
        return member_out(state, position)

    @get("/{member_id:uuid}", guards=[requires("read")], summary="The member view")
    async def get_member(
        self,
        request: Request[Any, Any, Any],
        services: NamedDependency[Services],
        member_id: FromPath[UUID],
        min_position: Annotated[int | None, QueryParameter(ge=0, le=2**63 - 1)] = None,
    ) -> MemberOut:
        """From the members projection; `min_position` waits (up to 5 s, then 503) until it has
        applied that position, so a channel reads its own writes."""
        state, position = await members.get_member(
            services,
            member_id,
            reveal="privacy" in request.user.scopes,
            now=datetime.now(UTC),
            min_position=min_position,
        )
        return member_out(state, position)

    @post(
        "/{member_id:uuid}/identities",
        guards=[requires("members")],
        status_code=201,
        summary="Link an identity to a member",
    )
    async def link_identity(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[IdentityIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[MemberOut]:
        cmd = LinkIdentity(member_id=member_id, identity=_identity(data))
        return reply(await members.link_identity(services, ctx, cmd), member_out)

    @post(
        "/{member_id:uuid}/identities/unlink",
        guards=[requires("members")],
        status_code=201,
        summary="Unlink an identity from a member (never the last)",
    )
    async def unlink_identity(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[IdentityIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[MemberOut]:
        cmd = UnlinkIdentity(member_id=member_id, identity=_identity(data))
        return reply(await members.unlink_identity(services, ctx, cmd), member_out)

    @post(
        "/{member_id:uuid}/merge",
        # Both: a merge hands one person's account (points and identities) to another.
        guards=[requires("members"), requires("privacy")],
        status_code=201,
        summary="Merge a duplicate member into this one (scopes members and privacy)",
    )
    async def merge(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[MergeIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[MemberOut]:
        cmd = Merge(target_id=member_id, source_id=data.source_member_id)
        return reply(await members.merge(services, ctx, cmd), member_out)
