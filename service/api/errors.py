"""The one place where errors become problem+json responses (RFC 9457)."""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)

from domain.errors import DomainError
from service.store.appender import IdempotencyKeyReused, IdentityClaimed, OrderClaimed

from .schemas import Problem, ProblemField

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://loyalty-ledger.dev/problems/"

# Problem type (code) -> HTTP status. 404 unknown, 409 business rule or conflict, 422 invalid.
STATUS_OF_CODE: dict[str, int] = {
    "member_not_found": 404,
    "not_found": 404,
    "member_merged": 409,
    "member_forgotten": 409,
    "insufficient_points": 409,
    "duplicate_order": 409,
    "identity_taken": 409,
    "idempotency_key_reused": 409,
    "channel_exists": 409,
    "identity_not_linked": 404,
    "last_identity": 409,
    "merge_refused": 409,
    "below_redemption_minimum": 422,
    "unknown_currency": 422,
    "currency_mismatch": 422,
    "invalid_identity": 422,
    "invalid_rules": 422,
    "invalid_amount": 422,
    "validation_error": 422,
    "forbidden": 403,
    "busy": 503,
    "projection_behind": 503,
}

_encoder = msgspec.json.Encoder()


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[ProblemField] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[bytes]:
    body = msgspec.to_builtins(
        Problem(type=TYPE_BASE + code, title=title, status=status, detail=detail, errors=errors)
    )
    if errors is None:
        body.pop("errors", None)
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return Response(content=_encoder.encode(body), status_code=status, media_type=PROBLEM_JSON)


def domain_error(_: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    extra = dict(exc.extra)
    errors = None
    if "errors" in extra:
        errors = [ProblemField(field=e["field"], message=e["message"]) for e in extra.pop("errors")]  # type: ignore[attr-defined]
    elif "field" in extra and exc.code in ("invalid_amount", "invalid_identity", "unknown_currency"):
        errors = [ProblemField(field=str(extra["field"]), message=exc.detail)]
    status = STATUS_OF_CODE.get(exc.code, 409)
    return problem(status, exc.code, exc.title, exc.detail, errors=errors, extra=extra)


def append_rejected(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, OrderClaimed):
        return problem(
            409,
            "duplicate_order",
            "Order already earned",
            str(exc),
            extra={"order_ref": exc.order_ref, "member_id": str(exc.member_id)},
        )
    if isinstance(exc, IdentityClaimed):
        return problem(
            409, "identity_taken", "Identity already bound", str(exc), extra={"member_id": str(exc.member_id)}
        )
    if isinstance(exc, IdempotencyKeyReused):
        return problem(
            409,
            "idempotency_key_reused",
            "Idempotency key reused",
            "this Idempotency-Key was already used with a different request",
        )
    return unexpected(_, exc)


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


def _field_problem(item: dict[str, Any]) -> ProblemField:
    """Litestar names the body `data` and nested paths with dots; callers know field paths."""
    key = str(item.get("key", ""))
    message = str(item.get("message", "is invalid"))
    path = "" if key in ("", "data") else key.removeprefix("data.")
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:  # name the stray field itself, not the object that holds it
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return ProblemField(field=path or "body", message=message)


def validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    fields = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            fields.append(_field_problem(item))
    if not fields:
        # Not a field problem: the body is not JSON (or not an object) at all.
        return problem(400, "malformed_request", "Malformed request", str(exc.detail))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return problem(422, "validation_error", "Invalid request", detail, errors=fields)


_HTTP_PROBLEMS = {
    400: ("malformed_request", "Malformed request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("request_too_large", "Request too large"),
}


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotAuthorizedException):
        return problem(401, "unauthorized", "Unauthorized", exc.detail)
    if isinstance(exc, PermissionDeniedException):
        return problem(403, "forbidden", "Forbidden", exc.detail)
    code, title = _HTTP_PROBLEMS.get(exc.status_code, ("http_error", "HTTP error"))
    response = problem(exc.status_code, code, title, exc.detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", extra={"path": request.url.path})
    return problem(
        500, "internal_error", "Internal error", "an unexpected error occurred; it has been logged"
    )


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DomainError: domain_error,
    OrderClaimed: append_rejected,
    IdentityClaimed: append_rejected,
    IdempotencyKeyReused: append_rejected,
    ValidationException: validation_error,
    HTTPException: http_error,
    Exception: unexpected,
}

__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "problem"]
