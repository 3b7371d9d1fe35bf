"""Points: earn, quote, redeem, reversals, adjustments, transfers; balance and history."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import PermissionDeniedException
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from domain.member_values import PurchaseItem
from service.handlers import ledger
from service.handlers.commands import (
    Adjust,
    Award,
    EarnPurchase,
    QuotePurchase,
    Redeem,
    ReverseEarn,
    ReverseRedemption,
    Transfer,
)
from service.handlers.context import CommandContext
from service.handlers.errors import InvalidInput
from service.services import Services
from service.store.access import Principal

from .auth import command_context, requires
from .responses import reply
from .schemas import (
    AdjustmentIn,
    AdjustmentOut,
    BalanceAtOut,
    EarnIn,
    EarnOut,
    HistoryOut,
    LotsOut,
    PurchaseItemIn,
    QuoteIn,
    QuoteOut,
    RedeemIn,
    RedeemOut,
    ReversalIn,
    ReversalOut,
    TransferIn,
    TransferOut,
)
from .views import (
    adjustment_out,
    balance_at_out,
    earn_out,
    history_out,
    lots_out,
    quote_out,
    redeem_out,
    reversal_out,
    transfer_out,
)

_PURCHASE_FIELDS = ("order_ref", "amount", "currency", "occurred_at", "items")
_AWARD_FIELDS = ("points", "reason")


def earn_command(member_id: UUID, body: EarnIn) -> EarnPurchase | Award:
    """The body's command: a purchase or an award, checking that it is wholly one of them."""
    given = {f for f in (*_PURCHASE_FIELDS, *_AWARD_FIELDS) if getattr(body, f) is not None}
    if given & set(_AWARD_FIELDS) and given & set(_PURCHASE_FIELDS):
        stray = sorted(given & set(_AWARD_FIELDS))
        raise InvalidInput(
            [(f, "not allowed in a purchase earn (an award has only points and reason)") for f in stray]
        )
    if given & set(_AWARD_FIELDS):
        if body.points is None or body.reason is None:
            raise InvalidInput(
                [(f, "required for an award") for f in _AWARD_FIELDS if getattr(body, f) is None]
            )
        return Award(member_id=member_id, points=body.points, reason=body.reason)
    if body.order_ref is None or body.amount is None or body.currency is None:
        missing = [f for f in ("order_ref", "amount", "currency") if getattr(body, f) is None]
        raise InvalidInput([(f, "required for a purchase") for f in missing])
    return EarnPurchase(
        member_id=member_id,
        order_ref=body.order_ref,
        amount=Decimal(body.amount),
        currency=body.currency,
        items=_items(body.items),
        occurred_at=body.occurred_at,
    )


def reversal_command(member_id: UUID, body: ReversalIn) -> ReverseEarn | ReverseRedemption:
    """The body's command: a refund (`order_ref`, `amount`?) or an undone redemption
    (`redemption_id`), checking that it is wholly one of them."""
    if body.redemption_id is not None:
        stray = [f for f in ("order_ref", "amount") if getattr(body, f) is not None]
        if stray:
            raise InvalidInput([(f, "not allowed when undoing a redemption (redemption_id)") for f in stray])
        return ReverseRedemption(member_id=member_id, redemption_id=body.redemption_id)
    if body.order_ref is None:
        raise InvalidInput([("order_ref", "required for a refund (or redemption_id, to undo a redemption)")])
    amount = None if body.amount is None else Decimal(body.amount)
    return ReverseEarn(member_id=member_id, order_ref=body.order_ref, amount=amount)


def redeem_command(member_id: UUID, body: RedeemIn) -> Redeem:
    return Redeem(
        member_id=member_id, points=body.points, reward_ref=body.reward_ref, order_ref=body.order_ref
    )


def adjustment_command(member_id: UUID, body: AdjustmentIn) -> Adjust:
    return Adjust(
        member_id=member_id, points=body.points, reason=body.reason, allow_negative=body.allow_negative
    )


def transfer_command(member_id: UUID, body: TransferIn) -> Transfer:
    return Transfer(member_id=member_id, to_member_id=body.to_member_id, points=body.points)


def _require_scope(ctx: CommandContext, scope: str) -> None:
    """One endpoint, two commands: the guard let in either scope, the command needs its own."""
    if scope not in ctx.scopes:
        raise PermissionDeniedException(f"this API key lacks the {scope!r} scope")


def _items(items: list[PurchaseItemIn] | None) -> list[PurchaseItem]:
    return [
        PurchaseItem(sku=i.sku, category=i.category, amount=Decimal(i.amount), quantity=i.quantity)
        for i in items or ()
    ]


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
        cmd = earn_command(member_id, data)
        _require_scope(ctx, "award" if isinstance(cmd, Award) else "earn")
        return reply(await ledger.earn(services, ctx, cmd), earn_out)

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
    )
    async def redeem(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[RedeemIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[RedeemOut]:
        return reply(await ledger.redeem(services, ctx, redeem_command(member_id, data)), redeem_out)

    @post(
        "/members/{member_id:uuid}/reversals",
        guards=[requires("earn", "redeem")],
        status_code=201,
        summary="Refund a purchase (scope earn), or undo a redemption (scope redeem)",
    )
    async def reverse(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[ReversalIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[ReversalOut]:
        """A refund (`order_ref`, `amount`: none for the rest of the order) takes back the
        order's points in proportion and needs the `earn` scope; `redemption_id` gives a
        redemption's points back into their lots and needs the `redeem` scope."""
        cmd = reversal_command(member_id, data)
        _require_scope(ctx, "earn" if isinstance(cmd, ReverseEarn) else "redeem")
        return reply(await ledger.reverse(services, ctx, cmd), reversal_out)

    @post(
        "/members/{member_id:uuid}/adjustments",
        guards=[requires("adjust")],
        status_code=201,
        summary="Correct a balance by points of either sign",
    )
    async def adjust(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[AdjustmentIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[AdjustmentOut]:
        """A negative adjustment past `available` is 409 `insufficient_points` unless
        `allow_negative`."""
        return reply(await ledger.adjust(services, ctx, adjustment_command(member_id, data)), adjustment_out)

    @post(
        "/members/{member_id:uuid}/transfers",
        guards=[requires("transfer")],
        status_code=201,
        summary="Move points to another member",
    )
    async def transfer(
        self,
        member_id: FromPath[UUID],
        data: JSONBody[TransferIn],
        services: NamedDependency[Services],
        ctx: NamedDependency[CommandContext],
    ) -> Response[TransferOut]:
        """Both members change in one atomic write; the points keep their expiry. The balance
        answered is the sender's."""
        return reply(await ledger.transfer(services, ctx, transfer_command(member_id, data)), transfer_out)

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
