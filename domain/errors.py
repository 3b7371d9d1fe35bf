"""Domain errors: each one is a problem type the HTTP layer maps to a status."""

from __future__ import annotations

from typing import ClassVar


class DomainError(Exception):
    """A business rule refused a command; `code` names the problem type."""

    code: ClassVar[str] = "domain_error"
    title: ClassVar[str] = "Domain rule violated"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.detail = detail
        # JSON-able values only (str/int/list/dict): they go straight into the problem body.
        self.extra: dict[str, object] = dict(extra)


class MemberNotActive(DomainError):
    """The member was merged or forgotten; the code says which."""

    code: ClassVar[str] = "member_not_active"
    title: ClassVar[str] = "Member is not active"

    def __init__(self, detail: str, **extra: object) -> None:
        super().__init__(detail, **extra)
        # One class, two problem types: the instance carries the one that applies.
        merged = extra.get("status") == "merged"
        vars(self)["code"] = "member_merged" if merged else "member_forgotten"
        vars(self)["title"] = "Member was merged" if merged else "Member was forgotten"


class InsufficientPoints(DomainError):
    """Fewer points are available than the command needs."""

    code: ClassVar[str] = "insufficient_points"
    title: ClassVar[str] = "Insufficient points"


class BelowRedemptionMinimum(DomainError):
    """A redemption asks for fewer points than the program's minimum."""

    code: ClassVar[str] = "below_redemption_minimum"
    title: ClassVar[str] = "Below the redemption minimum"


class UnknownCurrency(DomainError):
    """The currency is not an active ISO 4217 code."""

    code: ClassVar[str] = "unknown_currency"
    title: ClassVar[str] = "Unknown currency"


class CurrencyMismatch(DomainError):
    """The amount is in another currency than the program's."""

    code: ClassVar[str] = "currency_mismatch"
    title: ClassVar[str] = "Currency does not match the program"


class DuplicateOrder(DomainError):
    """Points were already earned for this order."""

    code: ClassVar[str] = "duplicate_order"
    title: ClassVar[str] = "Order already earned"


class InvalidIdentity(DomainError):
    """An identity's kind or value is not acceptable."""

    code: ClassVar[str] = "invalid_identity"
    title: ClassVar[str] = "Invalid identity"


class InvalidRules(DomainError):
    """A rules document breaks one or more constraints (listed in `errors`)."""

    code: ClassVar[str] = "invalid_rules"
    title: ClassVar[str] = "Invalid rules"


class InvalidAmount(DomainError):
    """A money amount or point count is out of range or too precise."""

    code: ClassVar[str] = "invalid_amount"
    title: ClassVar[str] = "Invalid amount"


class IdentityNotLinked(DomainError):
    """The identity is not one of this member's."""

    code: ClassVar[str] = "identity_not_linked"
    title: ClassVar[str] = "Identity not linked"


class LastIdentity(DomainError):
    """Unlinking would leave the member with no identity."""

    code: ClassVar[str] = "last_identity"
    title: ClassVar[str] = "Last identity"


class MergeRefused(DomainError):
    """The members cannot be merged (the same member, or open holds on the source)."""

    code: ClassVar[str] = "merge_refused"
    title: ClassVar[str] = "Merge refused"
