"""Retries over a flaky network: the same command twice is one command."""

from __future__ import annotations

from tests.api.conftest import ADMIN_KEY, MemberWithPoints, Pos


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
    # Whose order it is, is told only to the channel that made the order.
    assert "member_id" not in third.json()
    fourth = await api.post(f"/v1/members/{other_member}/earn", body, key=pos.key)
    assert fourth.status_code == 409
    assert fourth.json()["member_id"] == member_id


async def test_a_retry_formatted_differently_is_the_same_request(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    headers = {
        "Authorization": f"Bearer {key}",
        "Idempotency-Key": "redeem-formatted",
        "Content-Type": "application/json",
    }
    path = f"/v1/members/{member_id}/redeem"

    first = await api.client.post(path, content=b'{"points": 10, "reward_ref": "CUP"}', headers=headers)
    retry = await api.client.post(
        path, content=b'{\n  "reward_ref":"CUP",\n  "points":10\n}', headers=headers
    )
    other = await api.client.post(path, content=b'{"reward_ref": "CUP", "points": 11}', headers=headers)

    assert first.status_code == 201, first.text
    assert retry.status_code == 201, retry.text
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.content == first.content
    assert other.status_code == 409
    assert other.json()["type"].endswith("/idempotency_key_reused")


async def test_a_retried_key_creation_answers_the_same_key_and_mints_no_second(pos: Pos) -> None:
    api = pos.api
    body = {"channel": "pos-sh-01", "scopes": ["read"], "name": "till 4"}

    first = await api.post("/v1/api-keys", body, key=ADMIN_KEY, idem="key-till-4")
    retry = await api.post("/v1/api-keys", body, key=ADMIN_KEY, idem="key-till-4")
    reused = await api.post("/v1/api-keys", {**body, "name": "till 5"}, key=ADMIN_KEY, idem="key-till-4")
    missing = await api.client.post(
        "/v1/api-keys", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )

    assert first.status_code == 201, first.text
    assert retry.status_code == 201
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == first.json()
    assert reused.status_code == 409
    assert missing.status_code == 422
    assert missing.json()["errors"][0]["field"] == "Idempotency-Key"
    async with api.services.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE name = 'till 4'") == 1
        stored = await conn.fetchval("SELECT response FROM idempotency_keys WHERE key = 'key-till-4'")
    # The key is shown again to the retry, but never kept readable in the database.
    assert first.json()["key"].encode() not in stored
    works = await api.get("/v1/program", key=first.json()["key"])
    assert works.status_code == 200


async def test_a_retried_channel_registration_is_answered_again(pos: Pos) -> None:
    api = pos.api
    body = {"id": "web-cn", "name": "Web shop", "kind": "web"}

    first = await api.post("/v1/channels", body, key=ADMIN_KEY, idem="channel-web-cn")
    retry = await api.post("/v1/channels", body, key=ADMIN_KEY, idem="channel-web-cn")
    again = await api.post("/v1/channels", body, key=ADMIN_KEY, idem="channel-web-cn-2")

    assert first.status_code == 201, first.text
    assert (retry.status_code, retry.headers.get("Idempotent-Replayed")) == (201, "true")
    assert retry.json() == first.json() == body
    assert again.status_code == 409
    assert again.json()["type"].endswith("/channel_exists")


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
