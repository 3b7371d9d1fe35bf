"""uvicorn (uvloop + httptools) as `loyalty serve` and `loyalty follow` run it, with the limits
uvicorn's httptools protocol lacks: a deadline for the request head and a cap on its size.

Without them a client that connects and sends nothing, or trickles its headers a byte at a
time, holds a connection forever, and a 1 MB header is accepted (httptools buffers a header
value whole before handing it over).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from service.config import Settings

__all__ = ["HttpLimits", "LimitedHttpToolsProtocol", "http_config", "run_http"]

GRACEFUL_SHUTDOWN_SECONDS = 20
# After refusing a request, how long to keep reading (and dropping) what the client still sends
# before closing: closing with unread data makes the kernel send a reset, which destroys the
# answer before the client has read it.
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HttpLimits:
    """How long a request head may take and how big it may be; how long an idle
    keep-alive connection is kept."""

    # The settings' own defaults (declared once, in service/config.py).
    header_timeout: float = Settings.http_header_timeout_seconds
    keepalive: float = Settings.http_keepalive_seconds
    max_header_bytes: int = Settings.http_max_header_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout=settings.http_header_timeout_seconds,
            keepalive=settings.http_keepalive_seconds,
            max_header_bytes=settings.http_max_header_bytes,
        )


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a request-head deadline and size cap.

    The deadline runs from the connection opening, and again from each response completing,
    until the head (request line and headers) has been parsed: it bounds both a connection
    that sends nothing and one that trickles. Subclasses set the limits (see `http_config`).
    """

    limits = HttpLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._expect_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._done():
            return  # refused already: drop what follows unparsed
        if self._in_head:
            self._received += len(data)
        super().data_received(data)
        # A head still incomplete past the cap: refuse before buffering any more of it.
        if self._in_head and self._received > self.limits.max_header_bytes:
            self._refuse(431, "Request header fields too large.")

    # -- parser callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0
        self._received = 0  # bytes of this chunk before the head began are not the head's

    def on_url(self, url: bytes) -> None:
        if self._count(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count(len(name) + len(value) + 4):  # "name: value\r\n"
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._done():
            return
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._done():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._done():
            return
        super().on_message_complete()
        if self.cycle.response_complete and not self.pipeline:
            self._expect_head()  # answered before the body ended: the next head starts now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._done() and not self.pipeline and not self.cycle.more_body:
            self._expect_head()

    # -- limits --------------------------------------------------------------------------

    def _done(self) -> bool:
        return self._refused or self.transport.is_closing()

    def _expect_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._received = 0
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _count(self, size: int) -> bool:
        """Add to the head's size; refuse the request (and return False) past the cap."""
        if self._done():
            return False
        self._head_bytes += size
        if self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, "Request header fields too large.")
            return False
        return True

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self._done():
            return
        if self._received:
            self._refuse(408, "Request head not received in time.")
        else:
            self.transport.close()  # never said anything: nothing to answer

    def _refuse(self, status: int, message: str) -> None:
        self.logger.info("HTTP request refused: %s", message, extra={"status": status})
        body = message.encode("ascii")
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self._refused = True
        self._cancel_head_timer()
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the answer, then end-of-stream: the client stops reading
        self.flow.resume_reading()  # keep draining what it still sends (see LINGER_SECONDS)
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def http_config(app: Any, *, host: str, port: int, limits: HttpLimits) -> uvicorn.Config:
    """The uvicorn configuration of the service (also what the limits tests serve with)."""
    protocol = type("Protocol", (LimitedHttpToolsProtocol,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=protocol,
        lifespan="on",
        log_config=None,
        access_log=False,
        # uvicorn arms this timer after each response; `limits.header_timeout` covers the rest.
        timeout_keep_alive=limits.keepalive,  # type: ignore[arg-type]  # call_later takes a float
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its graceful stop, which would kill us before the
    embedded servers are stopped; a requested stop is a clean exit (status 0) instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()

    async def shutdown(self, sockets: Any = None) -> None:
        # uvicorn waits for every response in flight before the app's shutdown: the endless
        # ones (the live event stream) are told to end first (the app's `draining` event).
        draining = getattr(getattr(self.config.app, "state", None), "draining", None)
        if isinstance(draining, asyncio.Event):
            draining.set()
        await super().shutdown(sockets)

    internal_path: str | None = None

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.internal_path is not None and not self.should_exit:
            await self._listen_internal(self.internal_path)
        _settle_heap()

    async def _listen_internal(self, path: str) -> None:
        """The Unix socket sibling request processes forward to (ADR 25), opened once the app
        has started, so that a sibling serves the member itself until then."""
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a process of the same index that died
        server = await asyncio.get_running_loop().create_unix_server(protocol, path, backlog=1024)
        self.servers.append(server)  # closed with the others when the server stops


def run_http(
    app: Any,
    *,
    host: str,
    port: int,
    limits: HttpLimits,
    listener: socket.socket | None = None,
    internal_path: str | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT: stop accepting, finish the requests in flight and run the
    app's lifespan shutdown (the appender drains its queue). `listener`: a socket already
    listening (a request process's, inherited); `internal_path`: also serve on this Unix socket."""
    server = _Server(http_config(app, host=host, port=port, limits=limits))
    server.internal_path = internal_path
    server.run(sockets=None if listener is None else [listener])
    if internal_path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(internal_path)


def _settle_heap() -> None:
    """Once started: keep what start-up built (modules, the app, pools) out of every later
    garbage collection, and collect the young generation less often.

    With the defaults, collections took ~9 % of the request loop under load (86 full ones in
    100 s, up to 80 ms each: every one walks every object start-up left) and throughput fell run
    after run in one process; frozen and with these thresholds, 0.3 % (docs/benchmarks.md).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 10)
