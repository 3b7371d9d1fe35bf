"""The HTTP server's limits: a request head must arrive in time and be of bounded size; idle
connections do not stay open. Raw sockets against uvicorn serving the real app on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio
import uvicorn

from service.app import create_app
from service.config import Settings, settings_from_env
from service.http_server import HttpLimits, http_config
from tests.service_process import Service

LIMITS = HttpLimits(header_timeout=1.0, keepalive=1.0, max_header_bytes=8192)
CLOSED_WITHIN = 10.0  # generous bound on "closed by the server", far below "held forever"


@pytest_asyncio.fixture
async def port(database_url: str, nats_url: str) -> AsyncIterator[int]:
    """The app served with the service's own uvicorn configuration and small limits."""
    stream = secrets.token_hex(6)
    settings = Settings(
        database_url=database_url,
        nats_url=nats_url,
        stream_name=f"LOYALTY_{stream}",
        subject_prefix=f"test.{stream}.events",
        master_key=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        followers="off",
    )
    server = uvicorn.Server(
        http_config(create_app(settings, log_requests=False), host="127.0.0.1", port=0, limits=LIMITS)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server stopped during start-up")
        await asyncio.sleep(0.01)
    try:
        yield int(server.servers[0].sockets[0].getsockname()[1])
    finally:
        server.should_exit = True
        await task


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    return await asyncio.wait_for(reader.read(), CLOSED_WITHIN)


def _ignore_reset() -> contextlib.suppress:
    """The server may answer and close before the client has written its whole request."""
    return contextlib.suppress(ConnectionError)


async def healthy(port: int) -> bool:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://127.0.0.1:{port}/health/live")).status_code == 200


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(port: int) -> None:
    reader, writer = await connect(port)
    opened = time.monotonic()

    assert await read_until_closed(reader) == b""  # closed without a word: nothing was asked

    assert time.monotonic() - opened >= LIMITS.header_timeout * 0.9
    writer.close()


async def test_a_header_trickle_is_cut_at_the_header_timeout(port: int) -> None:
    reader, writer = await connect(port)
    opened = time.monotonic()
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle() -> None:
        # A byte every 100 ms: each one would have reset an idle timer; the head never ends.
        while True:
            writer.write(b"a")
            await writer.drain()
            await asyncio.sleep(0.1)

    trickling = asyncio.create_task(trickle())
    try:
        response = await read_until_closed(reader)
    finally:
        trickling.cancel()
        writer.close()

    assert response.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - opened < LIMITS.header_timeout + CLOSED_WITHIN / 2


async def test_a_one_megabyte_header_gets_431_and_the_server_stays_healthy(port: int) -> None:
    reader, writer = await connect(port)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    # The server answers and closes as soon as the cap is passed, maybe before we finished.
    with _ignore_reset():
        await writer.drain()

    response = await read_until_closed(reader)
    writer.close()

    assert response.startswith(b"HTTP/1.1 431 ")
    assert await healthy(port)


async def test_headers_under_the_cap_and_keep_alive_requests_are_served(port: int) -> None:
    reader, writer = await connect(port)
    request = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Fill: " + b"a" * 6000 + b"\r\n\r\n"

    for _ in range(2):  # two requests on one connection: the limits re-arm after each response
        writer.write(request)
        status = await asyncio.wait_for(reader.readline(), CLOSED_WITHIN)
        assert status.startswith(b"HTTP/1.1 200 "), status
        length = 0
        while (line := await reader.readline()) != b"\r\n":
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
    idle_from = time.monotonic()

    assert await read_until_closed(reader) == b""  # then idle: closed after the keep-alive time
    assert time.monotonic() - idle_from >= LIMITS.keepalive * 0.9
    writer.close()


def test_the_limits_come_from_the_environment() -> None:
    settings = settings_from_env(
        {
            "LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS": "3",
            "LOYALTY_HTTP_KEEPALIVE_SECONDS": "7",
            "LOYALTY_HTTP_MAX_HEADER_BYTES": "4096",
        }
    )
    assert HttpLimits.from_settings(settings) == HttpLimits(
        header_timeout=3, keepalive=7, max_header_bytes=4096
    )
    assert HttpLimits.from_settings(settings_from_env({})) == HttpLimits()


async def test_loyalty_serve_applies_the_limits(service: Service) -> None:
    service.env |= {"LOYALTY_HTTP_HEADER_TIMEOUT_SECONDS": "1", "LOYALTY_HTTP_MAX_HEADER_BYTES": "8192"}
    service.start()
    await service.ready()

    idle_reader, idle_writer = await connect(service.port)
    big_reader, big_writer = await connect(service.port)
    big_writer.write(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    with _ignore_reset():
        await big_writer.drain()

    assert (await read_until_closed(big_reader)).startswith(b"HTTP/1.1 431 ")
    assert await read_until_closed(idle_reader) == b""
    assert await healthy(service.port)
    for writer in (idle_writer, big_writer):
        writer.close()
    assert service.terminate() == 0
