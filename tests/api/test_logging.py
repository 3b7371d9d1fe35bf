"""Operators get one structured line per request, with ids and without personal data."""

from __future__ import annotations

import json
import logging

import pytest

from service.app import create_app
from service.logs import JsonFormatter
from tests.api.conftest import ADMIN_KEY, Api, serving, settings_for


async def test_request_lines_carry_ids_and_no_personal_data(
    database_url: str, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(database_url, nats_url), log_requests=True)
    phone = "+8613712345678"
    async with serving(app) as client:
        api = Api(client, app)
        key = await api.channel_key("pos-log", ["read", "earn", "members"])
        with caplog.at_level(logging.INFO, logger="service"):
            member_id = await api.enrol(key, phone=phone)
            await api.get(
                "/v1/members/lookup",
                key=key,
                params={"kind": "phone", "value": phone},
                headers={"X-Request-Id": "req-lookup-1"},
            )
            await api.get(f"/v1/members/{member_id}", key=key)

    formatter = JsonFormatter()
    lines = [json.loads(formatter.format(r)) for r in caplog.records if r.name == "service.requests"]
    assert len(lines) == 3
    assert all(line["channel"] == "pos-log" for line in lines)
    assert [line["status"] for line in lines] == [201, 200, 200]
    assert all(isinstance(line["duration_ms"], float) for line in lines)
    assert all(line["message"].split()[1].startswith("/v1/members") for line in lines)
    assert lines[1]["request_id"] == "req-lookup-1"
    assert lines[2]["member_id"] == member_id
    everything = "\n".join(formatter.format(r) for r in caplog.records)
    for secret in (phone, phone[1:], "13712345678", ADMIN_KEY, key):
        assert secret not in everything


async def test_refused_keys_are_logged_and_counted_with_their_status(
    database_url: str, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings_for(database_url, nats_url), log_requests=True)
    async with serving(app) as client:
        api = Api(client, app)
        key = await api.channel_key("pos-log", ["read"])
        with caplog.at_level(logging.INFO, logger="service"):
            wrong = await api.get("/v1/program", key="not-a-key")
            missing = await client.get("/v1/program")
            lacking = await api.post("/v1/members", {"identities": []}, key=key)
        metrics = (await client.get("/metrics")).text

    assert (wrong.status_code, missing.status_code, lacking.status_code) == (401, 401, 403)
    statuses = [r.status for r in caplog.records if r.name == "service.requests"]  # type: ignore[attr-defined]
    assert statuses == [401, 401, 403]
    assert 'loyalty_http_requests_total{method="GET",route="/v1/program",status="401"} 2.0' in metrics
    assert "not-a-key" not in "\n".join(JsonFormatter().format(r) for r in caplog.records)
