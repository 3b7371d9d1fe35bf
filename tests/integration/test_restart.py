"""A restart (SIGTERM, start again) loses nothing, even with requests in flight."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.service_process import ADMIN_KEY, Service


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
        channel = await client.post(
            "/v1/channels",
            json={"id": "app", "name": "App", "kind": "app"},
            headers=auth | {"Idempotency-Key": "channel-app"},
        )
        assert channel.status_code == 201, channel.text
        key = (
            await client.post(
                "/v1/api-keys",
                json={"channel": "app", "scopes": ["read", "members"]},
                headers=auth | {"Idempotency-Key": "key-app"},
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
