"""A channel reads its own writes from the projections with min_position."""

from __future__ import annotations

from tests.api.conftest import Pos


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
