"""POST /v1/batch: an offline POS catching up — each item its own command, answer and key."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tests.api.conftest import Api, Pos

PURCHASE = {"amount": "10.00", "currency": "CNY"}


async def batch(api: Api, key: str, items: list[dict[str, Any]], idem: str | None = None) -> Any:
    return await api.post("/v1/batch", {"items": items}, key=key, idem=idem)


async def members(api: Api, key: str, count: int) -> list[str]:
    return list(await asyncio.gather(*(api.enrol(key) for _ in range(count))))


async def test_a_batch_of_500_with_10_bad_items_applies_490_and_a_retry_changes_nothing(pos: Pos) -> None:
    api, key = pos.api, pos.key
    people = await members(api, key, 49)
    items: list[dict[str, Any]] = []
    for i in range(490):
        member = people[i % len(people)]
        items.append(
            {
                "op": "earn",
                "member_id": member,
                "idempotency_key": f"e-{i}",
                "body": {**PURCHASE, "order_ref": f"B-{i}"},
            }
        )
    bad = [
        {
            "op": "earn",
            "member_id": people[0],
            "idempotency_key": "bad-0",
            "body": {"order_ref": "X0", "amount": "-1", "currency": "CNY"},
        },
        {
            "op": "earn",
            "member_id": str(uuid.uuid4()),
            "idempotency_key": "bad-1",
            "body": {**PURCHASE, "order_ref": "X1"},
        },
        {
            "op": "earn",
            "member_id": people[1],
            "idempotency_key": "bad-2",
            "body": {**PURCHASE, "order_ref": "B-3"},
        },
        {"op": "redeem", "member_id": people[2], "idempotency_key": "bad-3", "body": {"points": 10**6}},
        {"op": "redeem", "member_id": people[3], "idempotency_key": "bad-4", "body": {"points": "10"}},
        {"op": "redeem", "member_id": people[4], "idempotency_key": "bad-5", "body": {"points": 1.5}},
        {"op": "earn", "idempotency_key": "bad-6", "body": {**PURCHASE, "order_ref": "X6"}},
        {
            "op": "earn",
            "member_id": people[5],
            "idempotency_key": "bad-7",
            "body": {**PURCHASE, "order_ref": "X7", "tip": 1},
        },
        {"op": "redeem", "member_id": people[6], "idempotency_key": "bad-8", "body": {}},
        {
            "op": "earn",
            "member_id": people[7],
            "idempotency_key": "bad-9",
            "body": {"points": 5, "reason": "no award scope"},
        },
    ]
    for n, item in enumerate(bad):
        items.insert(n * 49 + 7, item)
    assert len(items) == 500
    batches_before = api.services.appender.batches

    first = await batch(api, key, items, idem="batch-1")

    assert first.status_code == 200, first.text
    results = first.json()["results"]
    assert len(results) == 500
    assert sum(r["status"] == 201 for r in results) == 490
    refused = [(items[i]["idempotency_key"], r) for i, r in enumerate(results) if r["status"] != 201]
    assert [k for k, _ in refused] == [f"bad-{n}" for n in range(10)]
    statuses = {k: r["status"] for k, r in refused}
    assert statuses == {
        "bad-0": 422, "bad-1": 404, "bad-2": 409, "bad-3": 409, "bad-4": 422,
        "bad-5": 422, "bad-6": 422, "bad-7": 422, "bad-8": 422, "bad-9": 403,
    }  # fmt: skip
    for _, problem in refused:
        assert problem["body"]["type"].startswith("https://")
        assert problem["body"]["detail"]
    assert {e["field"] for _, r in refused if "errors" in r["body"] for e in r["body"]["errors"]} >= {
        "amount", "points", "member_id", "tip",
    }  # fmt: skip
    # 490 commands in a handful of group commits, not one transaction each.
    assert api.services.appender.batches - batches_before < 100
    position = await api.last_position()

    retry = await batch(api, key, items, idem="batch-2")

    assert retry.status_code == 200
    again = retry.json()["results"]
    assert await api.last_position() == position  # nothing new was written
    for before, after in zip(results, again, strict=True):
        assert after["status"] == before["status"]
        if before["status"] == 201:
            assert after["replayed"] is True
            assert after["body"] == before["body"]


async def test_items_of_one_member_run_in_order(pos: Pos) -> None:
    api, key = pos.api, pos.key
    (member,) = await members(api, key, 1)
    items = [
        {
            "op": "earn",
            "member_id": member,
            "idempotency_key": "o-1",
            "body": {**PURCHASE, "order_ref": "O-1"},
        },
        {"op": "redeem", "member_id": member, "idempotency_key": "o-2", "body": {"points": 10}},
        {
            "op": "earn",
            "member_id": member,
            "idempotency_key": "o-3",
            "body": {**PURCHASE, "order_ref": "O-3"},
        },
        {"op": "redeem", "member_id": member, "idempotency_key": "o-4", "body": {"points": 10}},
    ]

    results = (await batch(api, key, items)).json()["results"]

    assert [r["status"] for r in results] == [201] * 4
    assert [r["body"]["balance"]["available"] for r in results] == [10, 0, 10, 0]
    positions = [r["body"]["position"] for r in results]
    assert positions == sorted(positions)


async def test_an_item_sent_alone_first_is_the_same_command_in_a_batch(pos: Pos) -> None:
    api, key = pos.api, pos.key
    (member,) = await members(api, key, 1)
    body = {**PURCHASE, "order_ref": "SOLO-1"}
    alone = await api.post(f"/v1/members/{member}/earn", body, key=key, idem="solo-1")
    position = await api.last_position()

    item = {
        "op": "earn",
        "member_id": member,
        "idempotency_key": "solo-1",
        "body": {"currency": "CNY", **body},
    }
    (result,) = (await batch(api, key, [item])).json()["results"]

    assert alone.status_code == 201
    assert result["status"] == 201
    assert result["replayed"] is True
    assert result["body"] == alone.json()
    assert await api.last_position() == position


async def test_each_item_needs_the_scope_of_its_own_endpoint(pos: Pos) -> None:
    api = pos.api
    (member,) = await members(api, pos.key, 1)
    earner = await api.channel_key("kiosk", ["earn"], kind="pos")
    items = [
        {
            "op": "earn",
            "member_id": member,
            "idempotency_key": "k-1",
            "body": {**PURCHASE, "order_ref": "K-1"},
        },
        {"op": "redeem", "member_id": member, "idempotency_key": "k-2", "body": {"points": 1}},
    ]

    results = (await batch(api, earner, items)).json()["results"]

    assert [r["status"] for r in results] == [201, 403]
    assert "redeem" in results[1]["body"]["detail"]


async def test_a_malformed_batch_is_refused_whole(pos: Pos) -> None:
    api, key = pos.api, pos.key
    position = await api.last_position()
    empty = await batch(api, key, [])
    too_many = await batch(
        api, key, [{"op": "redeem", "idempotency_key": f"t-{i}", "body": {}} for i in range(501)]
    )
    unknown = await batch(api, key, [{"op": "teleport", "idempotency_key": "u-1", "body": {}}])
    assert [r.status_code for r in (empty, too_many, unknown)] == [422, 422, 422]
    assert await api.last_position() == position


async def test_every_kind_of_command_runs_in_a_batch(pos: Pos) -> None:
    api = pos.api
    key = await api.channel_key(
        "crm", ["read", "earn", "redeem", "adjust", "transfer", "members"], kind="internal"
    )
    alice, bob = await members(api, key, 2)
    first = [
        {
            "op": "earn",
            "member_id": alice,
            "idempotency_key": "a-1",
            "body": {"order_ref": "A-1", "amount": "500", "currency": "CNY"},
        },
        {"op": "hold", "member_id": alice, "idempotency_key": "a-2", "body": {"points": 100}},
        {"op": "hold", "member_id": alice, "idempotency_key": "a-3", "body": {"points": 50}},
        {
            "op": "adjustment",
            "member_id": alice,
            "idempotency_key": "a-4",
            "body": {"points": -10, "reason": "fix"},
        },
        {
            "op": "transfer",
            "member_id": alice,
            "idempotency_key": "a-5",
            "body": {"to_member_id": bob, "points": 40},
        },
        {"op": "redeem", "member_id": bob, "idempotency_key": "b-1", "body": {"points": 40}},
        {
            "op": "reversal",
            "member_id": alice,
            "idempotency_key": "a-6",
            "body": {"order_ref": "A-1", "amount": "100"},
        },
    ]

    results = (await batch(api, key, first)).json()["results"]

    assert [r["status"] for r in results] == [201] * 7, results
    hold_a, hold_b = results[1]["body"]["hold_id"], results[2]["body"]["hold_id"]
    # The receiver's redeem waited for the transfer that gave it the points.
    assert results[5]["body"]["balance"]["available"] == 0
    second = [
        {"op": "capture", "hold_id": hold_a, "idempotency_key": "h-1", "body": {"points": 60}},
        {"op": "release", "hold_id": hold_b, "idempotency_key": "h-2"},
        {"op": "capture", "hold_id": hold_b, "idempotency_key": "h-3", "body": {}},
        {"op": "capture", "idempotency_key": "h-4", "body": {}},
    ]

    closed = (await batch(api, key, second)).json()["results"]

    assert [r["status"] for r in closed] == [201, 201, 409, 422]
    assert (closed[0]["body"]["captured"], closed[0]["body"]["released"]) == (60, 40)
    assert closed[2]["body"]["type"].endswith("/hold_not_active")
    assert closed[3]["body"]["errors"][0]["field"] == "hold_id"
    # 500 earned, 10 adjusted away, 40 transferred, 100 of 500 refunded (100 points), 60 captured.
    balance = (await api.get(f"/v1/members/{alice}/balance", key=key)).json()["balance"]
    assert balance["available"] == 500 - 10 - 40 - 100 - 60
