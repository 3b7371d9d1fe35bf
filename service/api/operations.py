"""The commands of the ledger's endpoints, each one way: its body → its command → its scope → its
use case → its answer.

A command endpoint (`POST /v1/members/{id}/earn`, …) and a batch item of the same `op` run the same
Operation: the request's body decoded into `body`, turned into a command with the path's id,
checked against the scope it needs, run, and its result rendered as the endpoint answers it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import msgspec

from domain.member_values import PurchaseItem
from service.handlers import holds, ledger
from service.handlers.commands import (
    Adjust,
    Award,
    CaptureHold,
    EarnPurchase,
    PlaceHold,
    Redeem,
    ReleaseHold,
    ReverseEarn,
    ReverseRedemption,
    Transfer,
)
from service.handlers.context import CommandContext
from service.handlers.errors import InvalidInput
from service.handlers.results import Outcome
from service.services import Services

from .schemas import (
    AdjustmentIn,
    CaptureIn,
    EarnIn,
    HoldIn,
    PurchaseItemIn,
    RedeemIn,
    ReleaseIn,
    ReversalIn,
    TransferIn,
)
from .views import (
    adjustment_out,
    earn_out,
    hold_closed_out,
    hold_out,
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


def _items(items: list[PurchaseItemIn] | None) -> list[PurchaseItem]:
    return [
        PurchaseItem(sku=i.sku, category=i.category, amount=Decimal(i.amount), quantity=i.quantity)
        for i in items or ()
    ]


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


def hold_command(member_id: UUID, body: HoldIn) -> PlaceHold:
    return PlaceHold(
        member_id=member_id, points=body.points, ttl_seconds=body.ttl_seconds, order_ref=body.order_ref
    )


def capture_command(hold_id: UUID, body: CaptureIn) -> CaptureHold:
    return CaptureHold(hold_id=hold_id, points=body.points)


def release_command(hold_id: UUID, _: ReleaseIn | None) -> ReleaseHold:
    return ReleaseHold(hold_id=hold_id)


@dataclass(frozen=True, slots=True)
class Operation:
    """How one kind of command runs, from its endpoint's body to its endpoint's answer."""

    path: str  # e.g. "/v1/members/{member_id}/earn": what a batch item is fingerprinted as
    body: type[Any]  # what a batch item's body decodes into (the endpoint declares its own)
    target: Literal["member", "hold"]  # what the path's id names
    command: Callable[[UUID, Any], Any]  # InvalidInput when the body is not wholly one command
    scope: Callable[[Any], str]  # the scope the command needs (the endpoint's guard lets in any)
    run: Callable[[Services, CommandContext, Any], Awaitable[Outcome[Any]]]
    render: Callable[[Any, int], msgspec.Struct]  # the result with its position, as answered


def _earn_scope(cmd: EarnPurchase | Award) -> str:
    return "award" if isinstance(cmd, Award) else "earn"


def _reversal_scope(cmd: ReverseEarn | ReverseRedemption) -> str:
    return "earn" if isinstance(cmd, ReverseEarn) else "redeem"


_MEMBER = "/v1/members/{member_id}/"
_HOLD = "/v1/holds/{hold_id}/"
OPERATIONS: dict[str, Operation] = {
    "earn": Operation(_MEMBER + "earn", EarnIn, "member", earn_command, _earn_scope, ledger.earn, earn_out),
    "redeem": Operation(
        _MEMBER + "redeem", RedeemIn, "member", redeem_command, lambda _: "redeem", ledger.redeem, redeem_out
    ),
    "reversal": Operation(
        _MEMBER + "reversals",
        ReversalIn,
        "member",
        reversal_command,
        _reversal_scope,
        ledger.reverse,
        reversal_out,
    ),
    "adjustment": Operation(
        _MEMBER + "adjustments",
        AdjustmentIn,
        "member",
        adjustment_command,
        lambda _: "adjust",
        ledger.adjust,
        adjustment_out,
    ),
    "transfer": Operation(
        _MEMBER + "transfers",
        TransferIn,
        "member",
        transfer_command,
        lambda _: "transfer",
        ledger.transfer,
        transfer_out,
    ),
    "hold": Operation(
        _MEMBER + "holds", HoldIn, "member", hold_command, lambda _: "redeem", holds.place, hold_out
    ),
    "capture": Operation(
        _HOLD + "capture",
        CaptureIn,
        "hold",
        capture_command,
        lambda _: "redeem",
        holds.capture,
        hold_closed_out,
    ),
    "release": Operation(
        _HOLD + "release",
        ReleaseIn,
        "hold",
        release_command,
        lambda _: "redeem",
        holds.release,
        hold_closed_out,
    ),
}
