"""Points: earn, quote, redeem, reversals, adjustments, transfers; balance and history."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from service.handlers import ledger
from service.handlers.commands import EarnPurchase, QuotePurchase
from service.handlers.errors import InvalidInput
from service.services import Services
from service.store.access import Principal

from .auth import requires
from .lean import answered_here, command
from .operations import earn_command
from .schemas import (
    AdjustmentIn,
    AdjustmentOut,
    BalanceAtOut,
    EarnIn,
    EarnOut,
    HistoryOut,
    LotsOut,
    QuoteIn,
    QuoteOut,
    RedeemIn,
    RedeemOut,
    ReversalIn,
    ReversalOut,
    TransferIn,
    TransferOut,
)
from .views import balance_at_out, history_out, lots_out, quote_out


class LedgerController(Controller):
    """The commands (earn, redeem, reversals, adjustments, transfers) are answered on the lean
    path (lean.py, ADR 24) by their Operation: their handlers here declare them."""

    path = "/v1"
    tags = ["ledger"]

    @post(
        "/members/{member_id:uuid}/earn",
        guards=[requires("earn", "award")],
        status_code=201,
        summary="Earn points for a purchase, or award points (scope award)",
        opt=command("earn"),
    )
    async def earn(self, member_id: FromPath[UUID], data: JSONBody[EarnIn]) -> Response[EarnOut]:
        """A purchase needs the `earn` scope; an award (`points`, `reason`) the `award` scope."""
        answered_here()

    @post(
        "/quotes/earn",
        guards=[requires("read")],
        status_code=200,
        summary="What a purchase would earn; nothing is written",
    )
    async def quote(
        self,
        data: JSONBody[QuoteIn],
        services: NamedDependency[Services],
        request: Request[Principal, Any, Any],
    ) -> QuoteOut:
        """The breakdown the same earn from this key's channel would record now (campaigns
        matched at `occurred_at`, default now); nothing is written."""
        cmd = earn_command(data.member_id, data)
        if not isinstance(cmd, EarnPurchase):
            raise InvalidInput([("order_ref", "a quote is for a purchase")])
        query = QuotePurchase(
            member_id=cmd.member_id,
            amount=cmd.amount,
            currency=cmd.currency,
            items=cmd.items,
            occurred_at=cmd.occurred_at,
        )
        now = datetime.now(UTC)
        return quote_out(await ledger.quote(services, query, now=now, channel=request.user.channel))

    @post(
        "/members/{member_id:uuid}/redeem",
        guards=[requires("redeem")],
        status_code=201,
        summary="Redeem points",
        opt=command("redeem"),
    )
    async def redeem(self, member_id: FromPath[UUID], data: JSONBody[RedeemIn]) -> Response[RedeemOut]:
        answered_here()

    @post(
        "/members/{member_id:uuid}/reversals",
        guards=[requires("earn", "redeem")],
        status_code=201,
        summary="Refund a purchase (scope earn), or undo a redemption (scope redeem)",
        opt=command("reversal"),
    )
    async def reverse(self, member_id: FromPath[UUID], data: JSONBody[ReversalIn]) -> Response[ReversalOut]:
        """A refund (`order_ref`, `amount`: none for the rest of the order) takes back the
        order's points in proportion and needs the `earn` scope; `redemption_id` gives a
        redemption's points back into their lots and needs the `redeem` scope."""
        answered_here()

    @post(
        "/members/{member_id:uuid}/adjustments",
        guards=[requires("adjust")],
        status_code=201,
        summary="Correct a balance by points of either sign",
        opt=command("adjustment"),
    )
    async def adjust(
        self, member_id: FromPath[UUID], data: JSONBody[AdjustmentIn]
    ) -> Response[AdjustmentOut]:
        """A negative adjustment past `available` is 409 `insufficient_points` unless
        `allow_negative`."""
        answered_here()

    @post(
        "/members/{member_id:uuid}/transfers",
        guards=[requires("transfer")],
        status_code=201,
        summary="Move points to another member",
        opt=command("transfer"),
    )
    async def transfer(self, member_id: FromPath[UUID], data: JSONBody[TransferIn]) -> Response[TransferOut]:
        """Both members change in one atomic write; the points keep their expiry. The balance
        answered is the sender's."""
        answered_here()

    @get(
        "/members/{member_id:uuid}/balance", guards=[requires("read")], summary="Balance now or at an instant"
    )
    async def balance(
        self,
        member_id: FromPath[UUID],
        services: NamedDependency[Services],
        as_of: FromQuery[datetime | None] = None,
    ) -> BalanceAtOut:
        return balance_at_out(await ledger.balance(services, member_id, now=datetime.now(UTC), as_of=as_of))

    @get("/members/{member_id:uuid}/history", guards=[requires("read")], summary="The member's events")
    async def history(
        self,
        member_id: FromPath[UUID],
        services: NamedDependency[Services],
        after: Annotated[int, QueryParameter(ge=0, le=2**63 - 1)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> HistoryOut:
        return history_out(await ledger.history(services, member_id, after=after, limit=limit))

    @get(
        "/members/{member_id:uuid}/lots",
        guards=[requires("read")],
        summary="The member's lots: points by when they unlock and expire",
    )
    async def lots(self, member_id: FromPath[UUID], services: NamedDependency[Services]) -> LotsOut:
        """From the member itself (strongly consistent), in the order points are spent."""
        return lots_out(await ledger.lots(services, member_id, now=datetime.now(UTC)))
