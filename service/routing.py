"""Each member's requests served by one request process, so that each keeps its cache (ADR 25).

With LOYALTY_PROCESSES > 1 every request process accepts on the port (service/processes.py). A
request whose path names a member (`/v1/members/{id}/…`) belongs to process `id % N`: another
process forwards it, as received, over the owner's Unix socket and relays the answer. Anything
else (enrol, lookups, batches, holds by id, the program) is served where it arrives; the
appender's expected-version check keeps any process's stale copy of a member safe, as between
instances (ADR 2). When the owner cannot be reached before it answers (restarting, stopping),
the request is served here instead: a command carries its Idempotency-Key, so it runs at most
once whichever process runs it. `/metrics` gathers every process's figures, labelled `process`.
Every answer names the process that served it (`X-Loyalty-Process`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from uuid import UUID

import httptools
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from service.processes import RequestProcess

__all__ = ["PROCESS_HEADER", "Router", "owner_of"]

PROCESS_HEADER = b"x-loyalty-process"  # on every answer: the request process that served it
CLIENT_HEADER = b"x-loyalty-client"  # on a forwarded request: the caller's address (host:port)
MEMBERS_PREFIX = "/v1/members/"
FORWARDED_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})  # HEAD answers have no body
MAX_FORWARDED_BODY = 1 << 20  # a member's command is small; a larger body is refused where it is
_REQUEST_DROPPED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"expect", b"upgrade",
     b"te", b"trailer", b"proxy-connection", CLIENT_HEADER}
)  # fmt: skip
# The front process's uvicorn writes its own framing, date and server headers.
_RESPONSE_DROPPED = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"date", b"server"})
_METRICS_REQUEST = b"GET /metrics HTTP/1.1\r\nhost: local\r\ncontent-length: 0\r\n\r\n"

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def owner_of(path: str, processes: int) -> int | None:
    """The request process that serves the member named in `path`; None when it names none."""
    if not path.startswith(MEMBERS_PREFIX):
        return None
    try:
        return UUID(path[len(MEMBERS_PREFIX) :].partition("/")[0]).int % processes
    except ValueError:  # /v1/members/lookup, or not a member id (answered 404 where it is)
        return None


class Unanswered(Exception):
    """The owner gave no answer (none of it reached the caller): the request may be served here."""


class Router:
    """ASGI: forward a member's requests to its owner; serve the rest; mark every answer."""

    def __init__(self, app: Any, me: RequestProcess, *, keepalive_seconds: float) -> None:
        self.app = app
        self.me = me
        self._internal = (me.own_socket_path, None)  # scope["server"] of a sibling's connection
        self._mark = (PROCESS_HEADER, str(me.index).encode())
        # Idle connections to a sibling are reused only well inside its keep-alive time, so that
        # one it is closing is never picked.
        self._peers = [Peer(me.socket_path(i), keepalive_seconds / 2) for i in range(me.count)]
        registry = app.state.metrics.registry
        self._forwarded = Counter(
            "loyalty_requests_forwarded",
            "Requests for another request process's member, forwarded to it.",
            registry=registry,
        )
        self._unanswered = Counter(
            "loyalty_requests_forward_failed",
            "Requests for another request process's member served here because it did not answer.",
            registry=registry,
        )

    @property
    def state(self) -> Any:
        """The app's state (the server sets `draining` there when it stops)."""
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("server") == self._internal:
            _restore_client(scope)
        elif scope["path"] == "/metrics":
            await self._metrics(send)
            return
        else:
            owner = owner_of(scope["path"], self.me.count)
            if owner is not None and owner != self.me.index and scope["method"] in FORWARDED_METHODS:
                receive = await self._forward(self._peers[owner], scope, receive, send)
                if receive is None:
                    return
        await self.app(scope, receive, self._marked(send))

    def _marked(self, send: Send) -> Send:
        async def marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self._mark]}
            await send(message)

        return marked

    async def _forward(self, peer: Peer, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Forward to the owner and relay its answer (None); or, when it cannot be forwarded or
        the owner did not answer, a `receive` that gives the body again, to serve it here."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None  # the caller is gone: nothing to answer
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if more and size > MAX_FORWARDED_BODY:
                return _replayed(chunks, receive, more=True)
        body = b"".join(chunks)
        try:
            await peer.exchange(_request_head(scope, len(body)) + body, send)
        except Unanswered:
            self._unanswered.inc()
            return _replayed([body], receive, more=False)
        self._forwarded.inc()
        return None

    async def _metrics(self, send: Send) -> None:
        """Every request process's figures, each sample labelled with its process."""
        texts: dict[int, str] = {}
        for index, peer in enumerate(self._peers):
            answer = _Collected()
            with contextlib.suppress(Unanswered):
                await peer.exchange(_METRICS_REQUEST, answer)
                texts[index] = answer.body.decode()
        body = merge_metrics(texts, self.me.count)
        headers = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"), self._mark]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class Peer:
    """A sibling request process reached over its Unix socket, with idle connections kept."""

    def __init__(self, path: str, keep_for: float) -> None:
        self.path = path
        self._keep_for = keep_for
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        now = asyncio.get_running_loop().time()
        while self._idle:
            reader, writer, since = self._idle.pop()
            if now - since < self._keep_for and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_unix_connection(self.path)

    async def exchange(self, request: bytes, send: Send) -> None:
        """Send one request and relay its answer to `send` as it comes; Unanswered when the
        connection failed before any of the answer was relayed."""
        answer = _Answer(send)
        try:
            reader, writer = await self._connection()
        except OSError as exc:
            raise Unanswered(str(exc)) from exc
        try:
            writer.write(request)
            await writer.drain()
            parser = answer.parser = httptools.HttpResponseParser(answer)
            while not answer.complete:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionResetError("the request process closed the connection")
                parser.feed_data(data)
                await answer.relay(parser)
        except BaseException as exc:
            writer.close()
            if not answer.started and isinstance(exc, OSError | httptools.HttpParserError):
                raise Unanswered(str(exc)) from exc
            raise
        if answer.keep_alive:
            self._idle.append((reader, writer, asyncio.get_running_loop().time()))
        else:
            writer.close()


class _Answer:
    """httptools callbacks turning the owner's answer into ASGI messages for the caller."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._head = False
        self.parser: httptools.HttpResponseParser | None = None
        self.started = False
        self.complete = False
        self.keep_alive = False  # asked of the parser at the end: it forgets once it is done

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name not in _RESPONSE_DROPPED:
            self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()

    async def relay(self, parser: httptools.HttpResponseParser) -> None:
        """Pass on what has arrived: the head once, then the body (one message when it came
        whole, which is the usual case)."""
        if not self._head:
            return
        if not self.started:
            self.started = True
            status = parser.get_status_code()
            await self._send({"type": "http.response.start", "status": status, "headers": self._headers})
        if self._body or self.complete:
            body, self._body = b"".join(self._body), []
            await self._send({"type": "http.response.body", "body": body, "more_body": not self.complete})


class _Collected:
    """An ASGI `send` keeping the body (a sibling's /metrics)."""

    def __init__(self) -> None:
        self.body = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise Unanswered(f"status {message['status']}")
        self.body += message.get("body", b"")


def _request_head(scope: Scope, length: int) -> bytes:
    """The request line and headers as the owner is to receive them (with the caller's address)."""
    target = scope["raw_path"]
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    head = [scope["method"].encode("ascii"), b" ", target, b" HTTP/1.1\r\n"]
    for name, value in scope["headers"]:
        if name not in _REQUEST_DROPPED:
            head += [name, b": ", value, b"\r\n"]
    client = scope.get("client")
    if client:
        head += [CLIENT_HEADER, b": ", f"{client[0]}:{client[1]}".encode(), b"\r\n"]
    head.append(b"content-length: %d\r\n\r\n" % length)
    return b"".join(head)


def _restore_client(scope: Scope) -> None:
    """On a request a sibling forwarded: the caller's address it was sent from (the failed-key
    limiter and the log go by it)."""
    for name, value in scope["headers"]:
        if name == CLIENT_HEADER:
            host, _, port = value.decode("latin-1").rpartition(":")
            with contextlib.suppress(ValueError):
                scope["client"] = (host, int(port))
            return


def _replayed(chunks: list[bytes], receive: Receive, *, more: bool) -> Receive:
    """`receive` giving the body already read again (`more`: the caller is still sending)."""
    pending = list(chunks)

    async def replayed() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending) or more}
        return await receive()

    return replayed


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_metrics(texts: dict[int, str], processes: int) -> bytes:
    """The request processes' expositions as one, each sample labelled `process`, and
    `loyalty_request_process_up` saying which answered."""
    up = Metric("loyalty_request_process_up", "Whether the request process answered this scrape.", "gauge")
    families: dict[str, Metric] = {"loyalty_request_process_up": up}
    for index in range(processes):
        up.add_sample("loyalty_request_process_up", {"process": str(index)}, float(index in texts))
    for index, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = Metric(family.name, family.documentation, family.type, family.unit)
                families[family.name] = merged
            merged.samples += [s._replace(labels={**s.labels, "process": str(index)}) for s in family.samples]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry)
