"""The one place where errors become problem+json responses (RFC 9457).

- A DomainError (domain or use case) carries its code, title and status on its class.
- Litestar's own errors (401, 403, 404, 405, 413, 415, 429, validation of path and query
  parameters) keep their status and get a problem type.
- The database being unreachable is 503 with `Retry-After`: the request may be retried (with
  the same Idempotency-Key, a command that did commit is answered from its record).
- Anything else is a bug: 500, logged with its traceback, the body saying nothing more.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    PermissionDeniedException,
    ValidationException,
)

from domain.errors import DomainError

from .schemas import Problem, ProblemField

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://loyalty-ledger.dev/problems/"
RETRY_AFTER_SECONDS = 2  # what a 503 asks a client to wait before retrying

_encoder = msgspec.json.Encoder()


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[ProblemField] | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    """A problem+json response; `extra` members are added beside the standard ones."""
    body = problem_body(status, code, title, detail, errors=errors, extra=extra)
    if status == 503 and not (headers and "Retry-After" in headers):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_SECONDS)}
    return Response(
        content=_encoder.encode(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def problem_body(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    errors: list[ProblemField] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The members of a problem (RFC 9457): the standard ones, `errors` when there are any,
    then `extra` (never overriding a standard member)."""
    body: dict[str, Any] = msgspec.to_builtins(
        Problem(type=TYPE_BASE + code, title=title, status=status, detail=detail, errors=errors)
    )
    if errors is None:
        body.pop("errors", None)
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return body


def domain_problem(exc: DomainError) -> dict[str, Any]:
    """The problem of a declared error (its status, code and title are on its class)."""
    extra = dict(exc.extra)
    errors = None
    if "errors" in extra:
        errors = [ProblemField(field=e["field"], message=e["message"]) for e in extra.pop("errors")]  # type: ignore[attr-defined]
    elif "field" in extra and exc.status == 422:
        errors = [ProblemField(field=str(extra["field"]), message=exc.detail)]
    return problem_body(exc.status, exc.code, exc.title, exc.detail, errors=errors, extra=extra)


def domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    if exc.status >= 500 and exc.status != 503:
        return unexpected(request, exc)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else None
    return Response(
        content=_encoder.encode(domain_problem(exc)),
        status_code=exc.status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")
_MISSING_PARAMETER = re.compile(r"Missing required \w+ parameter '([^']+)'")


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
        missing = _MISSING_PARAMETER.search(str(exc.detail))
        if missing:  # a required query or header parameter left out: name it
            fields = [ProblemField(field=missing.group(1), message="is required")]
            return problem(422, "validation_error", "Invalid request", str(exc.detail), errors=fields)
        # Not a field problem: the body is missing, or not JSON at all.
        return problem(400, "malformed_request", "Malformed request", str(exc.detail))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    return problem(422, "validation_error", "Invalid request", detail, errors=fields)


_HTTP_PROBLEMS = {
    400: ("malformed_request", "Malformed request"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("request_too_large", "Request too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("rate_limited", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}


def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if isinstance(exc, NotAuthorizedException):
        bearer = {"WWW-Authenticate": "Bearer"}
        return problem(401, "unauthorized", "Unauthorized", exc.detail, headers=bearer)
    if isinstance(exc, PermissionDeniedException):
        return problem(403, "forbidden", "Forbidden", exc.detail)
    if exc.status_code >= 500 and exc.status_code != 503:
        return unexpected(request, exc)
    code, title = _HTTP_PROBLEMS.get(exc.status_code, ("http_error", "HTTP error"))
    return problem(exc.status_code, code, title, exc.detail, headers=dict(exc.headers or {}))


def malformed(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """A body the JSON decoder gave up on (e.g. nested thousands deep): the client's fault."""
    return problem(400, "malformed_request", "Malformed request", "the request body is not acceptable JSON")


def unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The database cannot be reached (down, restarting, out of connections): retry later."""
    log.warning("database unavailable", extra={"path": request.url.path, "error": type(exc).__name__})
    return problem(
        503, "unavailable", "Service unavailable", "the database cannot be reached right now; retry shortly"
    )


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if _is_unavailable(exc):
        return unavailable(request, exc)
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return problem(
        500, "internal_error", "Internal error", "an unexpected error occurred; it has been logged"
    )


# Errors that mean "the database is not there right now", not "this request is wrong".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # connection refused or reset
    TimeoutError,  # no pooled connection, or no answer, in time
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.InterfaceError,  # the connection closed under the query
    asyncpg.exceptions.OperatorInterventionError,  # 57P: shutting down, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # 53: e.g. too many connections
)


# Also, when met in an unexpected error's chain: a connection that died in the middle of a
# query leaves asyncpg's protocol in a state it reports as "another operation is in progress".
_BROKEN_CONNECTION = (*UNAVAILABLE, asyncpg.exceptions.InternalClientError)


def _is_unavailable(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(5):  # the cause chain: a failed append is raised from its connection error
        if seen is None:
            return False
        if isinstance(seen, _BROKEN_CONNECTION):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


EXCEPTION_HANDLERS: dict[type[Exception] | int, Any] = {
    DomainError: domain_error,
    ValidationException: validation_error,
    HTTPException: http_error,
    RecursionError: malformed,
    **dict.fromkeys(UNAVAILABLE, unavailable),
    Exception: unexpected,
}


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The answer to `exc` by EXCEPTION_HANDLERS, chosen as Litestar chooses (the nearest class
    in its MRO): for requests answered outside Litestar's exception middleware (lean.py)."""
    handler = next(EXCEPTION_HANDLERS[c] for c in type(exc).__mro__ if c in EXCEPTION_HANDLERS)
    response: Response[Any] = handler(request, exc)
    return response


__all__ = ["EXCEPTION_HANDLERS", "PROBLEM_JSON", "error_response", "problem"]
