"""A small HTTP/1.1 keep-alive client, light enough to share the machine's cores with the server:
an asyncio Protocol, the response parsed by httptools (C; it comes with `uvicorn[standard]`),
requests pre-formatted bytes."""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """The connection failed, closed, or the response could not be parsed."""


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._parse_error = httptools.HttpParserError
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError, AttributeError):
            import socket

            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parse_error as exc:
            self._fail(HttpError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection closed{f': {exc!r}' if exc else ''}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._body)
        self._body.clear()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, raw: bytes, timeout: float | None = None) -> asyncio.Future[tuple[int, bytes]]:
        """Write one pre-formatted request; a future of the response's status and body.

        On timeout the future fails with TimeoutError and the connection is closed (a late
        answer must not be taken for the next request's). A timer handle, not `wait_for`,
        which would wrap every request in a task.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        if self.closed or self._transport is None:
            waiter.set_exception(HttpError("connection closed"))
            return waiter
        self._waiter = waiter
        self._transport.write(raw)
        if timeout is not None:
            timer = loop.call_later(timeout, self._timed_out, waiter)
            waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    def _timed_out(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def request_bytes(
    method: str,
    host: str,
    path: str,
    *,
    auth: str | None = None,
    idempotency_key: str | None = None,
    body: bytes = b"",
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if auth:
        head.append(f"Authorization: Bearer {auth}")
    if idempotency_key:
        head.append(f"Idempotency-Key: {idempotency_key}")
    if method != "GET":
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body
