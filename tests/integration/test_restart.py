"""A restart (SIGTERM, start again) loses nothing, even with requests in flight."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ADMIN_KEY = "restart-admin-" + secrets.token_hex(8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """`loyalty serve` as a real child process, on the test's servers."""

    def __init__(self, database_url: str, nats_url: str, tmp: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "LOYALTY_DATABASE_URL": database_url,
            "LOYALTY_NATS_URL": nats_url,
            "LOYALTY_PORT": str(self.port),
            "LOYALTY_ADMIN_KEY": ADMIN_KEY,
            "LOYALTY_MASTER_KEY": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            "LOYALTY_DATA_DIR": str(tmp),
            "LOYALTY_LOG_FORMAT": "json",
            "LOYALTY_STREAM_NAME": f"LOYALTY_{secrets.token_hex(6)}",
            "LOYALTY_SUBJECT_PREFIX": f"test.{secrets.token_hex(6)}.events",
        }
        self.log = tmp / "service.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve"], env=self.env, stdout=log, stderr=log
            )

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(300):
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


@pytest.fixture
def service(database_url: str, nats_url: str, tmp_path: Path) -> Iterator[Service]:
    svc = Service(database_url, nats_url, tmp_path)
    yield svc
    if svc.process is not None and svc.process.poll() is None:
        svc.process.kill()
        svc.process.wait()


async def test_sigterm_with_requests_in_flight_loses_nothing(service: Service) -> None:
    service.start()
    await service.ready()
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        enrolled = await client.post(
            "/v1/members",
            json={"identities": [{"kind": "app_user", "value": "u-1"}]},
            headers=auth | {"Idempotency-Key": "enrol-1"},
        )
        assert enrolled.status_code == 201, enrolled.text
        member_id = enrolled.json()["member_id"]

        async def earn(i: int) -> int | None:
            try:
                response = await client.post(
                    f"/v1/members/{member_id}/earn",
                    json={"order_ref": f"R-{i}", "amount": "10", "currency": "CNY"},
                    headers=auth | {"Idempotency-Key": f"earn-{i}"},
                )
            except httpx.TransportError:
                return None  # cut off by the shutdown: the client will retry
            return response.status_code

        requests = [asyncio.create_task(earn(i)) for i in range(200)]
        await asyncio.sleep(0)  # let them start
        # SIGTERM while requests are in flight: in-flight ones finish, the rest are refused.
        exit_code = await asyncio.to_thread(service.terminate)
        statuses = await asyncio.gather(*requests)

    assert exit_code == 0, service.log.read_text()
    acknowledged = [i for i, s in enumerate(statuses) if s == 201]
    assert all(s in (201, None, 503) for s in statuses), statuses

    service.start()
    await service.ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        history = (
            await client.get(f"/v1/members/{member_id}/history", params={"limit": 1000}, headers=auth)
        ).json()["events"]
        earned = {e["event_id"] for e in history if e["type"] == "points_earned"}
        # Every acknowledged earn survived the restart.
        assert len(earned) >= len(acknowledged)
        # Retrying everything with the same keys makes each earn count exactly once.
        retried = [
            await client.post(
                f"/v1/members/{member_id}/earn",
                json={"order_ref": f"R-{i}", "amount": "10", "currency": "CNY"},
                headers=auth | {"Idempotency-Key": f"earn-{i}"},
            )
            for i in range(200)
        ]
        assert all(r.status_code == 201 for r in retried), [r.text for r in retried if r.status_code != 201]
        assert all(retried[i].headers.get("idempotent-replayed") == "true" for i in acknowledged)
        balance = (await client.get(f"/v1/members/{member_id}/balance", headers=auth)).json()["balance"]
        history = (
            await client.get(f"/v1/members/{member_id}/history", params={"limit": 1000}, headers=auth)
        ).json()["events"]
    assert len([e for e in history if e["type"] == "points_earned"]) == 200
    assert balance["lifetime_earned"] == sum(r.json()["points"] for r in retried)
    assert service.terminate() == 0


async def test_restart_keeps_members_keys_and_rules(service: Service) -> None:
    service.start()
    await service.ready()
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        await client.post("/v1/channels", json={"id": "app", "name": "App", "kind": "app"}, headers=auth)
        key = (
            await client.post(
                "/v1/api-keys", json={"channel": "app", "scopes": ["read", "members"]}, headers=auth
            )
        ).json()["key"]
        member = await client.post(
            "/v1/members",
            json={"identities": [{"kind": "email", "value": "A@B.cn"}]},
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex},
        )
        assert member.status_code == 201
    assert service.terminate() == 0

    service.start()
    await service.ready()
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        found = await client.get(
            "/v1/members/lookup",
            params={"kind": "email", "value": " a@b.CN "},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert found.status_code == 200, found.text
    assert found.json()["member_id"] == member.json()["member_id"]
    assert service.terminate() == 0
