"""Retries over a flaky network: the same command twice is one command."""

from __future__ import annotations

from tests.api.conftest import MemberWithPoints, Pos


async def test_same_key_same_body_replays_the_first_response(member_with_points: MemberWithPoints) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    body = {"order_ref": "POS-42", "amount": "50.00", "currency": "CNY"}

    first = await api.post(f"/v1/members/{member_id}/earn", body, key=key, idem="retry-me")
    position = await api.last_position()
    again = await api.post(f"/v1/members/{member_id}/earn", body, key=key, idem="retry-me")

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert again.content == first.content
    assert await api.last_position() == position  # nothing new was written


async def test_redemption_retried_after_it_emptied_the_balance_is_replayed_not_refused(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id

    first = await api.post(f"/v1/members/{member_id}/redeem", {"points": 1000}, key=key, idem="spend-all")
    again = await api.post(f"/v1/members/{member_id}/redeem", {"points": 1000}, key=key, idem="spend-all")

    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json() == first.json()


async def test_same_key_other_body_is_refused(member_with_points: MemberWithPoints) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    await api.post(f"/v1/members/{member_id}/redeem", {"points": 10}, key=key, idem="k-1")
    position = await api.last_position()

    reused = await api.post(f"/v1/members/{member_id}/redeem", {"points": 20}, key=key, idem="k-1")

    assert reused.status_code == 409
    assert reused.json()["type"].endswith("/idempotency_key_reused")
    assert await api.last_position() == position


async def test_same_key_from_another_channel_is_another_command(member_with_points: MemberWithPoints) -> None:
    api, member_id = member_with_points.api, member_with_points.member_id
    app_key = await api.channel_key("app", ["read", "redeem"], kind="app")

    pos_redeem = await api.post(
        f"/v1/members/{member_id}/redeem", {"points": 10}, key=member_with_points.key, idem="same"
    )
    app_redeem = await api.post(f"/v1/members/{member_id}/redeem", {"points": 10}, key=app_key, idem="same")

    assert pos_redeem.status_code == 201
    assert app_redeem.status_code == 201
    assert "idempotent-replayed" not in app_redeem.headers
    assert app_redeem.json()["balance"]["available"] == 980


async def test_an_order_earns_once_whichever_channel_sends_it(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key)
    app_key = await api.channel_key("app", ["read", "earn"], kind="app")
    body = {"order_ref": "ORDER-7", "amount": "88.00", "currency": "CNY"}

    first = await api.post(f"/v1/members/{member_id}/earn", body, key=pos.key)
    position = await api.last_position()
    second = await api.post(f"/v1/members/{member_id}/earn", body, key=app_key)
    other_member = await api.enrol(pos.key)
    third = await api.post(f"/v1/members/{other_member}/earn", body, key=app_key)

    assert first.status_code == 201
    for refused in (second, third):
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("/duplicate_order")
        assert refused.json()["order_ref"] == "ORDER-7"
    assert await api.last_position() == position + 1  # only the second member's enrolment


async def test_insufficient_points_is_refused_and_writes_nothing(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    position = await api.last_position()

    refused = await api.post(f"/v1/members/{member_id}/redeem", {"points": 1001}, key=key)

    assert refused.status_code == 409
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/insufficient_points")
    assert refused.json()["available"] == 1000
    assert await api.last_position() == position
    balance = (await api.get(f"/v1/members/{member_id}/balance", key=key)).json()["balance"]
    assert balance["available"] == 1000
