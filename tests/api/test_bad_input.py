"""Bad input gets a clear problem+json naming the field, never a 500, and writes nothing."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.api.conftest import MemberWithPoints

PURCHASE = {"order_ref": "B-1", "amount": "10.00", "currency": "CNY"}

# (name, path suffix under the member, JSON body or raw bytes, expected status, field named)
CASES: list[tuple[str, str, Any, int, str | None]] = [
    ("malformed JSON", "earn", b'{"order_ref": "B-1", ', 400, None),
    ("not an object", "earn", b"[1, 2, 3]", 422, None),
    ("missing amount", "earn", {"order_ref": "B-1", "currency": "CNY"}, 422, "amount"),
    ("missing everything", "earn", {}, 422, "order_ref"),
    ("extra field", "earn", {**PURCHASE, "discount": "5"}, 422, "discount"),
    ("float money", "earn", {**PURCHASE, "amount": 10.5}, 422, "amount"),
    ("negative money", "earn", {**PURCHASE, "amount": "-10.00"}, 422, "amount"),
    ("huge money", "earn", {**PURCHASE, "amount": "1" + "0" * 30}, 422, "amount"),
    ("too many decimals for CNY", "earn", {**PURCHASE, "amount": "10.001"}, 422, "amount"),
    ("unknown currency", "earn", {**PURCHASE, "currency": "XYZ"}, 422, "currency"),
    ("lower-case currency", "earn", {**PURCHASE, "currency": "cny"}, 422, "currency"),
    ("other currency than the program's", "earn", {**PURCHASE, "currency": "USD"}, 422, None),
    ("purchase and award mixed", "earn", {**PURCHASE, "points": 5}, 422, "points"),
    ("fractional points", "redeem", {"points": 1.5}, 422, "points"),
    ("negative points", "redeem", {"points": -5}, 422, "points"),
    ("zero points", "redeem", {"points": 0}, 422, "points"),
    ("points as text", "redeem", {"points": "ten"}, 422, "points"),
    ("huge points", "redeem", {"points": 10**30}, 422, "points"),
    ("bad item", "earn", {**PURCHASE, "items": [{"sku": "A", "amount": 3}]}, 422, "items"),
    ("timezone-less time", "earn", {**PURCHASE, "occurred_at": "2026-01-01T10:00:00"}, 422, "occurred_at"),
    ("future time", "earn", {**PURCHASE, "occurred_at": "2999-01-01T10:00:00Z"}, 422, "occurred_at"),
    # Before year 1 in UTC (the database cannot even hold it), and year 1 itself: past the
    # backdating bound (LOYALTY_MAX_BACKDATE_DAYS, 400 by default).
    (
        "time before year 1",
        "earn",
        {**PURCHASE, "occurred_at": "0001-01-01T00:00:00+14:00"},
        422,
        "occurred_at",
    ),
    ("year 1", "earn", {**PURCHASE, "occurred_at": "0001-01-01T00:00:00Z"}, 422, "occurred_at"),
    ("too far back", "earn", {**PURCHASE, "occurred_at": "2020-01-01T00:00:00Z"}, 422, "occurred_at"),
    # Strict decoding: no number from a string, a float or an exponent.
    ("points as a numeric string", "redeem", {"points": "1"}, 422, "points"),
    ("points as a float", "redeem", b'{"points": 100.0}', 422, "points"),
    ("points with an exponent", "redeem", b'{"points": 1e2}', 422, "points"),
    ("NUL in a reason", "earn", {"points": 5, "reason": "goodwill\u0000"}, 422, "reason"),
    ("escape in a reason", "earn", {"points": 5, "reason": "\u001b[31mred"}, 422, "reason"),
    ("bidi override in a reward", "redeem", {"points": 1, "reward_ref": "\u202eCUP"}, 422, "reward_ref"),
    ("nested a thousand deep", "earn", b'{"items": ' + b"[" * 1000 + b"]" * 1000 + b"}", 422, "items"),
    ("nested array body", "earn", b"[" * 5000 + b"]" * 5000, 422, None),
]


@pytest.mark.parametrize(("name", "suffix", "body", "status", "field"), CASES, ids=[c[0] for c in CASES])
async def test_bad_ledger_input_is_refused_with_the_field_named(
    member_with_points: MemberWithPoints, name: str, suffix: str, body: Any, status: int, field: str | None
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    position = await api.last_position()
    headers = {
        "Authorization": f"Bearer {key}",
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Type": "application/json",
    }
    content = body if isinstance(body, bytes) else None
    response = await api.client.post(
        f"/v1/members/{member_id}/{suffix}",
        headers=headers,
        content=content,
        json=None if content is not None else body,
    )

    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["type"].startswith("https://")
    assert problem["detail"]
    if field is not None:
        assert any(e["field"].split(".")[0].split("[")[0] == field for e in problem["errors"]), problem
    assert await api.last_position() == position


async def test_unknown_member_is_404(member_with_points: MemberWithPoints) -> None:
    api, key = member_with_points.api, member_with_points.key
    response = await api.post(f"/v1/members/{uuid.uuid4()}/earn", PURCHASE, key=key)
    assert response.status_code == 404
    assert response.json()["type"].endswith("/member_not_found")


async def test_malformed_member_id_is_a_client_error(member_with_points: MemberWithPoints) -> None:
    response = await member_with_points.api.post(
        "/v1/members/not-a-uuid/earn", PURCHASE, key=member_with_points.key
    )
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize("authorization", [None, "Bearer nope", "Basic abc", "Bearer"])
async def test_missing_or_wrong_key_is_401(
    member_with_points: MemberWithPoints, authorization: str | None
) -> None:
    api = member_with_points.api
    headers = {"Idempotency-Key": "x"} | ({"Authorization": authorization} if authorization else {})
    position = await api.last_position()
    response = await api.client.post(
        f"/v1/members/{member_with_points.member_id}/earn", json=PURCHASE, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await api.last_position() == position


async def test_missing_scope_is_403(member_with_points: MemberWithPoints) -> None:
    api = member_with_points.api
    reader = await api.channel_key("dashboard", ["read"], kind="internal")
    response = await api.post(f"/v1/members/{member_with_points.member_id}/redeem", {"points": 1}, key=reader)
    assert response.status_code == 403
    assert "redeem" in response.json()["detail"]


@pytest.mark.parametrize("idem", [None, "", "x" * 201, "tab\there"])
async def test_state_changing_post_needs_a_valid_idempotency_key(
    member_with_points: MemberWithPoints, idem: str | None
) -> None:
    api = member_with_points.api
    headers = {"Authorization": f"Bearer {member_with_points.key}"} | (
        {"Idempotency-Key": idem} if idem is not None else {}
    )
    position = await api.last_position()
    response = await api.client.post(
        f"/v1/members/{member_with_points.member_id}/redeem", json={"points": 1}, headers=headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"
    assert await api.last_position() == position


async def test_bad_identity_names_its_field(member_with_points: MemberWithPoints) -> None:
    api, key = member_with_points.api, member_with_points.key
    response = await api.post("/v1/members", {"identities": [{"kind": "phone", "value": "12"}]}, key=key)
    unknown = await api.post("/v1/members", {"identities": [{"kind": "fax", "value": "12"}]}, key=key)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "identities[0].value"
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "identities[0].kind"


async def test_invalid_rules_are_refused_naming_each_field(member_with_points: MemberWithPoints) -> None:
    api = member_with_points.api
    hq = await api.channel_key("hq", ["read", "rules"], kind="internal")
    rules = (await api.get("/v1/program", key=hq)).json()["rules"]
    rules["tiers"][1]["threshold"] = 0
    rules["currency"] = "XXX"
    response = await api.client.put(
        "/v1/program/rules",
        json=rules,
        headers={"Authorization": f"Bearer {hq}", "Idempotency-Key": "rules-1"},
    )
    assert response.status_code == 422, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert {"currency", "tiers[1].threshold"} <= fields
    assert (await api.get("/v1/program", key=hq)).json()["rules_version"] == 1


async def test_nested_json_is_refused_quietly_even_on_a_read_only_endpoint(
    member_with_points: MemberWithPoints, caplog: pytest.LogCaptureFixture
) -> None:
    api = member_with_points.api
    reader = await api.channel_key("dashboard", ["read"], kind="internal")
    deep = b'{"member_id": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    headers = {"Authorization": f"Bearer {reader}", "Content-Type": "application/json"}

    response = await api.client.post("/v1/quotes/earn", content=deep, headers=headers)

    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "member_id"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
    ],
)
async def test_a_body_that_is_not_json_is_415_and_writes_nothing(
    member_with_points: MemberWithPoints, content_type: str | None
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": uuid.uuid4().hex}
    if content_type is not None:
        headers["Content-Type"] = content_type
    position = await api.last_position()

    response = await api.client.post(
        f"/v1/members/{member_id}/redeem", content=b'{"points": 1}', headers=headers
    )

    assert response.status_code == 415, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await api.last_position() == position


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/merge-patch+json"])
async def test_json_media_types_are_accepted(member_with_points: MemberWithPoints, content_type: str) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    headers = {
        "Authorization": f"Bearer {key}",
        "Idempotency-Key": uuid.uuid4().hex,
        "Content-Type": content_type,
    }
    response = await api.client.post(
        f"/v1/members/{member_id}/redeem", content=b'{"points": 1}', headers=headers
    )
    assert response.status_code == 201, response.text


async def test_a_business_time_within_the_backdating_bound_is_accepted(
    member_with_points: MemberWithPoints,
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    old = (datetime.now(UTC) - timedelta(days=399)).isoformat()
    response = await api.post(f"/v1/members/{member_id}/earn", {**PURCHASE, "occurred_at": old}, key=key)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("suffix", "params", "field"),
    [
        ("history", {"after": str(2**63)}, "after"),
        ("history", {"limit": str(10**30)}, "limit"),
        ("balance", {"as_of": "0001-01-01T00:00:00+00:01"}, "as_of"),
        ("", {"min_position": str(2**63)}, "min_position"),
    ],
)
async def test_out_of_range_query_values_are_422(
    member_with_points: MemberWithPoints, suffix: str, params: dict[str, str], field: str
) -> None:
    api, key, member_id = member_with_points.api, member_with_points.key, member_with_points.member_id
    response = await api.get(f"/v1/members/{member_id}/{suffix}".rstrip("/"), key=key, params=params)
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in response.text


async def test_publishing_rules_needs_the_whole_document(member_with_points: MemberWithPoints) -> None:
    api = member_with_points.api
    hq = await api.channel_key("hq", ["read", "rules"], kind="internal")
    rules = (await api.get("/v1/program", key=hq)).json()["rules"]
    del rules["segments"]

    empty = await api.client.put(
        "/v1/program/rules", json={}, headers={"Authorization": f"Bearer {hq}", "Idempotency-Key": "r-1"}
    )
    partial = await api.client.put(
        "/v1/program/rules", json=rules, headers={"Authorization": f"Bearer {hq}", "Idempotency-Key": "r-2"}
    )
    unkeyed = await api.client.put("/v1/program/rules", json=rules, headers={"Authorization": f"Bearer {hq}"})

    assert empty.status_code == 422, empty.text
    assert partial.status_code == 422
    assert partial.json()["errors"][0]["field"] == "segments"
    assert unkeyed.status_code == 422
    assert (await api.get("/v1/program", key=hq)).json()["rules_version"] == 1


async def test_profile_text_with_control_characters_is_refused(member_with_points: MemberWithPoints) -> None:
    api, key = member_with_points.api, member_with_points.key
    position = await api.last_position()
    for name in ("Li\u0000Lei", "Li\u202eLei", "Li\nLei"):
        body = {"identities": [{"kind": "email", "value": "li@x.cn"}], "profile": {"name": name}}
        response = await api.post("/v1/members", body, key=key)
        assert response.status_code == 422, response.text
        assert response.json()["errors"][0]["field"] == "profile.name"
    assert await api.last_position() == position


async def test_a_missing_query_parameter_is_named(member_with_points: MemberWithPoints) -> None:
    api = member_with_points.api
    response = await api.get("/v1/members/lookup", key=member_with_points.key, params={"kind": "phone"})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [{"field": "value", "message": "is required"}]


async def test_options_lists_every_method_of_the_path_without_a_key(
    member_with_points: MemberWithPoints,
) -> None:
    response = await member_with_points.api.client.options("/v1/channels")
    assert response.status_code == 204, response.text
    assert response.headers["allow"] == "GET, OPTIONS, POST"
