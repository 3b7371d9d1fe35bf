"""Errors of the use-case layer (the domain's own are in domain/errors.py)."""

from __future__ import annotations

from uuid import UUID

from domain.errors import DomainError


class UnknownMember(DomainError):
    code = "member_not_found"
    title = "Member not found"

    def __init__(self, member_id: UUID) -> None:
        super().__init__(f"no member {member_id}", member_id=str(member_id))


class Busy(DomainError):
    code = "busy"
    title = "Too many concurrent changes"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)


class InvalidInput(DomainError):
    """Input that is well-formed but breaks a rule of the API; names each offending field."""

    code = "validation_error"
    title = "Invalid request"

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{field}: {message}" for field, message in errors),
            errors=[{"field": field, "message": message} for field, message in errors],
        )


class MissingScope(DomainError):
    code = "forbidden"
    title = "Missing scope"

    def __init__(self, scope: str) -> None:
        super().__init__(f"this API key lacks the {scope!r} scope", scope=scope)


class NoSuchIdentity(DomainError):
    code = "member_not_found"
    title = "Member not found"

    def __init__(self, kind: str) -> None:
        super().__init__(f"no active member holds this {kind} identity")


class NotFound(DomainError):
    code = "not_found"
    title = "Not found"


class NotCaughtUp(DomainError):
    """A read asked for `min_position` and the projection did not reach it in time."""

    code = "projection_behind"
    title = "Projection not caught up"

    def __init__(self, projection: str, position: int) -> None:
        super().__init__(
            f"the {projection} projection has not reached position {position} yet; retry",
            projection=projection,
            min_position=position,
        )
