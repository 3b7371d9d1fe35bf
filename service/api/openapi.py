"""The OpenAPI document, made to tell the truth about what the service does on the wire.

Litestar generates the paths and schemas from the controllers and Structs; what it cannot see is
added here, in one place, when the document is rendered: the `Idempotency-Key` header of every
command and the `Idempotent-Replayed` header of its answers, every problem+json error an operation
can answer (replacing Litestar's own `{status_code, detail, extra}` 400), and the scopes each
operation's guards demand (`x-scopes`, the security requirement and the description).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields
from typing import Any

import msgspec
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, OpenAPI, SecurityScheme
from litestar.types import Method

from .errors import PROBLEM_JSON
from .schemas import Problem

SECURITY_SCHEME = "apiKey"
IDEMPOTENCY_KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
RETRY_AFTER = "Retry-After"

# POSTs that write nothing (a question with a body): no Idempotency-Key; a 409 only where the command
# they ask about would refuse (a quote for a merged or forgotten member, as its earn).
READ_ONLY_POSTS = frozenset({"/v1/quotes/earn"})
# Operations that find something by a value in the query or body, so answer 404 without a path id.
FINDS = frozenset({("GET", "/v1/members/lookup"), ("POST", "/v1/quotes/earn")})

_OPERATION_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_COMMAND_METHODS = ("POST", "PUT")
_REF_TEMPLATE = "#/components/schemas/{name}"
_PROBLEM_REF = {"$ref": _REF_TEMPLATE.format(name="Problem")}
_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before trying again.",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
}
_ERRORS: dict[int, str] = {
    400: "Malformed request: the body is not JSON (`malformed_request`).",
    401: "No API key, or not a valid one (`unauthorized`).",
    403: "The API key lacks the scope this operation needs (`forbidden`).",
    404: "Nothing is found by this id or value (`member_not_found`, `not_found`, …).",
    409: "A business rule or a conflict refuses the command (`insufficient_points`, `duplicate_order`, "
    "`identity_taken`, `member_merged`, `idempotency_key_reused`, …); nothing was written.",
    413: "The body is too large (`request_too_large`).",
    415: "The body is not `application/json` (or another `+json` type).",
    422: "Well-formed but invalid input; `errors` names each offending field (`validation_error`, …); "
    "nothing was written.",
    429: "The API key is over its rate limit: retry after `Retry-After` seconds.",
    500: "An unexpected error; it has been logged (`internal_error`).",
    503: "The service cannot answer now (database unreachable, too many concurrent changes, a "
    "projection behind `min_position`): retry after `Retry-After` seconds (`busy`, "
    "`projection_behind`, …).",
}


def openapi_config() -> OpenAPIConfig:
    """The app's OpenAPIConfig; the document it renders declares what Litestar cannot infer."""
    return _TruthfulConfig(
        title="Loyalty ledger",
        version="1.0.0",
        description="One member, one balance and one set of rules behind every sales channel.",
        components=Components(
            security_schemes={
                SECURITY_SCHEME: SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="An API key of a channel. Each operation's `x-scopes` lists, per guard, "
                    "the scopes any one of which the key must carry.",
                ),
            }
        ),
        security=[{SECURITY_SCHEME: []}],
    )


def guard_scopes(handler: HTTPRouteHandler) -> list[list[str]]:
    """The scopes of each of the handler's guards (all must pass; each passes with any one scope)."""
    return [list(guard.scopes) for guard in handler.resolve_guards() if hasattr(guard, "scopes")]


@dataclass
class _TruthfulConfig(OpenAPIConfig):
    """Remembers the route handler of each operation (Litestar names each one through
    `operation_id_creator`, the only per-handler hook a config has) for the document to read.
    A handler given its own `operation_id` is not seen, and its operation is left as generated."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._handlers: dict[str, HTTPRouteHandler] = {}
        name = self.operation_id_creator

        def naming(handler: HTTPRouteHandler, method: Method, path_components: list[Any]) -> str:
            operation_id = name(handler, method, path_components)
            self._handlers[operation_id] = handler
            return operation_id

        self.operation_id_creator = naming

    def to_openapi_schema(self) -> OpenAPI:
        base = super().to_openapi_schema()
        document = _TruthfulOpenAPI(**{f.name: getattr(base, f.name) for f in fields(base)})
        document.handlers = self._handlers  # filled while Litestar builds the paths
        return document


@dataclass
class _TruthfulOpenAPI(OpenAPI):
    """An OpenAPI document whose rendering adds what the handlers' signatures cannot say."""

    def __post_init__(self) -> None:
        self.handlers: dict[str, HTTPRouteHandler] = {}

    def to_schema(self) -> dict[str, Any]:
        document = super().to_schema()
        for path, path_item in document.get("paths", {}).items():
            for method in _OPERATION_METHODS:
                operation = path_item.get(method)
                handler = self.handlers.get((operation or {}).get("operationId", ""))
                if operation is not None and handler is not None:
                    _tell_truth(path, method.upper(), operation, handler)
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        _, problem_schemas = msgspec.json.schema_components([Problem], ref_template=_REF_TEMPLATE)
        # `errors` is left out when there are none, never null (service/api/errors.py).
        problem_schemas["Problem"]["properties"]["errors"] = {
            "type": "array",
            "items": {"$ref": _REF_TEMPLATE.format(name="ProblemField")},
        }
        for name, schema in problem_schemas.items():
            schemas.setdefault(name, schema)
        return document


def _tell_truth(path: str, method: str, operation: dict[str, Any], handler: HTTPRouteHandler) -> None:
    parameters: list[dict[str, Any]] = operation.get("parameters", [])
    has_body = "requestBody" in operation
    command = method in _COMMAND_METHODS and path not in READ_ONLY_POSTS
    scopes = guard_scopes(handler)

    _secure(operation, scopes)
    if command:
        parameters = [p for p in parameters if p.get("name", "").lower() != IDEMPOTENCY_KEY.lower()]
        parameters.append(
            {
                "name": IDEMPOTENCY_KEY,
                "in": "header",
                "required": True,
                "description": "Unique per command: retrying with the same key and body replays the first "
                "answer (within 24 h); the same key with another body is 409 `idempotency_key_reused`.",
                # HTTP strips spaces around a header value, so the key neither starts nor ends with one.
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 200,
                    "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
                },
            }
        )
    if parameters:
        operation["parameters"] = parameters

    responses: dict[str, Any] = operation.setdefault("responses", {})
    for status, response in list(responses.items()):
        if _is_litestar_default_error(response):
            del responses[status]
    if command:
        for status, response in responses.items():
            if status.startswith("2"):
                response.setdefault("headers", {})[REPLAYED] = {
                    "description": "`true` when this is the first answer to the same command, replayed.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
    has_path_id = any(p.get("in") == "path" for p in parameters)
    # A path id that does not parse matches no route (404); queries, bodies and headers are validated.
    has_input = has_body or any(p.get("in") in ("query", "header") for p in parameters)
    statuses = {401, 429, 500, 503}
    statuses |= {403} if scopes else set()
    statuses |= {400, 413, 415} if has_body else set()
    statuses |= {404} if has_path_id or (method, path) in FINDS else set()
    statuses |= {409} if command or path in READ_ONLY_POSTS else set()
    statuses |= {422} if has_input else set()
    for code in sorted(statuses):
        responses[str(code)] = _problem_response(code)


def _secure(operation: dict[str, Any], scopes: list[list[str]]) -> None:
    """The scopes as an extension, a security requirement (alternatives) and a sentence."""
    operation["x-scopes"] = scopes
    operation["security"] = [
        {SECURITY_SCHEME: sorted(set(combination))} for combination in itertools.product(*scopes)
    ]
    if scopes:
        needed = " and ".join(" or ".join(f"`{s}`" for s in any_of) for any_of in scopes)
        sentence = f"Requires an API key with the scope {needed}."
        description = operation.get("description")
        operation["description"] = f"{description}\n\n{sentence}" if description else sentence


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _ERRORS[status],
        "content": {PROBLEM_JSON: {"schema": _PROBLEM_REF}},
    }
    if status in (429, 503):
        response["headers"] = {RETRY_AFTER: _RETRY_AFTER_HEADER}
    return response


def _is_litestar_default_error(response: dict[str, Any]) -> bool:
    """Litestar's own `{status_code, detail, extra}` error (from ValidationException), never ours."""
    for media in (response.get("content") or {}).values():
        properties = (media.get("schema") or {}).get("properties") or {}
        if {"status_code", "detail", "extra"} <= set(properties):
            return True
    return False


__all__ = ["IDEMPOTENCY_KEY", "READ_ONLY_POSTS", "guard_scopes", "openapi_config"]
