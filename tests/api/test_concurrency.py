"""Many channels at once against one member: the ledger never overspends."""

from __future__ import annotations

import asyncio
import uuid

from tests.api.conftest import MemberWithPoints


async def test_fifty_concurrent_redemptions_from_two_channels_never_overspend(
    member_with_points: MemberWithPoints,
) -> None:
    api, member_id = member_with_points.api, member_with_points.member_id
    app_key = await api.channel_key("app", ["read", "redeem"], kind="app")
    keys = [member_with_points.key, app_key]

    # 50 redemptions of 30 points each: 1,500 asked for, 1,000 available.
    responses = await asyncio.gather(
        *(
            api.post(
                f"/v1/members/{member_id}/redeem", {"points": 30}, key=keys[i % 2], idem=uuid.uuid4().hex
            )
            for i in range(50)
        )
    )

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {201, 409}, statuses
    succeeded = [r for r in responses if r.status_code == 201]
    refused = [r for r in responses if r.status_code == 409]
    assert all(r.json()["type"].endswith("/insufficient_points") for r in refused)
    assert len(succeeded) == 1000 // 30  # every redemption that fits, and not one more
    balance = (await api.get(f"/v1/members/{member_id}/balance", key=app_key)).json()["balance"]
    assert balance["lifetime_redeemed"] == 30 * len(succeeded)
    assert balance["available"] == balance["lifetime_earned"] - balance["lifetime_redeemed"] == 1000 - 990
    history = (await api.get(f"/v1/members/{member_id}/history", key=app_key, params={"limit": 1000})).json()
    redeemed = [e for e in history["events"] if e["type"] == "points_redeemed"]
    assert len(redeemed) == len(succeeded)
    assert {e["channel"] for e in redeemed} == {"pos-sh-01", "app"}
    # Each success saw a balance that only went down, by exactly its own points.
    remaining = sorted((r.json()["balance"]["available"] for r in succeeded), reverse=True)
    assert remaining == [1000 - 30 * (i + 1) for i in range(len(succeeded))]


async def test_concurrent_earns_for_many_members_all_commit_with_distinct_positions(
    member_with_points: MemberWithPoints,
) -> None:
    api, key = member_with_points.api, member_with_points.key
    members = [await api.enrol(key) for _ in range(10)]

    responses = await asyncio.gather(
        *(
            api.post(
                f"/v1/members/{members[i % 10]}/earn",
                {"order_ref": f"C-{i}", "amount": "10", "currency": "CNY"},
                key=key,
            )
            for i in range(100)
        )
    )

    assert [r.status_code for r in responses] == [201] * 100
    positions = [r.json()["position"] for r in responses]
    assert len(set(positions)) == 100
    for member_id in members:
        balance = (await api.get(f"/v1/members/{member_id}/balance", key=key)).json()["balance"]
        assert balance["available"] == 100
