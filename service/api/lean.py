"""The lean path of the command endpoints (ADR 24): a POST that changes a member's points is
answered here, straight from the ASGI scope, by the request middleware (service/app.py).

Each such endpoint is declared as a Litestar route handler — its path, body type, answer type,
guards and status, which routing and the OpenAPI document read — whose `opt` carries the function
that answers it (`answered_by`). Once the middleware has admitted the caller, the request comes
here, and Litestar's per-request machinery (the Request's keyword arguments, dependency
injection, guards, the signature model, the Response) is not run: what it did is done once, in
the same order and with the same errors — the guards' scopes (403), the body read within the size
limit (413) and decoded strictly into the declared type (400, 422 naming the field), the
Idempotency-Key (422), the command and its own scope (422, 403) — and the answer, encoded once,
is sent as two ASGI messages. An error is answered by the app's one error mapping (errors.py).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn
from uuid import UUID

from litestar import Request
from litestar.exceptions import (
    ClientException,
    InternalServerException,
    PermissionDeniedException,
)
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.types import Receive, Scope, Send

from service.handlers.context import CommandContext
from service.logs import request_id_var
from service.services import Services
from service.store.access import Principal

from .auth import IDEMPOTENCY_HEADER_BYTES, context_of, lacks
from .body import canonical, decode_body
from .errors import error_response
from .operations import OPERATIONS, Operation
from .responses import Answer, rendered

LEAN = "lean"  # the `opt` key of a route handler answered here


# What answers an endpoint: the caller's context, the path's parameters and the decoded body.
Answering = Callable[[Services, CommandContext, dict[str, Any], Any], Awaitable[Answer]]


def answered_by(answering: Answering) -> dict[str, Any]:
    """A route handler's `opt`: its requests are answered by `answering` on the lean path."""
    return {LEAN: answering}


def command(name: str) -> dict[str, Any]:
    """A route handler's `opt`: its requests run the Operation `name` (operations.py)."""
    return answered_by(_operation(OPERATIONS[name]))


def answered_here() -> NoReturn:
    """The body of a declared handler: the lean path answers before Litestar would call it."""
    raise RuntimeError("answered by service.api.lean before Litestar calls the route handler")


def _operation(operation: Operation) -> Answering:
    id_name = "member_id" if operation.target == "member" else "hold_id"

    async def answer(services: Services, ctx: CommandContext, path: dict[str, Any], data: Any) -> Answer:
        target: UUID = path[id_name]
        cmd = operation.command(target, data)
        # One endpoint, two commands (an earn or an award): the guard let in either scope.
        needed = operation.scope(cmd)
        if needed not in ctx.scopes:
            raise PermissionDeniedException(lacks(needed))
        return rendered(await operation.run(services, ctx, cmd), operation.render)

    return answer


_JSON = (b"content-type", b"application/json")
_REPLAYED = (b"idempotent-replayed", b"true")


async def answer(
    scope: Scope, receive: Receive, send: Send, answering: Answering, headers: dict[bytes, bytes]
) -> int:
    """Answer a request of an admitted caller (`scope["user"]`) on the lean path; the status sent.
    (`headers`: the request's, as the middleware read them.)"""
    handler = scope["route_handler"]
    try:
        principal: Principal = scope["user"]
        for guard in handler.resolve_guards():
            if principal.scopes.isdisjoint(guard.scopes):
                raise PermissionDeniedException(lacks(*guard.scopes))
        field = handler.parsed_data_field
        data = None
        body = b""
        if field is not None:
            limit = handler.resolve_request_max_body_size() or math.inf
            data = decode_body(await _body(receive, headers, limit) or b"null", field.annotation)
            # An absent body (a release may have none) is the same request as `{}`.
            body = canonical(data if data is not None else {})
        ctx = context_of(
            principal,
            method=scope["method"],
            path=scope.get("root_path", "") + scope["path"],
            idempotency_key=_header(headers.get(IDEMPOTENCY_HEADER_BYTES)),
            request_id=request_id_var.get() or _header(headers.get(b"x-request-id")),
            body=body,
        )
        services: Services = scope["app"].state.services
        status, content, replayed = await answering(services, ctx, scope["path_params"], data)
    except Exception as exc:  # answered as Litestar's exception middleware would
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        response = error_response(request, exc)
        await response.to_asgi_response(app=None, request=request)(scope, receive, send)
        return response.status_code
    headers_out = [_JSON, (b"content-length", str(len(content)).encode())]
    if replayed:
        headers_out.insert(0, _REPLAYED)
    await send({"type": "http.response.start", "status": status, "headers": headers_out})
    await send({"type": "http.response.body", "body": content, "more_body": False})
    return status


async def _body(receive: Receive, headers: dict[bytes, bytes], limit: float) -> bytes:
    """The request's body, as Litestar's `Request.body()` reads it: 413 past `limit` (announced
    or received), 500 if the client goes away before the end."""
    announced = headers.get(b"content-length")
    if announced is not None:
        try:
            length = int(announced)
        except ValueError:
            raise ClientException(f"Invalid content-length: {announced.decode('latin-1')!r}") from None
        if length > limit:
            raise RequestEntityTooLarge
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                received += len(chunk)
                if received > limit:
                    raise RequestEntityTooLarge
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise InternalServerException("client disconnected prematurely")


def _header(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
