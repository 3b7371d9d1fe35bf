"""Domain errors: each class is one problem type, and declares its code and status once.

`status` follows the HTTP API's convention (404 unknown, 409 a business rule or a conflict,
422 invalid input); the HTTP layer reads it, the domain never acts on it.
"""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A business rule refused a command; `code` names the problem type."""

    code: ClassVar[str] = "domain_error"
    title: ClassVar[str] = "Domain rule violated"
    # Every subclass declares its own; one that forgot is a bug, answered as one (500, logged).
    status: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        # JSON-able values only (str/int/list/dict): they go straight into the problem body.
        self.extra: dict[str, object] = dict(extra)


class MemberNotActive(DomainError):
    """The member was merged or forgotten (one of the two subclasses is raised)."""

    code: ClassVar[str] = "member_not_active"
    title: ClassVar[str] = "Member is not active"
    status: ClassVar[int] = 409


class MemberMerged(MemberNotActive):
    """The member was merged into another; `merged_into` names the survivor."""

    code: ClassVar[str] = "member_merged"
    title: ClassVar[str] = "Member was merged"


class MemberForgotten(MemberNotActive):
    """The member's personal data was erased at their request; the account is closed."""

    code: ClassVar[str] = "member_forgotten"
    title: ClassVar[str] = "Member was forgotten"


class InsufficientPoints(DomainError):
    """Fewer points are available than the command needs."""

    code: ClassVar[str] = "insufficient_points"
    title: ClassVar[str] = "Insufficient points"
    status: ClassVar[int] = 409


class BelowRedemptionMinimum(DomainError):
    """A redemption asks for fewer points than the program's minimum."""

    code: ClassVar[str] = "below_redemption_minimum"
    title: ClassVar[str] = "Below the redemption minimum"
    status: ClassVar[int] = 422


class UnknownCurrency(DomainError):
    """The currency is not an active ISO 4217 code."""

    code: ClassVar[str] = "unknown_currency"
    title: ClassVar[str] = "Unknown currency"
    status: ClassVar[int] = 422


class CurrencyMismatch(DomainError):
    """The amount is in another currency than the program's."""

    code: ClassVar[str] = "currency_mismatch"
    title: ClassVar[str] = "Currency does not match the program"
    status: ClassVar[int] = 422


class DuplicateOrder(DomainError):
    """Points were already earned for this order."""

    code: ClassVar[str] = "duplicate_order"
    title: ClassVar[str] = "Order already earned"
    status: ClassVar[int] = 409


class InvalidIdentity(DomainError):
    """An identity's kind or value is not acceptable."""

    code: ClassVar[str] = "invalid_identity"
    title: ClassVar[str] = "Invalid identity"
    status: ClassVar[int] = 422


class InvalidRules(DomainError):
    """A rules document breaks one or more constraints (listed in `errors`)."""

    code: ClassVar[str] = "invalid_rules"
    title: ClassVar[str] = "Invalid rules"
    status: ClassVar[int] = 422


class InvalidAmount(DomainError):
    """A money amount or point count is out of range or too precise."""

    code: ClassVar[str] = "invalid_amount"
    title: ClassVar[str] = "Invalid amount"
    status: ClassVar[int] = 422


class IdentityNotLinked(DomainError):
    """The identity is not one of this member's."""

    code: ClassVar[str] = "identity_not_linked"
    title: ClassVar[str] = "Identity not linked"
    status: ClassVar[int] = 404


class LastIdentity(DomainError):
    """Unlinking would leave the member with no identity."""

    code: ClassVar[str] = "last_identity"
    title: ClassVar[str] = "Last identity"
    status: ClassVar[int] = 409


class MergeRefused(DomainError):
    """The members cannot be merged (the same member, or open holds on the source)."""

    code: ClassVar[str] = "merge_refused"
    title: ClassVar[str] = "Merge refused"
    status: ClassVar[int] = 409


class OrderNotEarned(DomainError):
    """No purchase with this order reference earned points for the member."""

    code: ClassVar[str] = "order_not_found"
    title: ClassVar[str] = "Order not found"
    status: ClassVar[int] = 404


class OverRefund(DomainError):
    """A refund for more than what remains of the order."""

    code: ClassVar[str] = "over_refund"
    title: ClassVar[str] = "Refund exceeds the order"
    status: ClassVar[int] = 409


class RedemptionNotFound(DomainError):
    """No redemption of the member has this id."""

    code: ClassVar[str] = "redemption_not_found"
    title: ClassVar[str] = "Redemption not found"
    status: ClassVar[int] = 404


class AlreadyReversed(DomainError):
    """The redemption was undone already."""

    code: ClassVar[str] = "already_reversed"
    title: ClassVar[str] = "Already reversed"
    status: ClassVar[int] = 409


class HoldNotFound(DomainError):
    """No hold has this id."""

    code: ClassVar[str] = "hold_not_found"
    title: ClassVar[str] = "Hold not found"
    status: ClassVar[int] = 404


class HoldNotActive(DomainError):
    """The hold was captured, released or has expired."""

    code: ClassVar[str] = "hold_not_active"
    title: ClassVar[str] = "Hold not active"
    status: ClassVar[int] = 409


class CaptureExceedsHold(DomainError):
    """A capture asks for more points than the hold reserved."""

    code: ClassVar[str] = "capture_exceeds_hold"
    title: ClassVar[str] = "Capture exceeds the hold"
    status: ClassVar[int] = 422


class TransferRefused(DomainError):
    """The transfer cannot be made (to the same member)."""

    code: ClassVar[str] = "transfer_refused"
    title: ClassVar[str] = "Transfer refused"
    status: ClassVar[int] = 409


class InvalidCampaign(DomainError):
    """A campaign breaks one or more constraints (listed in `errors`, each naming its field)."""

    code: ClassVar[str] = "invalid_campaign"
    title: ClassVar[str] = "Invalid campaign"
    status: ClassVar[int] = 422


class CampaignNotFound(DomainError):
    """No campaign has this id."""

    code: ClassVar[str] = "campaign_not_found"
    title: ClassVar[str] = "Campaign not found"
    status: ClassVar[int] = 404


class CampaignAlreadyEnded(DomainError):
    """The campaign was ended already."""

    code: ClassVar[str] = "campaign_ended"
    title: ClassVar[str] = "Campaign already ended"
    status: ClassVar[int] = 409
