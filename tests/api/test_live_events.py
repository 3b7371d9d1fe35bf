"""GET /v1/events/live: the committed events, in order, as server-sent events; resumable by
position; nothing personal in them; scope `read`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from service.app import create_app
from service.http_server import GRACEFUL_SHUTDOWN_SECONDS, HttpLimits, _Server, http_config
from tests.api.conftest import ADMIN_KEY, Pos, settings_for
from tests.waiting import until

WITHIN = 30.0  # seconds any expected message may take to arrive


async def messages(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """The SSE messages of a streamed response (comments skipped), each as its fields."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields[name] = fields.get(name, "") + value.removeprefix(" ")


async def read_events(response: httpx.Response, count: int) -> tuple[int, list[dict[str, Any]]]:
    """The `ready` message's position and the next `count` events (fails after WITHIN seconds)."""

    async def read() -> tuple[int, list[dict[str, Any]]]:
        ready, events = -1, []
        async for message in messages(response):
            if message.get("event") == "ready":
                ready = int(message["id"])
                assert json.loads(message["data"]) == {"position": ready}
                if count == 0:
                    break
                continue
            event = json.loads(message["data"])
            assert int(message["id"]) == event["position"]
            events.append(event)
            if len(events) >= count:
                break
        return ready, events

    return await asyncio.wait_for(read(), WITHIN)


def live(pos: Pos, key: str | None = None, headers: dict[str, str] | None = None, **params: Any) -> Any:
    return pos.api.client.stream(
        "GET",
        "/v1/events/live",
        params=params,
        headers={"Authorization": f"Bearer {key or pos.key}", **(headers or {})},
    )


async def earn(pos: Pos, member_id: str, order: str, amount: str = "100.00") -> dict[str, Any]:
    response = await pos.api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": order, "amount": amount, "currency": "CNY"},
        key=pos.key,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_stream_delivers_the_events_committed_after_it_opened_in_order(pos: Pos) -> None:
    member_id = await pos.api.enrol(pos.key)
    head = await pos.api.last_position()
    async with live(pos) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-store"
        reading = asyncio.create_task(read_events(response, 5))
        earned = [await earn(pos, member_id, f"live-{i}", f"{10 * (i + 1)}.00") for i in range(5)]
        ready, events = await reading

    assert ready == head  # nothing committed before it opened is sent again
    assert [e["position"] for e in events] == [e["position"] for e in earned]
    assert [e["event_id"] for e in events] == [e["event_id"] for e in earned]
    assert {e["type"] for e in events} == {"points_earned"}
    assert [e["points"] for e in events] == [10, 20, 30, 40, 50]
    assert {e["member_id"] for e in events} == {member_id}
    assert {e["channel"] for e in events} == {"pos-sh-01"}


async def test_a_stream_resumes_after_a_position_or_the_last_event_id(pos: Pos) -> None:
    member_id = await pos.api.enrol(pos.key)
    start = await pos.api.last_position()
    earned = [await earn(pos, member_id, f"resume-{i}") for i in range(4)]
    positions = [e["position"] for e in earned]

    async with live(pos, after=start, limit=4) as response:
        ready, events = await read_events(response, 4)
    assert ready == start
    assert [e["position"] for e in events] == positions

    # A reconnecting EventSource says where it was; that wins over `after`.
    async with live(pos, headers={"Last-Event-ID": str(positions[1])}, after=start) as response:
        ready, events = await read_events(response, 2)
    assert ready == positions[1]
    assert [e["position"] for e in events] == positions[2:]

    # With `limit`, the stream ends by itself once it has sent that many.
    async with live(pos, after=positions[0], limit=2) as response:
        body = await asyncio.wait_for(response.aread(), WITHIN)
    assert body.count(b"\ndata: ") == 3  # ready and two events


async def test_a_stream_shows_no_personal_data(pos: Pos) -> None:
    head = await pos.api.last_position()
    phone = "+8613912345678"
    email = "private.person@example.com"
    async with live(pos, after=head, limit=2) as response:
        member_id = await pos.api.enrol(pos.key, phone=phone)
        linked = await pos.api.post(
            f"/v1/members/{member_id}/identities", {"kind": "email", "value": email}, key=pos.key
        )
        assert linked.status_code == 201, linked.text
        body = (await asyncio.wait_for(response.aread(), WITHIN)).decode()
    assert "member_enrolled" in body
    assert "identity_linked" in body
    for secret in (phone, phone.removeprefix("+86"), email, "private"):
        assert secret not in body


async def test_a_stream_needs_a_key_with_scope_read_and_a_valid_position(pos: Pos) -> None:
    client = pos.api.client
    assert (await client.get("/v1/events/live")).status_code == 401
    earn_only = await pos.api.channel_key("pos-sh-01", ["earn"])
    assert (await pos.api.get("/v1/events/live", key=earn_only)).status_code == 403
    for params, field in (({"after": "-1"}, "after"), ({"after": "x"}, "after"), ({"limit": "0"}, "limit")):
        response = await pos.api.get("/v1/events/live", key=pos.key, params=params)
        assert response.status_code in (400, 422), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert field in response.text
    response = await pos.api.get("/v1/events/live", key=pos.key, headers={"Last-Event-ID": "12a"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Last-Event-ID"


async def test_the_stream_is_documented_in_the_openapi_document(pos: Pos) -> None:
    document = (await pos.api.client.get("/schema/openapi.json")).json()
    operation = document["paths"]["/v1/events/live"]["get"]
    assert operation["x-scopes"] == [["read"]]
    assert "text/event-stream" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} >= {"after", "limit"}
    assert "Last-Event-ID" in operation["description"]
    message = operation["responses"]["200"]["content"]["text/event-stream"]["schema"]
    assert set(message["required"]) == {"id", "data"}
    data = message["properties"]["data"]
    assert data["contentMediaType"] == "application/json"
    assert {"$ref": "#/components/schemas/LiveEventOut"} in data["contentSchema"]["anyOf"]
    assert "LiveEventOut" in document["components"]["schemas"]


async def test_a_draining_server_ends_its_streams_instead_of_waiting_for_them(
    database_url: str, nats_url: str
) -> None:
    """SIGTERM (uvicorn's should_exit) must not wait GRACEFUL_SHUTDOWN_SECONDS on a console left open."""
    server = _Server(
        http_config(
            create_app(settings_for(database_url, nats_url), log_requests=False),
            host="127.0.0.1",
            port=0,
            limits=HttpLimits(),
        )
    )
    serving = asyncio.create_task(server.serve())
    await until(lambda: server.started or serving.done(), what="the server to start")
    port = server.servers[0].sockets[0].getsockname()[1]
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WITHIN) as client,
        client.stream("GET", "/v1/events/live", headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as response,
    ):
        lines = response.aiter_lines()
        assert await asyncio.wait_for(anext(lines), WITHIN) == "retry: 2000"
        assert await asyncio.wait_for(anext(lines), WITHIN) == "event: ready"
        started = time.monotonic()
        server.should_exit = True

        async def rest() -> list[str]:
            return [line async for line in lines]

        left = await asyncio.wait_for(rest(), WITHIN)  # the stream ends...
        await asyncio.wait_for(serving, WITHIN)  # ...and the server with it
    assert left[0].startswith("id: ")
    assert left[1].startswith('data: {"position":')
    assert time.monotonic() - started < GRACEFUL_SHUTDOWN_SECONDS / 2
