"""Points: earn, quote, redeem, balance, history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service.handlers import ledger
from service.handlers.context import CommandContext
from service.services import Services

from .auth import command_context, requires
from .responses import reply
from .schemas import BalanceAtOut, EarnIn, EarnOut, HistoryOut, QuoteIn, QuoteOut, RedeemIn, RedeemOut


class LedgerController(Controller):
    path = "/v1"
    tags = ["ledger"]
    dependencies = {"ctx": Provide(command_context)}

    @post(
        "/members/{member_id:uuid}/earn",
        guards=[requires("earn", "award")],
        status_code=201,
        summary="Earn points for a purchase, or award points (scope award)",
    )
    async def earn(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[EarnIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[EarnOut]:
        """A purchase needs the `earn` scope; an award (`points`, `reason`) the `award` scope."""
        kind = ledger.earn_kind(data)
        scope = "award" if kind == "award" else "earn"
        if scope not in ctx.scopes:
            raise PermissionDeniedException(f"this API key lacks the {scope!r} scope")
        return reply(await ledger.earn(services, ctx, member_id, data, kind))

    @post(
        "/quotes/earn",
        guards=[requires("read")],
        status_code=200,
        summary="What a purchase would earn; nothing is written",
    )
    async def quote(self, data: JSONBody[QuoteIn], services: NamedDependency[Services]) -> QuoteOut:
        return await ledger.quote(services, data.member_id, data, now=datetime.now(UTC))

    @post(
        "/members/{member_id:uuid}/redeem",
        guards=[requires("redeem")],
        status_code=201,
        summary="Redeem points",
    )
    async def redeem(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[RedeemIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[RedeemOut]:
        return reply(await ledger.redeem(services, ctx, member_id, data))

    @get(
        "/members/{member_id:uuid}/balance", guards=[requires("read")], summary="Balance now or at an instant"
    )
    async def balance(
        self,
        member_id: FromPath[UUID],
        services: NamedDependency[Services],
        as_of: FromQuery[datetime | None] = None,
    ) -> BalanceAtOut:
        return await ledger.balance(services, member_id, now=datetime.now(UTC), as_of=as_of)

    @get("/members/{member_id:uuid}/history", guards=[requires("read")], summary="The member's events")
    async def history(
        self,
        member_id: FromPath[UUID],
        services: NamedDependency[Services],
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> HistoryOut:
        return await ledger.history(services, member_id, after=after, limit=limit)
