"""Holds: reserve points at a checkout, then capture them (whole or in part) or release them."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from litestar import Controller, Response, post
from litestar.di import NamedDependency, Provide
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import FromPath, JSONBody

from service.handlers import holds
from service.handlers.commands import CaptureHold, PlaceHold, ReleaseHold
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .responses import reply
from .schemas import CaptureIn, HoldClosedOut, HoldIn, HoldOut, ReleaseIn
from .views import hold_closed_out, hold_out


@dataclass
class _BodyMayBeAbsent(Operation):
    """Litestar declares every request body required; a release's may be left out."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


def hold_command(member_id: UUID, body: HoldIn) -> PlaceHold:
    return PlaceHold(
        member_id=member_id, points=body.points, ttl_seconds=body.ttl_seconds, order_ref=body.order_ref
    )


def capture_command(hold_id: UUID, body: CaptureIn) -> CaptureHold:
    return CaptureHold(hold_id=hold_id, points=body.points)


class HoldsController(Controller):
    path = "/v1"
    tags = ["holds"]
    dependencies = {"ctx": Provide(command_context)}
    # A hold is spending that has not happened yet: every step of it is the `redeem` scope's.
    guards = [requires("redeem")]

    @post("/members/{member_id:uuid}/holds", status_code=201, summary="Reserve points for a while")
    async def place(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[HoldIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[HoldOut]:
        """The points leave `available` until the hold is captured, released, or expires after
        `ttl_seconds` (then the service releases it on its own)."""
        return reply(await holds.place(services, ctx, hold_command(member_id, data)), hold_out)

    @post("/holds/{hold_id:uuid}/capture", status_code=201, summary="Spend a hold, whole or in part")
    async def capture(
        self,
        hold_id: FromPath[UUID],
        data: JSONBody[CaptureIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[HoldClosedOut]:
        """`points` none: the whole hold; fewer: the rest is released. A hold captured, released
        or expired is 409 `hold_not_active`."""
        return reply(await holds.capture(services, ctx, capture_command(hold_id, data)), hold_closed_out)

    @post(
        "/holds/{hold_id:uuid}/release",
        status_code=201,
        summary="Give a hold's points back",
        operation_class=_BodyMayBeAbsent,
    )
    async def release(
        self,
        hold_id: FromPath[UUID],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
        # A release has nothing to say: no body, or `{}` (anything else is refused, as everywhere).
        data: JSONBody[ReleaseIn | None] = None,
    ) -> Response[HoldClosedOut]:
        """A hold captured, released or expired is 409 `hold_not_active`."""
        return reply(await holds.release(services, ctx, ReleaseHold(hold_id=hold_id)), hold_closed_out)
