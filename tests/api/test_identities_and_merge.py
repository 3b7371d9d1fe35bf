"""One member across channels: identities bind once, any format finds them, duplicates merge."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from domain.member import Member
from tests.api.conftest import Pos


@pytest.mark.parametrize(
    ("kind", "stored", "forms"),
    [
        (
            "phone",
            "+86 138 0013 8000",
            ["13800138000", "+8613800138000", "138-0013-8000", "(+86) 138 0013 8000"],
        ),
        (
            "email",
            "Li.Lei@Example.COM",
            ["li.lei@example.com", "  LI.LEI@example.com ", "Li.Lei@Example.COM"],
        ),
    ],
)
async def test_any_format_of_an_identity_finds_the_same_member(
    pos: Pos, kind: str, stored: str, forms: list[str]
) -> None:
    api = pos.api
    enrolled = await api.post("/v1/members", {"identities": [{"kind": kind, "value": stored}]}, key=pos.key)
    assert enrolled.status_code == 201, enrolled.text

    for form in forms:
        found = await api.get("/v1/members/lookup", key=pos.key, params={"kind": kind, "value": form})
        assert found.status_code == 200, (form, found.text)
        assert found.json()["member_id"] == enrolled.json()["member_id"]
    taken = await api.post("/v1/members", {"identities": [{"kind": kind, "value": forms[0]}]}, key=pos.key)
    assert taken.status_code == 409
    assert taken.json()["type"].endswith("/identity_taken")
    assert taken.json()["member_id"] == enrolled.json()["member_id"]


async def test_twenty_members_racing_for_one_identity_leave_exactly_one_owner(pos: Pos) -> None:
    api = pos.api
    members = [await api.enrol(pos.key) for _ in range(20)]

    responses = await asyncio.gather(
        *(
            api.post(f"/v1/members/{m}/identities", {"kind": "app_user", "value": "wanted-1"}, key=pos.key)
            for m in members
        )
    )

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [409] * 19, [r.text for r in responses if r.status_code not in (201, 409)]
    winner = members[[r.status_code for r in responses].index(201)]
    assert all(r.json()["member_id"] == winner for r in responses if r.status_code == 409)
    found = await api.get("/v1/members/lookup", key=pos.key, params={"kind": "app_user", "value": "wanted-1"})
    assert found.json()["member_id"] == winner


async def test_concurrent_enrolments_with_one_identity_create_one_member(pos: Pos) -> None:
    api = pos.api
    responses = await asyncio.gather(
        *(
            api.post("/v1/members", {"identities": [{"kind": "device", "value": "dev-42"}]}, key=pos.key)
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in responses) == [201] + [409] * 9


async def test_unlinked_identity_is_free_again_but_the_last_one_stays(pos: Pos) -> None:
    api = pos.api
    first = await api.enrol(pos.key, phone="+8613800000001")
    await api.post(f"/v1/members/{first}/identities", {"kind": "email", "value": "x@y.cn"}, key=pos.key)

    unlinked = await api.post(
        f"/v1/members/{first}/identities/unlink", {"kind": "email", "value": "X@Y.cn"}, key=pos.key
    )
    last = await api.post(
        f"/v1/members/{first}/identities/unlink", {"kind": "phone", "value": "+8613800000001"}, key=pos.key
    )
    second = await api.post(
        "/v1/members", {"identities": [{"kind": "email", "value": "x@y.cn"}]}, key=pos.key
    )
    gone = await api.get(
        "/v1/members/lookup", key=pos.key, params={"kind": "phone", "value": "+8613800000009"}
    )

    assert unlinked.status_code == 201, unlinked.text
    assert [i["kind"] for i in unlinked.json()["identities"]] == ["phone"]
    assert last.status_code == 409
    assert last.json()["type"].endswith("/last_identity")
    assert second.status_code == 201
    assert gone.status_code == 404


async def test_merge_adds_up_moves_identities_and_retires_the_source(pos: Pos) -> None:
    api, key = pos.api, pos.key
    app_key = await api.channel_key("app", ["read", "earn", "redeem", "members"], kind="app")
    target = await api.enrol(key, phone="+8613900000001")
    source_resp = await api.post(
        "/v1/members",
        {"identities": [{"kind": "email", "value": "dup@x.cn"}, {"kind": "app_user", "value": "u-77"}]},
        key=app_key,
    )
    source = source_resp.json()["member_id"]
    await api.post(
        f"/v1/members/{target}/earn", {"order_ref": "T-1", "amount": "300", "currency": "CNY"}, key=key
    )
    await api.post(
        f"/v1/members/{source}/earn", {"order_ref": "S-1", "amount": "500", "currency": "CNY"}, key=app_key
    )
    await api.post(f"/v1/members/{source}/redeem", {"points": 120}, key=app_key)
    before = {
        m: (await api.get(f"/v1/members/{m}/balance", key=key)).json()["balance"] for m in (target, source)
    }

    crm = await api.channel_key("crm", ["read", "members", "privacy"], kind="internal")
    merged = await api.post(f"/v1/members/{target}/merge", {"source_member_id": source}, key=crm)

    assert merged.status_code == 201, merged.text
    after = merged.json()["balance"]
    for field in ("available", "pending", "lifetime_earned", "lifetime_redeemed", "qualifying"):
        assert after[field] == before[target][field] + before[source][field], field
    for kind, value in (("phone", "+8613900000001"), ("email", "dup@x.cn"), ("app_user", "u-77")):
        found = await api.get("/v1/members/lookup", key=key, params={"kind": kind, "value": value})
        assert found.json()["member_id"] == target, (kind, found.text)
    # The member view is a projection: read it at the merge's position (it may lag otherwise).
    view = (
        await api.get(f"/v1/members/{source}", key=key, params={"min_position": merged.json()["position"]})
    ).json()
    assert view["status"] == "merged"
    assert view["merged_into"] == target
    # The source keeps nothing (in the view, the aggregate and the balances projection alike), so
    # sums over members are unchanged by the merge.
    assert view["identities"] == []
    assert {k: v for k, v in view["balance"].items() if k != "tier"} == {
        "available": 0,
        "pending": 0,
        "held": 0,
        "lifetime_earned": 0,
        "lifetime_redeemed": 0,
        "expired": 0,
        "qualifying": 0,
        "expiring": None,
    }
    left = (await api.get(f"/v1/members/{source}/balance", key=key)).json()["balance"]
    assert all(v in (0, None) for k, v in left.items() if k != "tier")
    assert await api.services.projections.wait_for("balances", merged.json()["position"])
    async with api.services.pool.acquire() as conn:
        sums = await conn.fetchrow(
            "SELECT sum(available) AS available, sum(lifetime_earned) AS lifetime_earned FROM balances"
            " WHERE member_id = ANY($1::uuid[])",
            [UUID(target), UUID(source)],
        )
    assert dict(sums) == {"available": after["available"], "lifetime_earned": after["lifetime_earned"]}
    refused = await api.post(
        f"/v1/members/{source}/earn", {"order_ref": "S-2", "amount": "5", "currency": "CNY"}, key=app_key
    )
    assert refused.status_code == 409
    assert refused.json()["type"].endswith("/member_merged")
    assert refused.json()["merged_into"] == target
    # History of both stays readable; the merge is on both streams.
    for member_id in (target, source):
        history = (await api.get(f"/v1/members/{member_id}/history", key=key)).json()["events"]
        assert "members_merged" in [e["type"] for e in history]
    # The source's orders moved too: its order cannot earn again anywhere.
    again = await api.post(
        f"/v1/members/{target}/earn", {"order_ref": "S-1", "amount": "500", "currency": "CNY"}, key=key
    )
    assert again.status_code == 409

    # A replay from zero (no cache, no snapshot) gives the same state.
    repository = api.services.repository
    for member_id in (target, source):
        repository.forget(member_id)
    replayed = await repository.get(Member, UUID(target))
    assert replayed is not None
    assert (await api.get(f"/v1/members/{target}/balance", key=key)).json()["balance"] == after
    retired = await repository.get(Member, UUID(source))
    assert retired is not None
    assert str(retired.merged_into) == target


async def test_merge_needs_the_privacy_scope_too_and_records_the_acting_key(pos: Pos) -> None:
    api, key = pos.api, pos.key
    target, source = await api.enrol(key), await api.enrol(key)
    position = await api.last_position()

    # `members` alone (every POS has it) may not hand one person's account to another.
    refused = await api.post(f"/v1/members/{target}/merge", {"source_member_id": source}, key=key)
    assert refused.status_code == 403
    assert "privacy" in refused.json()["detail"]
    assert await api.last_position() == position

    crm = await api.channel_key("crm", ["read", "members", "privacy"], kind="internal")
    merged = await api.post(f"/v1/members/{target}/merge", {"source_member_id": source}, key=crm)
    assert merged.status_code == 201, merged.text
    async with api.services.pool.acquire() as conn:
        actors = await conn.fetch(
            "SELECT e.channel, k.key_id, k.scopes FROM events e"
            " JOIN api_keys k ON k.key_id::text = e.api_key_id WHERE e.event_type = 'members_merged'"
        )
    # On both streams, each naming the key that did it.
    assert len(actors) == 2
    assert {(a["channel"], "privacy" in a["scopes"]) for a in actors} == {("crm", True)}


async def test_merge_into_itself_or_into_a_merged_member_is_refused(pos: Pos) -> None:
    api = pos.api
    key = await api.channel_key("crm", ["read", "members", "privacy"], kind="internal")
    a, b, c = [await api.enrol(key) for _ in range(3)]
    position = await api.last_position()

    itself = await api.post(f"/v1/members/{a}/merge", {"source_member_id": a}, key=key)
    assert itself.status_code == 409
    assert itself.json()["type"].endswith("/merge_refused")
    assert await api.last_position() == position

    assert (await api.post(f"/v1/members/{a}/merge", {"source_member_id": b}, key=key)).status_code == 201
    into_merged = await api.post(f"/v1/members/{b}/merge", {"source_member_id": c}, key=key)
    merged_again = await api.post(f"/v1/members/{c}/merge", {"source_member_id": b}, key=key)
    assert into_merged.status_code == 409
    assert into_merged.json()["type"].endswith("/member_merged")
    assert merged_again.status_code == 409
    assert merged_again.json()["merged_into"] == a
