"""Holds: reserve points at a checkout, then capture them (whole or in part) or release them."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from litestar import Controller, Response, post
from litestar.openapi.spec import Operation, RequestBody
from litestar.params import FromPath, JSONBody

from .auth import requires
from .lean import answered_here, command
from .schemas import CaptureIn, HoldClosedOut, HoldIn, HoldOut, ReleaseIn


@dataclass
class _BodyMayBeAbsent(Operation):
    """Litestar declares every request body required; a release's may be left out."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False


class HoldsController(Controller):
    """Answered on the lean path (lean.py, ADR 24) by their Operations: declared here."""

    path = "/v1"
    tags = ["holds"]
    # A hold is spending that has not happened yet: every step of it is the `redeem` scope's.
    guards = [requires("redeem")]

    @post(
        "/members/{member_id:uuid}/holds",
        status_code=201,
        summary="Reserve points for a while",
        opt=command("hold"),
    )
    async def place(self, member_id: FromPath[UUID], data: JSONBody[HoldIn]) -> Response[HoldOut]:
        """The points leave `available` until the hold is captured, released, or expires after
        `ttl_seconds` (then the service releases it on its own)."""
        answered_here()

    @post(
        "/holds/{hold_id:uuid}/capture",
        status_code=201,
        summary="Spend a hold, whole or in part",
        opt=command("capture"),
    )
    async def capture(self, hold_id: FromPath[UUID], data: JSONBody[CaptureIn]) -> Response[HoldClosedOut]:
        """`points` none: the whole hold; fewer: the rest is released. A hold captured, released
        or expired is 409 `hold_not_active`."""
        answered_here()

    @post(
        "/holds/{hold_id:uuid}/release",
        status_code=201,
        summary="Give a hold's points back",
        operation_class=_BodyMayBeAbsent,
        opt=command("release"),
    )
    async def release(
        self,
        hold_id: FromPath[UUID],
        # A release has nothing to say: no body, or `{}` (anything else is refused, as everywhere).
        data: JSONBody[ReleaseIn | None] = None,
    ) -> Response[HoldClosedOut]:
        """A hold captured, released or expired is 409 `hold_not_active`."""
        answered_here()
