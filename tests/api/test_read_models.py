"""A channel reads its own writes from the projections with min_position; a member's lots."""

from __future__ import annotations

from tests.api.conftest import MemberWithPoints, Pos


async def test_member_view_with_min_position_shows_the_write_just_made(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key, phone="+8613600000001")
    earned = await api.post(
        f"/v1/members/{member_id}/earn", {"order_ref": "V-1", "amount": "42", "currency": "CNY"}, key=pos.key
    )
    position = earned.json()["position"]

    view = await api.get(f"/v1/members/{member_id}", key=pos.key, params={"min_position": position})

    assert view.status_code == 200, view.text
    body = view.json()
    assert body["position"] == position
    assert body["balance"] == earned.json()["balance"]
    assert body["identities"] == [{"kind": "phone", "value": "+86*******0001"}]
    assert body["channels"] == ["pos-sh-01"]


async def test_min_position_beyond_the_log_is_503_after_the_wait(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key)
    ahead = await api.last_position() + 1000

    response = await api.get(f"/v1/members/{member_id}", key=pos.key, params={"min_position": ahead})

    assert response.status_code == 503
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"].endswith("/projection_behind")


async def test_privacy_scope_sees_identities_in_the_clear(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key, phone="+8613600000002")
    support = await api.channel_key("support", ["read", "privacy"], kind="internal")

    view = await api.get(f"/v1/members/{member_id}", key=support)

    assert view.json()["identities"] == [{"kind": "phone", "value": "+8613600000002"}]


async def test_lots_show_what_is_left_of_each_earn_and_when_it_expires(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    earned = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": f"lot-2-{member_id}", "amount": "50.00", "currency": "CNY"},
        key=key,
    )
    assert earned.status_code == 201, earned.text
    redeemed = await api.post(f"/v1/members/{member_id}/redeem", {"points": 300}, key=key)
    assert redeemed.status_code == 201, redeemed.text

    response = await api.get(f"/v1/members/{member_id}/lots", key=key)

    assert response.status_code == 200, response.text
    lots = response.json()["lots"]
    # Spent soonest-expiring first: the first earn's lot paid the 300.
    assert [lot["points"] for lot in lots] == [700, earned.json()["points"]]
    assert lots[1]["expires_at"] == earned.json()["expires_at"]
    assert all(lot["expires_at"] > lot["available_at"] for lot in lots)
    assert sum(lot["points"] for lot in lots) == redeemed.json()["balance"]["available"]
    missing = await api.get("/v1/members/00000000-0000-4000-8000-000000000000/lots", key=key)
    assert missing.status_code == 404
