"""What an SRE looks at: liveness, readiness, metrics."""

from __future__ import annotations

import httpx

from tests.api.conftest import Api, Pos
from tests.waiting import until


async def test_health_and_metrics_are_public_and_report_the_service(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key)
    await api.post(
        f"/v1/members/{member_id}/earn", {"order_ref": "M-1", "amount": "5", "currency": "CNY"}, key=pos.key
    )

    live = await api.client.get("/health/live")
    # The relay creates the stream in the background; ready says so once it exists.
    ready = await until(lambda: _ready(api), what="ready")
    metrics = await api.client.get("/metrics")

    assert live.status_code == 200
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["database"]["ok"] is True
    assert ready.json()["checks"]["database"]["position"] == await api.last_position()
    assert metrics.status_code == 200
    text = metrics.text
    assert (
        'loyalty_http_requests_total{method="POST",route="/v1/members/{member_id}/earn",status="201"} 1.0'
        in text
    )
    assert "loyalty_appended_events_total" in text
    assert "loyalty_append_queue 0.0" in text
    assert 'loyalty_projection_position{projection="members"}' in text
    assert "loyalty_relay_position" in text
    assert ready.json()["checks"]["projection:balances"]["ok"] is True
    assert ready.json()["status"] == "ok"
    assert ready.json()["checks"]["stream"] == {
        "ok": True,
        "name": api.services.relay.stream_name,
        "exists": True,
    }


async def _ready(api: Api) -> httpx.Response | None:
    response = await api.client.get("/health/ready")
    return response if response.status_code == 200 else None
