"""The complete ledger over HTTP: refunds, undone redemptions, holds, adjustments, transfers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.api.conftest import Api, MemberWithPoints


def problem_code(response: Any) -> str:
    """The problem type's code (the last part of its `type`)."""
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return str(response.json()["type"]).rsplit("/", 1)[-1]


async def crm_key(api: Api) -> str:
    """A back-office key that may correct balances and move points."""
    return await api.channel_key("crm", ["read", "adjust", "transfer"], kind="internal")


# --- reversals --------------------------------------------------------------------------------


async def test_a_partial_refund_then_the_rest_and_never_past_the_order(
    member_with_points: MemberWithPoints,
) -> None:
    # Given a member who earned 1,000 points for an order of 1000.00
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    order = f"seed-{member_id}"
    reversals = f"/v1/members/{member_id}/reversals"

    # When 400.00 of it is refunded
    partial = await api.post(reversals, {"order_ref": order, "amount": "400.00"}, key=key)

    # Then its points are taken back in proportion
    assert partial.status_code == 201, partial.text
    assert partial.json()["points"] == -400
    assert partial.json()["balance"]["available"] == 600
    assert partial.json()["position"] == await api.last_position()

    # When more than what remains is refunded, then it is refused and nothing is written
    before = await api.last_position()
    over = await api.post(reversals, {"order_ref": order, "amount": "600.01"}, key=key)
    assert (over.status_code, problem_code(over)) == (409, "over_refund")
    assert await api.last_position() == before

    # When the rest is refunded (no amount: what remains of the order)
    rest = await api.post(reversals, {"order_ref": order}, key=key)

    # Then the order's points are all taken back, and nothing more can be refunded
    assert rest.status_code == 201, rest.text
    assert rest.json()["points"] == -600
    assert rest.json()["balance"]["available"] == 0
    again = await api.post(reversals, {"order_ref": order}, key=key)
    assert (again.status_code, problem_code(again)) == (409, "over_refund")


async def test_a_refund_after_the_points_were_spent_shows_a_negative_available(
    member_with_points: MemberWithPoints,
) -> None:
    # Given a member who spent 800 of the 1,000 points an order earned
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    spent = await api.post(f"/v1/members/{member_id}/redeem", {"points": 800}, key=key)
    assert spent.status_code == 201, spent.text

    # When the whole order is refunded
    refund = await api.post(f"/v1/members/{member_id}/reversals", {"order_ref": f"seed-{member_id}"}, key=key)

    # Then all its points are taken back: the spent ones are owed
    assert refund.status_code == 201, refund.text
    assert refund.json()["points"] == -1000
    assert refund.json()["balance"]["available"] == -800
    balance = (await api.get(f"/v1/members/{member_id}/balance", key=key)).json()["balance"]
    assert balance["available"] == -800


async def test_a_redemption_is_undone_by_the_id_its_redeem_answered_with(
    member_with_points: MemberWithPoints,
) -> None:
    # Given a redemption of 300 points
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    redeemed = await api.post(f"/v1/members/{member_id}/redeem", {"points": 300}, key=key)
    redemption_id = redeemed.json()["redemption_id"]

    # When it is undone
    undone = await api.post(f"/v1/members/{member_id}/reversals", {"redemption_id": redemption_id}, key=key)

    # Then the points are back, and it cannot be undone twice
    assert undone.status_code == 201, undone.text
    assert undone.json()["points"] == 300
    assert undone.json()["balance"]["available"] == 1000
    twice = await api.post(f"/v1/members/{member_id}/reversals", {"redemption_id": redemption_id}, key=key)
    assert (twice.status_code, problem_code(twice)) == (409, "already_reversed")
    unknown = await api.post(
        f"/v1/members/{member_id}/reversals", {"redemption_id": str(uuid.uuid4())}, key=key
    )
    assert (unknown.status_code, problem_code(unknown)) == (404, "redemption_not_found")


async def test_a_reversal_is_a_refund_or_an_undo_never_both_nor_neither(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    reversals = f"/v1/members/{member_id}/reversals"
    before = await api.last_position()

    mixed = await api.post(
        reversals, {"order_ref": f"seed-{member_id}", "redemption_id": str(uuid.uuid4())}, key=key
    )
    neither = await api.post(reversals, {}, key=key)
    amount_alone = await api.post(reversals, {"amount": "10.00"}, key=key)

    assert (mixed.status_code, problem_code(mixed)) == (422, "validation_error")
    assert [e["field"] for e in mixed.json()["errors"]] == ["order_ref"]
    assert neither.status_code == 422
    assert [e["field"] for e in neither.json()["errors"]] == ["order_ref"]
    assert [e["field"] for e in amount_alone.json()["errors"]] == ["order_ref"]
    assert await api.last_position() == before


async def test_a_refund_needs_the_earn_scope_and_an_undo_the_redeem_scope(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    redemption_id = (await api.post(f"/v1/members/{member_id}/redeem", {"points": 10}, key=key)).json()[
        "redemption_id"
    ]
    earn_only = await api.channel_key("web", ["read", "earn"], kind="web")
    redeem_only = await api.channel_key("app", ["read", "redeem"], kind="app")
    reversals = f"/v1/members/{member_id}/reversals"

    refund_by_redeemer = await api.post(reversals, {"order_ref": f"seed-{member_id}"}, key=redeem_only)
    undo_by_earner = await api.post(reversals, {"redemption_id": redemption_id}, key=earn_only)
    undo_by_redeemer = await api.post(reversals, {"redemption_id": redemption_id}, key=redeem_only)

    assert refund_by_redeemer.status_code == 403
    assert undo_by_earner.status_code == 403
    assert undo_by_redeemer.status_code == 201, undo_by_redeemer.text


# --- holds ------------------------------------------------------------------------------------


async def test_a_hold_captured_in_part_leaves_the_rest_available_and_closes(
    member_with_points: MemberWithPoints,
) -> None:
    # Given a hold of 500 of the member's 1,000 points
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    held = await api.post(f"/v1/members/{member_id}/holds", {"points": 500, "order_ref": "WEB-9"}, key=key)
    assert held.status_code == 201, held.text
    hold = held.json()
    assert hold["points"] == 500
    assert (hold["balance"]["available"], hold["balance"]["held"]) == (500, 500)
    lasts = datetime.fromisoformat(hold["expires_at"]) - datetime.now(UTC)
    assert timedelta(seconds=800) < lasts <= timedelta(seconds=900)  # the default: 15 minutes

    # When 200 of it are captured
    captured = await api.post(f"/v1/holds/{hold['hold_id']}/capture", {"points": 200}, key=key)

    # Then 200 are spent and the rest is available again
    assert captured.status_code == 201, captured.text
    closed = captured.json()
    assert (closed["hold_id"], closed["captured"], closed["released"]) == (hold["hold_id"], 200, 300)
    assert (closed["balance"]["available"], closed["balance"]["held"]) == (800, 0)
    assert closed["position"] > hold["position"]

    # And the hold cannot be captured again
    before = await api.last_position()
    again = await api.post(f"/v1/holds/{hold['hold_id']}/capture", {}, key=key)
    assert (again.status_code, problem_code(again)) == (409, "hold_not_active")
    assert await api.last_position() == before


async def test_a_released_hold_gives_its_points_back(member_with_points: MemberWithPoints) -> None:
    # Given a hold of 300 points
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    hold = (await api.post(f"/v1/members/{member_id}/holds", {"points": 300}, key=key)).json()

    # When it is released (a release has no body)
    idem = uuid.uuid4().hex
    released = await api.client.post(
        f"/v1/holds/{hold['hold_id']}/release",
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": idem},
    )
    # (and retried as `{}`: the same request, answered again)
    retried = await api.post(f"/v1/holds/{hold['hold_id']}/release", {}, key=key, idem=idem)
    assert (retried.status_code, retried.headers.get("Idempotent-Replayed")) == (201, "true")

    # Then all of it is back, and it cannot be released (or captured) again
    assert released.status_code == 201, released.text
    assert (released.json()["captured"], released.json()["released"]) == (0, 300)
    assert (released.json()["balance"]["available"], released.json()["balance"]["held"]) == (1000, 0)
    twice = await api.post(f"/v1/holds/{hold['hold_id']}/release", {}, key=key)
    capture = await api.post(f"/v1/holds/{hold['hold_id']}/capture", {}, key=key)
    assert (twice.status_code, problem_code(twice)) == (409, "hold_not_active")
    assert (capture.status_code, problem_code(capture)) == (409, "hold_not_active")


async def test_a_hold_that_does_not_exist_is_not_found(member_with_points: MemberWithPoints) -> None:
    api, key = member_with_points.api, member_with_points.key
    nowhere = str(uuid.uuid4())

    captured = await api.post(f"/v1/holds/{nowhere}/capture", {"points": 1}, key=key)
    released = await api.post(f"/v1/holds/{nowhere}/release", {}, key=key)

    assert (captured.status_code, problem_code(captured)) == (404, "hold_not_found")
    assert (released.status_code, problem_code(released)) == (404, "hold_not_found")


async def test_a_hold_outside_its_limits_is_refused_naming_the_field(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    holds = f"/v1/members/{member_id}/holds"
    before = await api.last_position()

    too_long = await api.post(holds, {"points": 10, "ttl_seconds": 86_401}, key=key)
    too_many = await api.post(holds, {"points": 1001}, key=key)
    with_body = await api.post(f"/v1/holds/{uuid.uuid4()}/release", {"points": 1}, key=key)

    assert [e["field"] for e in too_long.json()["errors"]] == ["ttl_seconds"]
    assert (too_many.status_code, problem_code(too_many)) == (409, "insufficient_points")
    assert too_many.json()["available"] == 1000
    assert [e["field"] for e in with_body.json()["errors"]] == ["points"]
    assert await api.last_position() == before


async def test_a_hold_by_a_key_without_the_redeem_scope_is_forbidden(
    member_with_points: MemberWithPoints,
) -> None:
    api, member_id = member_with_points.api, member_with_points.member_id
    web = await api.channel_key("web", ["read", "earn"], kind="web")
    before = await api.last_position()

    refused = await api.post(f"/v1/members/{member_id}/holds", {"points": 100}, key=web)

    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert await api.last_position() == before


# --- adjustments and transfers ----------------------------------------------------------------


async def test_an_adjustment_below_zero_needs_allow_negative(member_with_points: MemberWithPoints) -> None:
    # Given a member with 1,000 points and a back-office key
    api, member_id = member_with_points.api, member_with_points.member_id
    crm = await crm_key(api)
    adjustments = f"/v1/members/{member_id}/adjustments"
    before = await api.last_position()

    # When 1,500 points are taken without allow_negative, then it is refused and nothing written
    refused = await api.post(adjustments, {"points": -1500, "reason": "duplicate receipt"}, key=crm)
    assert (refused.status_code, problem_code(refused)) == (409, "insufficient_points")
    assert refused.json()["available"] == 1000
    assert await api.last_position() == before

    # When they are taken with allow_negative, then the balance goes below zero
    allowed = await api.post(
        adjustments, {"points": -1500, "reason": "duplicate receipt", "allow_negative": True}, key=crm
    )
    assert allowed.status_code == 201, allowed.text
    assert allowed.json()["points"] == -1500
    assert allowed.json()["balance"]["available"] == -500

    # And a positive adjustment adds points; zero is no adjustment at all
    added = await api.post(adjustments, {"points": 700, "reason": "goodwill"}, key=crm)
    zero = await api.post(adjustments, {"points": 0, "reason": "nothing"}, key=crm)
    assert added.json()["balance"]["available"] == 200
    assert zero.status_code == 422
    assert [e["field"] for e in zero.json()["errors"]] == ["points"]


async def test_an_adjustment_needs_the_adjust_scope(member_with_points: MemberWithPoints) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id

    refused = await api.post(f"/v1/members/{member_id}/adjustments", {"points": 5, "reason": "x"}, key=key)

    assert refused.status_code == 403


async def test_a_transfer_moves_points_and_the_receivers_view_shows_them(
    member_with_points: MemberWithPoints,
) -> None:
    # Given a member with 1,000 points, another with none, and a key that may transfer
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    receiver = await api.enrol(key)
    crm = await crm_key(api)

    # When 250 points are transferred
    moved = await api.post(
        f"/v1/members/{member_id}/transfers", {"to_member_id": receiver, "points": 250}, key=crm
    )

    # Then the sender has 750, and the receiver's view (read at that position) shows 250
    assert moved.status_code == 201, moved.text
    body = moved.json()
    assert (body["member_id"], body["to_member_id"], body["points"]) == (member_id, receiver, 250)
    assert body["balance"]["available"] == 750
    view = await api.get(f"/v1/members/{receiver}", key=crm, params={"min_position": body["position"]})
    assert view.status_code == 200, view.text
    assert view.json()["balance"]["available"] == 250

    # And a transfer past what is available, or to oneself, is refused
    too_much = await api.post(
        f"/v1/members/{member_id}/transfers", {"to_member_id": receiver, "points": 751}, key=crm
    )
    to_self = await api.post(
        f"/v1/members/{member_id}/transfers", {"to_member_id": member_id, "points": 1}, key=crm
    )
    assert (too_much.status_code, problem_code(too_much)) == (409, "insufficient_points")
    assert (to_self.status_code, problem_code(to_self)) == (409, "transfer_refused")


async def test_a_transfer_needs_the_transfer_scope(member_with_points: MemberWithPoints) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    receiver = await api.enrol(key)

    refused = await api.post(
        f"/v1/members/{member_id}/transfers", {"to_member_id": receiver, "points": 1}, key=key
    )

    assert refused.status_code == 403


# --- retries ----------------------------------------------------------------------------------


async def test_every_command_retried_with_its_idempotency_key_is_replayed_byte_identical(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    crm = await crm_key(api)
    receiver = await api.enrol(key)
    redemption_id = (await api.post(f"/v1/members/{member_id}/redeem", {"points": 100}, key=key)).json()[
        "redemption_id"
    ]
    first_hold = (await api.post(f"/v1/members/{member_id}/holds", {"points": 50}, key=key)).json()
    second_hold = (await api.post(f"/v1/members/{member_id}/holds", {"points": 50}, key=key)).json()
    at_member = f"/v1/members/{member_id}"
    commands: list[tuple[str, str, dict[str, Any]]] = [
        (key, f"{at_member}/reversals", {"order_ref": f"seed-{member_id}", "amount": "100.00"}),
        (key, f"{at_member}/reversals", {"redemption_id": redemption_id}),
        (key, f"{at_member}/holds", {"points": 10, "ttl_seconds": 60}),
        (key, f"/v1/holds/{first_hold['hold_id']}/capture", {"points": 20}),
        (key, f"/v1/holds/{second_hold['hold_id']}/release", {}),
        (crm, f"{at_member}/adjustments", {"points": -5, "reason": "correction"}),
        (crm, f"{at_member}/transfers", {"to_member_id": receiver, "points": 5}),
    ]

    for caller, path, body in commands:
        idem = uuid.uuid4().hex
        first = await api.post(path, body, key=caller, idem=idem)
        # A later change of the member must not show in the replay: it answers the first outcome.
        later = {"order_ref": uuid.uuid4().hex, "amount": "1", "currency": "CNY"}
        assert (await api.post(f"{at_member}/earn", later, key=key)).status_code == 201
        position = await api.last_position()
        again = await api.post(path, body, key=caller, idem=idem)

        assert first.status_code == 201, f"{path}: {first.text}"
        assert "idempotent-replayed" not in first.headers
        assert (again.status_code, again.headers.get("idempotent-replayed")) == (201, "true"), path
        assert again.content == first.content, path
        assert first.json()["position"] < position
        assert await api.last_position() == position, path  # the replay wrote nothing
