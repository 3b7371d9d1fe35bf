"""A command's outcome as an HTTP response."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import msgspec
from litestar import Response

from service.handlers.results import Outcome

R = TypeVar("R")
_encode = msgspec.json.Encoder().encode


class Answer(NamedTuple):
    """A command's answer: its status, its JSON body, and whether it replays a first answer."""

    status: int
    body: bytes
    replayed: bool = False


def rendered(outcome: Outcome[R], render: Callable[[R, int], msgspec.Struct]) -> Answer:
    """The result rendered with the position of its last event; a replay of a first answer says
    so (and reads the same, byte for byte)."""
    result: Any = outcome.result
    # A record kept before results were kept holds the HTTP body itself.
    body = result if isinstance(result, bytes) else _encode(render(result, outcome.position))
    return Answer(outcome.status, body, outcome.replayed)


def reply(outcome: Outcome[R], render: Callable[[R, int], msgspec.Struct]) -> Response[Any]:
    """`rendered`, as a Litestar response."""
    return encoded(*rendered(outcome, render))


def encoded(status: int, body: bytes, replayed: bool = False) -> Response[Any]:
    """An already encoded JSON body."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def encode(value: Any) -> bytes:
    """An answer's JSON (one encoder, reused)."""
    return _encode(value)
