"""A command's outcome as an HTTP response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Response

from service.handlers.results import Outcome

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode


def reply(outcome: Outcome[R], render: Callable[[R, int], msgspec.Struct]) -> Response[Any]:
    """The result rendered with the position of its last event; a replay of a first answer says
    so in a header (and reads the same, byte for byte)."""
    result: Any = outcome.result
    # A record kept before results were kept holds the HTTP body itself.
    body = result if isinstance(result, bytes) else _encode(render(result, outcome.position))
    return encoded(outcome.status, body, replayed=outcome.replayed)


def encoded(status: int, body: bytes, *, replayed: bool = False) -> Response[Any]:
    """An already encoded JSON body."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)
