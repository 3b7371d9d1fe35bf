"""A member's life at the counter, told through the HTTP API."""

from __future__ import annotations

from tests.api.conftest import Pos


async def test_enrol_earn_redeem_then_balance_and_history_agree(pos: Pos) -> None:
    api, key = pos.api, pos.key

    # Enrol with a phone number written the way a cashier types it.
    enrolled = await api.post(
        "/v1/members",
        {"identities": [{"kind": "phone", "value": "138 0013 8000"}], "profile": {"name": "Li Lei"}},
        key=key,
    )
    assert enrolled.status_code == 201, enrolled.text
    member = enrolled.json()
    member_id = member["member_id"]
    assert member["status"] == "active"
    assert member["identities"] == [{"kind": "phone", "value": "+86*******8000"}]  # masked without privacy
    assert member["balance"]["available"] == 0

    # Earn for a purchase of 128.50 CNY: 1 point per unit, rounded down.
    earned = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "POS-0001", "amount": "128.50", "currency": "CNY"},
        key=key,
    )
    assert earned.status_code == 201, earned.text
    body = earned.json()
    assert body["points"] == 128
    assert body["breakdown"] == [{"rule": "base", "points": 128}]
    assert body["rules_version"] == 1
    assert body["balance"]["available"] == 128
    assert body["position"] > member["position"]

    # Redeem part of it.
    redeemed = await api.post(
        f"/v1/members/{member_id}/redeem", {"points": 100, "reward_ref": "coffee"}, key=key
    )
    assert redeemed.status_code == 201, redeemed.text
    assert redeemed.json()["balance"]["available"] == 28
    assert redeemed.json()["balance"]["lifetime_redeemed"] == 100

    # The balance and the history tell the same story.
    balance = (await api.get(f"/v1/members/{member_id}/balance", key=key)).json()["balance"]
    assert balance["available"] == 28
    assert balance["lifetime_earned"] == 128
    history = (await api.get(f"/v1/members/{member_id}/history", key=key)).json()["events"]
    assert [e["type"] for e in history] == ["member_enrolled", "points_earned", "points_redeemed"]
    assert [e["points"] for e in history] == [None, 128, -100]
    assert all(e["channel"] == "pos-sh-01" for e in history)
    assert [e["position"] for e in history] == sorted(e["position"] for e in history)

    # Any format of the same phone number finds the member.
    found = await api.get(
        "/v1/members/lookup", key=key, params={"kind": "phone", "value": "+86 138-0013-8000"}
    )
    assert found.status_code == 200, found.text
    assert found.json()["member_id"] == member_id


async def test_balance_as_of_an_earlier_instant_is_replayed(pos: Pos) -> None:
    api, key = pos.api, pos.key
    member_id = await api.enrol(key)
    first = await api.post(
        f"/v1/members/{member_id}/earn", {"order_ref": "A-1", "amount": "300", "currency": "CNY"}, key=key
    )
    history = (await api.get(f"/v1/members/{member_id}/history", key=key)).json()["events"]
    after_first = history[-1]["recorded_at"]
    await api.post(
        f"/v1/members/{member_id}/earn", {"order_ref": "A-2", "amount": "200", "currency": "CNY"}, key=key
    )

    then = await api.get(f"/v1/members/{member_id}/balance", key=key, params={"as_of": after_first})
    now = await api.get(f"/v1/members/{member_id}/balance", key=key)

    assert first.status_code == 201
    assert then.status_code == 200, then.text
    assert then.json()["balance"]["lifetime_earned"] == 300
    assert now.json()["balance"]["lifetime_earned"] == 500


async def test_award_needs_the_award_scope(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key)
    refused = await api.post(
        f"/v1/members/{member_id}/earn", {"points": 50, "reason": "birthday"}, key=pos.key
    )
    crm = await api.channel_key("crm", ["read", "award"], kind="internal")
    awarded = await api.post(f"/v1/members/{member_id}/earn", {"points": 50, "reason": "birthday"}, key=crm)

    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert awarded.status_code == 201, awarded.text
    assert awarded.json()["points"] == 50
    assert awarded.json()["balance"]["available"] == 50


async def test_quote_writes_nothing(pos: Pos) -> None:
    api = pos.api
    member_id = await api.enrol(pos.key)
    before = await api.last_position()
    quote = await api.client.post(
        "/v1/quotes/earn",
        json={"member_id": member_id, "order_ref": "Q-1", "amount": "99.99", "currency": "CNY"},
        headers={"Authorization": f"Bearer {pos.key}"},
    )
    assert quote.status_code == 200, quote.text
    assert quote.json()["points"] == 99
    assert await api.last_position() == before


async def test_rules_change_applies_to_later_earns_and_old_versions_stay_readable(pos: Pos) -> None:
    api = pos.api
    admin = await api.channel_key("hq", ["read", "rules"], kind="internal")
    program = (await api.get("/v1/program", key=admin)).json()
    rules = program["rules"]
    rules["earn"]["points_per_unit"] = "2"

    published = await api.client.put(
        "/v1/program/rules",
        json=rules,
        headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "rules-1"},
    )
    member_id = await api.enrol(pos.key)
    earned = await api.post(
        f"/v1/members/{member_id}/earn", {"order_ref": "R-1", "amount": "10", "currency": "CNY"}, key=pos.key
    )
    old = await api.get("/v1/program/rules/1", key=admin)

    assert published.status_code == 200, published.text
    assert published.json()["rules_version"] == 2
    # A retried publication is the first one, answered again: no third version.
    retried = await api.client.put(
        "/v1/program/rules",
        json=rules,
        headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": "rules-1"},
    )
    assert (retried.status_code, retried.headers["Idempotent-Replayed"]) == (200, "true")
    assert retried.content == published.content
    assert earned.json()["points"] == 20
    assert earned.json()["rules_version"] == 2
    assert old.json()["rules"]["earn"]["points_per_unit"] == "1"
