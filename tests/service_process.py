"""`loyalty serve` as a real child process, for the tests that signal or kill it."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ADMIN_KEY = "restart-admin-" + secrets.token_hex(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`loyalty serve` as a real child process, on the test's servers, or in embedded mode
    (its own PostgreSQL and nats-server, data in `tmp`) when given no URLs."""

    def __init__(self, database_url: str | None, nats_url: str | None, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.follower_port = _free_port()
        self.follower_url = f"http://127.0.0.1:{self.follower_port}"
        self.env = {
            **os.environ,
            "LOYALTY_PORT": str(self.port),
            "LOYALTY_FOLLOWER_PORT": str(self.follower_port),
            "LOYALTY_ADMIN_KEY": ADMIN_KEY,
            "LOYALTY_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "LOYALTY_DATA_DIR": str(tmp),
            "LOYALTY_LOG_FORMAT": "json",
            "LOYALTY_STREAM_NAME": f"LOYALTY_{secrets.token_hex(6)}",
            "LOYALTY_SUBJECT_PREFIX": f"test.{secrets.token_hex(6)}.events",
        }
        if database_url is not None and nats_url is not None:
            self.env |= {"LOYALTY_DATABASE_URL": database_url, "LOYALTY_NATS_URL": nats_url}
        else:
            for name in ("LOYALTY_DATABASE_URL", "LOYALTY_NATS_URL"):
                self.env.pop(name, None)
        self.log = tmp / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"], env=self.env, stdout=log, stderr=log
            )

    async def ready(self, within: float = 60.0) -> None:
        """Wait for /health/ready (embedded mode: initdb and start-up take longer). Generous:
        on a loaded machine two processes starting (service and followers) took over 15 s."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.process is not None
                assert self.process.poll() is None, self.log.read_text()
                try:
                    if (await client.get(f"{self.url}/health/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("service did not become ready:\n" + self.log.read_text())

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def children(self) -> list[int]:
        """The pids of the processes this `serve` started (its follower process)."""
        assert self.process is not None
        found: list[int] = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return found
