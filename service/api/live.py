"""/v1/events/live: the events as they are committed, as server-sent events (the console's live
view; a browser cannot speak NATS).

Each event is one SSE message: `id` its position, `data` a LiveEventOut (JSON, one line). The
stream starts with an `event: ready` message whose `id` and `data.position` say where it starts,
so a client that reconnects before any event arrived resumes from there, not from "now". It
resumes after `after`, or after the `Last-Event-ID` header a reconnecting EventSource sends;
with neither, it starts at the log's head (only what is committed from now on). A comment line
every KEEPALIVE_SECONDS keeps proxies from closing a quiet stream. It ends after `limit` events
if given, when the client goes, or when the server drains (SIGTERM): clients reconnect.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Operation
from litestar.params import QueryParameter
from litestar.response import Stream

from service.handlers import live
from service.handlers.errors import InvalidInput, TooManyStreams
from service.services import Services

from .auth import requires
from .schemas import LiveEventOut
from .views import live_event_out

MEDIA_TYPE = "text/event-stream"
KEEPALIVE_SECONDS = 15.0
RETRY_MILLISECONDS = 2000  # how long an EventSource waits before reconnecting
# Open streams one instance serves at once: each holds a connection to the client and reads the
# log on every commit; past this a new one is 503 (retry later, or ask another instance).
MAX_STREAMS = 100
_MAX_POSITION = 2**63 - 1

_encode = msgspec.json.Encoder().encode

DESCRIPTION = """Every committed event, in position order, as server-sent events (`text/event-stream`),
for a console or a script that cannot speak NATS. The stream starts with an `event: ready`
message whose `id` is the position it starts after, then sends one message per event (`id`: its
position; `data`: a LiveEventOut, one line of JSON) as each is committed, and a comment line every
15 s while the log is quiet.

Resuming: after `after`, or after the `Last-Event-ID` header that a reconnecting EventSource sends
(it wins over `after`); with neither, only the events committed from now on. The stream ends after
`limit` events when given, and when the service drains; reconnect with the last `id` received.

No personal data is sent (identities and profiles never; the member's id, the event's type,
channel, points and times, as the member's history shows them)."""


# One SSE message (OpenAPI 3.1: a text/event-stream `schema` describes each message), its `data`
# one line of JSON: the `ready` message's {position}, else a LiveEventOut.
_READY_DATA = {
    "type": "object",
    "properties": {"position": {"type": "integer", "minimum": 0}},
    "required": ["position"],
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "The position of the event."},
        "event": {"type": "string", "description": "`ready` for the first message only."},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"anyOf": [{"$ref": "#/components/schemas/LiveEventOut"}, _READY_DATA]},
        },
    },
}


@dataclass
class _LiveOperation(Operation):
    """The operation as documented, but its 200 says what each server-sent message holds."""

    def to_schema(self) -> dict[str, Any]:
        schema = super().to_schema()
        for content in schema.get("responses", {}).get("200", {}).get("content", {}).values():
            content["schema"] = MESSAGE_SCHEMA
        return schema


class _Streams:
    open = 0


def _message(position: int, data: bytes, event: str | None = None) -> bytes:
    head = b"" if event is None else b"event: " + event.encode() + b"\n"
    return head + b"id: %d\ndata: " % position + data + b"\n\n"


def _resume_from(request: Request[object, object, object], after: int | None) -> int | None:
    """`Last-Event-ID` (a reconnecting EventSource) wins over `after`: it is the later position."""
    last = request.headers.get("last-event-id")
    if last is None or not last.strip():
        return after
    text = last.strip()
    if not (text.isascii() and text.isdigit() and int(text) <= _MAX_POSITION):
        raise InvalidInput([("Last-Event-ID", "must be a position (a whole number, at least 0)")])
    return int(text)


class LiveController(Controller):
    path = "/v1/events"
    tags = ["events"]

    @get(
        "/live",
        guards=[requires("read")],
        media_type=MEDIA_TYPE,
        summary="Events as they are committed (server-sent events)",
        description=DESCRIPTION,
        operation_class=_LiveOperation,
        responses={
            200: ResponseSpec(
                data_container=LiveEventOut,
                media_type=MEDIA_TYPE,
                description="An endless `text/event-stream`: an `event: ready` message, then one message"
                " per committed event (`id`: its position; `data`: a LiveEventOut, one line of JSON).",
            )
        },
    )
    async def live(
        self,
        request: Request[object, object, object],
        services: NamedDependency[Services],
        after: Annotated[int | None, QueryParameter(ge=0, le=_MAX_POSITION)] = None,
        limit: Annotated[int | None, QueryParameter(ge=1, le=100_000)] = None,
    ) -> Stream:
        start = _resume_from(request, after)
        if _Streams.open >= MAX_STREAMS:
            raise TooManyStreams(MAX_STREAMS)
        if start is None:
            start = await services.store.last_position()
        await services.tail.start()  # a database that cannot be reached is a 503 here, not mid-stream
        draining: asyncio.Event = request.app.state.draining
        return Stream(
            _stream(services, start, limit, draining),
            media_type=MEDIA_TYPE,
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _stream(
    services: Services, start: int, limit: int | None, draining: asyncio.Event
) -> AsyncIterator[bytes]:
    _Streams.open += 1
    try:
        yield b"retry: %d\n" % RETRY_MILLISECONDS + _message(start, b'{"position":%d}' % start, "ready")
        async for page in live.follow(
            services, after=start, limit=limit, stopping=draining, idle=KEEPALIVE_SECONDS
        ):
            if not page:
                yield b": keep-alive\n\n"
                continue
            yield b"".join(_message(e.position, _encode(live_event_out(e))) for e in page)
    finally:
        _Streams.open -= 1


__all__ = ["LiveController"]
