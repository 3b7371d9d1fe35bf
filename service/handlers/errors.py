"""Errors of the use-case layer (the domain's own are in domain/errors.py).

Like the domain's, each class is one problem type and declares its code and status once; the
HTTP layer has one handler for all of them (service/api/errors.py).
"""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from domain.errors import DomainError


class UnknownMember(DomainError):
    code: ClassVar[str] = "member_not_found"
    title: ClassVar[str] = "Member not found"
    status: ClassVar[int] = 404

    def __init__(self, member_id: UUID) -> None:
        super().__init__(f"no member {member_id}", member_id=str(member_id))


class NoSuchIdentity(DomainError):
    code: ClassVar[str] = "member_not_found"
    title: ClassVar[str] = "Member not found"
    status: ClassVar[int] = 404

    def __init__(self, kind: str) -> None:
        super().__init__(f"no active member holds this {kind} identity")


class NotFound(DomainError):
    code: ClassVar[str] = "not_found"
    title: ClassVar[str] = "Not found"
    status: ClassVar[int] = 404


class Busy(DomainError):
    """The same member kept changing under the command (other instances): retry shortly."""

    code: ClassVar[str] = "busy"
    title: ClassVar[str] = "Too many concurrent changes"
    status: ClassVar[int] = 503

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class InvalidInput(DomainError):
    """Input that is well-formed but breaks a rule of the API; names each offending field."""

    code: ClassVar[str] = "validation_error"
    title: ClassVar[str] = "Invalid request"
    status: ClassVar[int] = 422

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{field}: {message}" for field, message in errors),
            errors=[{"field": field, "message": message} for field, message in errors],
        )


class NotCaughtUp(DomainError):
    """A read asked for `min_position` and the projection did not reach it in time."""

    code: ClassVar[str] = "projection_behind"
    title: ClassVar[str] = "Projection not caught up"
    status: ClassVar[int] = 503

    def __init__(self, projection: str, position: int) -> None:
        super().__init__(
            f"the {projection} projection has not reached position {position} yet; retry",
            projection=projection,
            min_position=position,
        )


class OrderTaken(DomainError):
    """Another member already earned for this order (an order earns once, program-wide)."""

    code: ClassVar[str] = "duplicate_order"
    title: ClassVar[str] = "Order already earned"
    status: ClassVar[int] = 409


class IdentityTaken(DomainError):
    """The identity belongs to another active member."""

    code: ClassVar[str] = "identity_taken"
    title: ClassVar[str] = "Identity already bound"
    status: ClassVar[int] = 409

    def __init__(self, kind: str, owner: UUID) -> None:
        super().__init__(f"this {kind} identity belongs to another member", member_id=str(owner))


class IdempotencyKeyReused(DomainError):
    """The Idempotency-Key was used before with a different request."""

    code: ClassVar[str] = "idempotency_key_reused"
    title: ClassVar[str] = "Idempotency key reused"
    status: ClassVar[int] = 409

    def __init__(self) -> None:
        super().__init__("this Idempotency-Key was already used with a different request")


class ChannelExists(DomainError):
    code: ClassVar[str] = "channel_exists"
    title: ClassVar[str] = "Channel exists"
    status: ClassVar[int] = 409

    def __init__(self, channel: str) -> None:
        super().__init__(f"channel {channel!r} already exists")


class TooManyStreams(DomainError):
    """This instance serves as many live streams as it will: retry later (or on another instance)."""

    code: ClassVar[str] = "too_many_streams"
    title: ClassVar[str] = "Too many live streams"
    status: ClassVar[int] = 503

    def __init__(self, limit: int) -> None:
        super().__init__(f"this instance already serves {limit} live streams; retry later")
