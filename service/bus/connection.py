"""The service's NATS connection: established in the background and kept for good.

The service starts and serves while NATS is down (PostgreSQL is the source of truth; events
wait in the log for the relay), so the first connect is retried forever in the background,
and once connected the client reconnects forever (nats-py's default gives up after ~2 min).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats
from nats.aio.client import Client

log = logging.getLogger(__name__)


def server_urls(url: str) -> list[str]:
    """The servers of LOYALTY_NATS_URL: one URL, or several separated by commas (a cluster's
    seeds; the client also learns the other members from the server it reaches)."""
    return [part.strip() for part in url.split(",") if part.strip()]


class NatsConnection:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    @property
    def is_connected(self) -> bool:
        return self.client is not None and self.client.is_connected

    async def start(self) -> None:
        self._task = asyncio.create_task(self._connect_forever(), name="nats-connect")

    async def _connect_forever(self) -> None:
        delay = 0.2
        while True:
            try:
                self.client = await nats.connect(
                    server_urls(self.url),
                    name="loyalty-ledger",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    allow_reconnect=True,
                )
                self.connected.set()
                log.info("connected to NATS")
                return
            except Exception as exc:
                log.warning("NATS unreachable; retrying", extra={"error": type(exc).__name__})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None and not self.client.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), timeout=5)
