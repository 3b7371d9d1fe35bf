"""The command endpoints' lean path (ADR 24): answered past Litestar's per-request machinery,
with the same contract — statuses, problems, headers, the request log line and metrics."""

from __future__ import annotations

import uuid

from litestar.handlers import HTTPRouteHandler

from service.api.lean import LEAN
from service.api.operations import OPERATIONS

from .conftest import Api, MemberWithPoints, Pos


def _lean_paths(api: Api) -> set[str]:
    return {
        route.path_format
        for route in api.app.routes
        for handler in getattr(route, "route_handlers", ())
        if isinstance(handler, HTTPRouteHandler) and LEAN in handler.opt
    }


async def test_every_command_a_batch_item_can_be_is_answered_on_the_lean_path(api: Api) -> None:
    lean = _lean_paths(api)

    assert {op.path for op in OPERATIONS.values()} | {"/v1/batch"} == lean


async def test_an_earn_answers_json_with_its_length_and_a_replay_says_so(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member = member_with_points.api, member_with_points.key, member_with_points.member_id
    body = {"order_ref": "lean-1", "amount": "10.00", "currency": "CNY"}

    first = await api.post(f"/v1/members/{member}/earn", body, key=key, idem="lean-earn-1")
    again = await api.post(f"/v1/members/{member}/earn", body, key=key, idem="lean-earn-1")

    assert first.status_code == again.status_code == 201
    assert first.headers["content-type"] == "application/json"
    assert first.headers["content-length"] == str(len(first.content))
    assert "idempotent-replayed" not in first.headers
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content


async def test_a_refusal_on_the_lean_path_is_a_problem_counted_with_its_status(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member = member_with_points.api, member_with_points.key, member_with_points.member_id

    refused = await api.post(f"/v1/members/{member}/redeem", {"points": 10**6}, key=key)

    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"].endswith("/insufficient_points")
    metrics = (await api.client.get("/metrics")).text
    route = "/v1/members/{member_id}/redeem"
    assert f'loyalty_http_requests_total{{method="POST",route="{route}",status="409"}} 1.0' in metrics


async def test_the_guard_refuses_before_the_body_is_read(pos: Pos) -> None:
    api = pos.api
    reader = await api.channel_key("reader", ["read"])

    refused = await api.post(f"/v1/members/{uuid.uuid4()}/earn", {"not": "a body"}, key=reader)

    assert refused.status_code == 403
    assert refused.json()["detail"] == "this API key lacks the 'earn' or 'award' scope"


async def test_a_body_over_the_size_limit_is_413(pos: Pos) -> None:
    api = pos.api
    member = await api.enrol(pos.key)
    huge = {"order_ref": "x" * 11_000_000, "amount": "1.00", "currency": "CNY"}

    refused = await api.post(f"/v1/members/{member}/earn", huge, key=pos.key)

    assert refused.status_code == 413
    assert refused.json()["type"].endswith("/request_too_large")


async def test_an_award_needs_its_own_scope_after_the_body_is_checked(pos: Pos) -> None:
    api = pos.api
    member = await api.enrol(pos.key)

    mixed = await api.post(
        f"/v1/members/{member}/earn", {"points": 5, "reason": "x", "order_ref": "o"}, key=pos.key
    )
    award = await api.post(f"/v1/members/{member}/earn", {"points": 5, "reason": "goodwill"}, key=pos.key)

    assert mixed.status_code == 422
    assert [e["field"] for e in mixed.json()["errors"]] == ["points", "reason"]
    assert award.status_code == 403
    assert award.json()["detail"] == "this API key lacks the 'award' scope"
