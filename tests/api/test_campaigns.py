"""Campaigns over HTTP: a story from creation to results, validation naming the field and
writing nothing, a window opening later, ending, and the campaign events on NATS as CloudEvents."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import nats

from tests.api.conftest import ADMIN_KEY, Api, Pos
from tests.waiting import until


def window(
    *, starts_in: timedelta = timedelta(hours=-1), lasts: timedelta = timedelta(days=7)
) -> dict[str, str]:
    starts = datetime.now(UTC) + starts_in
    return {"starts_at": starts.isoformat(), "ends_at": (starts + lasts).isoformat()}


async def published(api: Api, types: set[str]) -> list[dict[str, Any]]:
    """The CloudEvents on the stream whose type is one of `types` (once all have arrived)."""
    nc = await nats.connect(api.services.settings.nats_url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        stream = api.services.settings.stream_name
        info = await js.stream_info(stream)
        events = [
            json.loads((await js.get_msg(stream, seq=s)).data) for s in range(1, info.state.last_seq + 1)
        ]
    finally:
        await nc.close()
    return [e for e in events if e["type"] in types]


async def test_a_campaign_from_creation_to_its_results_per_variant(pos: Pos) -> None:
    api = pos.api
    ops = await api.channel_key("hq", ["rules", "read", "analytics"], kind="internal")
    app = await api.channel_key("app-1", ["read", "earn"], kind="app")
    body = {
        "name": "Tea week",
        **window(),
        "channels": ["app-1"],
        "categories": ["tea"],
        "cap_per_member": 300,
        "variants": [
            {"name": "double", "weight": 1, "multiplier": "2"},
            {"name": "flat", "weight": 1, "bonus_points": 50},
        ],
    }
    created = await api.post("/v1/campaigns", body, key=ops)
    assert created.status_code == 201, created.text
    campaign = created.json()
    campaign_id = campaign["campaign_id"]
    assert campaign["status"] == "live"
    assert campaign["campaign"]["name"] == "Tea week"

    member_id = await api.enrol(pos.key)
    offers = (await api.get(f"/v1/members/{member_id}/campaigns", key=pos.key)).json()["campaigns"]
    (offer,) = offers
    assert offer["campaign_id"] == campaign_id
    assert offer["variant"] in ("double", "flat")
    assert offer["remaining"] == 300

    purchase = {
        "order_ref": "APP-1",
        "amount": "120.00",
        "currency": "CNY",
        "items": [
            {"sku": "T-1", "category": "tea", "amount": "80.00", "quantity": 2},
            {"sku": "M-1", "category": "mugs", "amount": "40.00"},
        ],
    }
    quote = await api.post("/v1/quotes/earn", {**purchase, "member_id": member_id}, key=app)
    earned = await api.post(f"/v1/members/{member_id}/earn", purchase, key=app)
    assert earned.status_code == 201, earned.text
    bonus = 80 if offer["variant"] == "double" else 50
    assert earned.json()["breakdown"] == [
        {"rule": "base", "points": 120},
        {"rule": "campaign", "points": bonus, "campaign_id": campaign_id, "variant": offer["variant"]},
    ]
    assert quote.json()["breakdown"] == earned.json()["breakdown"]
    # The same purchase at the POS: the campaign is for the app only.
    at_pos = await api.post(f"/v1/members/{member_id}/earn", {**purchase, "order_ref": "POS-1"}, key=pos.key)
    assert [p["rule"] for p in at_pos.json()["breakdown"]] == ["base"]

    results = await api.get(
        f"/v1/analytics/campaigns/{campaign_id}", key=ops, params={"min_position": at_pos.json()["position"]}
    )
    assert results.status_code == 200, results.text
    assert results.json()["variants"] == [
        {"variant": offer["variant"], "members": 1, "earns": 1, "bonus_points": bonus, "revenue": "120.00"}
    ]

    ended = await api.post(f"/v1/campaigns/{campaign_id}/end", None, key=ops)
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "ended"
    again = await api.post(f"/v1/campaigns/{campaign_id}/end", None, key=ops)
    assert again.status_code == 409
    assert again.json()["type"].endswith("/campaign_ended")
    assert (await api.get(f"/v1/members/{member_id}/campaigns", key=pos.key)).json()["campaigns"] == []

    # Both events reach NATS as CloudEvents on the program's subject.
    events = await until(lambda: _both(api), what="campaign_started and campaign_ended on the stream")
    started, finished = events
    assert started["type"] == "loyalty.campaign_started.v1"
    assert started["subject"] == "program"
    assert started["specversion"] == "1.0"
    assert started["data"]["campaign_id"] == campaign_id
    assert started["data"]["campaign"]["variants"][1]["bonus_points"] == 50
    assert finished["type"] == "loyalty.campaign_ended.v1"
    assert finished["data"]["campaign_id"] == campaign_id


async def _both(api: Api) -> list[dict[str, Any]] | None:
    events = await published(api, {"loyalty.campaign_started.v1", "loyalty.campaign_ended.v1"})
    return events if len(events) == 2 else None


async def test_an_invalid_campaign_names_each_field_and_writes_nothing(api: Api) -> None:
    before = await api.last_position()
    body = {
        "name": "Broken",
        **window(starts_in=timedelta(days=2), lasts=timedelta(days=-1)),
        "multiplier": "2",
        "bonus_points": 10,
        "channels": ["nowhere"],
        "tiers": ["platinum"],
        "variants": [{"name": "a", "weight": 0}],
    }
    refused = await api.post("/v1/campaigns", body, key=ADMIN_KEY)
    assert refused.status_code == 422, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert {e["field"] for e in refused.json()["errors"]} == {
        "ends_at",
        "bonus_points",
        "channels[0]",
        "tiers[0]",
        "variants[0].weight",
    }
    typo = await api.post("/v1/campaigns", {**body, "multiplyer": "2"}, key=ADMIN_KEY)
    assert typo.status_code in (400, 422)
    assert "multiplyer" in typo.text
    assert await api.last_position() == before
    assert (await api.get("/v1/campaigns", key=ADMIN_KEY)).json()["campaigns"] == []


async def test_a_campaign_whose_window_opens_later_applies_from_then(pos: Pos) -> None:
    api = pos.api
    later = await api.post(
        "/v1/campaigns",
        {"name": "Weekend", **window(starts_in=timedelta(days=1)), "bonus_points": 30},
        key=ADMIN_KEY,
    )
    assert later.status_code == 201, later.text
    assert later.json()["status"] == "scheduled"
    member_id = await api.enrol(pos.key)
    today = {"order_ref": "W-1", "amount": "10.00", "currency": "CNY"}
    assert [
        p["rule"]
        for p in (await api.post(f"/v1/members/{member_id}/earn", today, key=pos.key)).json()["breakdown"]
    ] == ["base"]
    listed = (await api.get("/v1/campaigns", key=pos.key)).json()["campaigns"]
    assert [c["status"] for c in listed] == ["scheduled"]
    tomorrow = (datetime.now(UTC) + timedelta(days=1, hours=1)).isoformat()
    assert (await api.get("/v1/campaigns", key=pos.key, params={"active_at": tomorrow})).json()[
        "campaigns"
    ] == listed
    assert (
        await api.get("/v1/campaigns", key=pos.key, params={"active_at": datetime.now(UTC).isoformat()})
    ).json()["campaigns"] == []
    # One that opens in a moment: quotes (which write nothing) show when it has, and the earn
    # that follows applies it, with no event recorded at the opening.
    soon = await api.post(
        "/v1/campaigns",
        {"name": "Flash", **window(starts_in=timedelta(seconds=1)), "bonus_points": 7},
        key=ADMIN_KEY,
    )
    assert soon.json()["status"] == "scheduled"
    position = await api.last_position()

    async def opened() -> bool:
        quote = await api.post("/v1/quotes/earn", {**today, "member_id": member_id}, key=pos.key)
        return any(p.get("campaign_id") == soon.json()["campaign_id"] for p in quote.json()["breakdown"])

    await until(opened, within=10, what="the flash campaign's window to open")
    assert await api.last_position() == position
    earned = await api.post(f"/v1/members/{member_id}/earn", {**today, "order_ref": "W-2"}, key=pos.key)
    assert earned.json()["breakdown"][-1] == {
        "rule": "campaign",
        "points": 7,
        "campaign_id": soon.json()["campaign_id"],
    }


async def test_a_quote_for_a_merged_member_is_409_as_its_earn_would_be(api: Api) -> None:
    target, source = await api.enrol(ADMIN_KEY), await api.enrol(ADMIN_KEY)
    merged = await api.post(f"/v1/members/{target}/merge", {"source_member_id": source}, key=ADMIN_KEY)
    assert merged.status_code == 201, merged.text
    purchase = {"order_ref": "M-1", "amount": "10.00", "currency": "CNY"}
    before = await api.last_position()
    quote = await api.post("/v1/quotes/earn", {**purchase, "member_id": source}, key=ADMIN_KEY)
    earn = await api.post(f"/v1/members/{source}/earn", purchase, key=ADMIN_KEY)
    assert (quote.status_code, earn.status_code) == (409, 409)
    assert quote.json()["type"] == earn.json()["type"]
    assert quote.json()["type"].endswith("/member_merged")
    assert await api.last_position() == before
    offers = await api.get(f"/v1/members/{source}/campaigns", key=ADMIN_KEY)
    assert offers.json()["campaigns"] == []


async def test_the_campaign_list_filters_by_instant_and_channel_and_one_reads_as_created(pos: Pos) -> None:
    api = pos.api
    ops = await api.channel_key("hq", ["rules", "read"], kind="internal")
    await api.channel_key("app-1", ["read"], kind="app")
    await api.channel_key("web-1", ["read"], kind="web")
    # Whole seconds, so the instants at the windows' edges below are exact.
    now = datetime.now(UTC).replace(microsecond=0)
    hour, day = timedelta(hours=1), timedelta(days=1)

    def spanning(starts: timedelta, ends: timedelta) -> dict[str, str]:
        return {"starts_at": (now + starts).isoformat(), "ends_at": (now + ends).isoformat()}

    bodies: dict[str, dict[str, Any]] = {
        # Every channel (an empty list), live now for a week.
        "everywhere": {"name": "Everywhere", **spanning(-hour, 7 * day), "multiplier": "2"},
        # The app only, live now for two days.
        "app": {"name": "App", **spanning(-hour, 2 * day), "channels": ["app-1"], "bonus_points": 20},
        # The POS and the web shop, opening in three days.
        "later": {
            "name": "Later",
            **spanning(3 * day, 10 * day),
            "channels": ["pos-sh-01", "web-1"],
            "tiers": ["silver"],
            "min_amount": "50.00",
            "cap_per_member": 500,
            "variants": [{"name": "a", "weight": 3, "bonus_points": 5}, {"name": "b", "weight": 1}],
            "bonus_points": 10,
        },
        # The POS, live now for a week, but ended early below.
        "ended": {"name": "Ended", **spanning(-hour, 7 * day), "channels": ["pos-sh-01"], "bonus_points": 5},
        # Every channel, a window that closes in a moment (then `finished`).
        "brief": {"name": "Brief", **spanning(-hour, timedelta(seconds=2)), "bonus_points": 1},
    }
    created: dict[str, dict[str, Any]] = {}
    for name, body in bodies.items():
        response = await api.post("/v1/campaigns", body, key=ops)
        assert response.status_code == 201, response.text
        created[name] = response.json()
    ids = {name: c["campaign_id"] for name, c in created.items()}
    ended = await api.post(f"/v1/campaigns/{ids['ended']}/end", None, key=ops)
    assert ended.status_code == 200, ended.text
    created["ended"] = ended.json()
    finished = now + timedelta(seconds=2)
    await until(lambda: datetime.now(UTC) >= finished, within=5, what="the brief campaign's window to close")

    # One by one, each reads back as it was created (or ended), with its status now (the brief
    # one was live when created).
    for name, body in bodies.items():
        one = await api.get(f"/v1/campaigns/{ids[name]}", key=pos.key)
        assert one.status_code == 200, one.text
        assert without(one.json(), "position", "status") == without(created[name], "position", "status")
        assert same_campaign(one.json()["campaign"], body), name
    statuses = {
        n: (await api.get(f"/v1/campaigns/{i}", key=pos.key)).json()["status"] for n, i in ids.items()
    }
    assert statuses == {
        "everywhere": "live",
        "app": "live",
        "later": "scheduled",
        "ended": "ended",
        "brief": "finished",
    }
    unknown = await api.get(f"/v1/campaigns/{uuid.uuid4()}", key=pos.key)
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")
    assert unknown.json()["type"].endswith("/campaign_not_found")

    async def listed(**params: str) -> list[str]:
        response = await api.get("/v1/campaigns", key=pos.key, params=params)
        assert response.status_code == 200, response.text
        by_id = {i: n for n, i in ids.items()}
        return [by_id[c["campaign_id"]] for c in response.json()["campaigns"]]

    def at(offset: timedelta) -> str:
        return (now + offset).isoformat()

    # No filter: every campaign, ended and finished ones too, in start order.
    assert await listed() == ["everywhere", "app", "later", "ended", "brief"]
    # active_at: those a purchase at that instant would get; an ended one never, a finished one
    # at instants inside its window.
    assert await listed(active_at=at(timedelta(0))) == ["everywhere", "app", "brief"]
    assert await listed(active_at=at(timedelta(seconds=3))) == ["everywhere", "app"]
    assert await listed(active_at=at(-hour - timedelta(seconds=1))) == []
    assert await listed(active_at=at(-hour)) == ["everywhere", "app", "brief"]  # starts_at: in
    assert await listed(active_at=at(2 * day - timedelta(seconds=1))) == ["everywhere", "app"]
    assert await listed(active_at=at(2 * day)) == ["everywhere"]  # ends_at: out
    assert await listed(active_at=at(3 * day)) == ["everywhere", "later"]
    assert await listed(active_at=at(8 * day)) == ["later"]
    assert await listed(active_at=at(10 * day)) == []
    # Another offset, the same instant.
    assert await listed(active_at=(now + 3 * day).astimezone(timezone(timedelta(hours=8))).isoformat()) == [
        "everywhere",
        "later",
    ]
    # channel: those that apply to it; an empty channel list applies to every channel.
    assert await listed(channel="pos-sh-01") == ["everywhere", "later", "ended", "brief"]
    assert await listed(channel="app-1") == ["everywhere", "app", "brief"]
    assert await listed(channel="web-1") == ["everywhere", "later", "brief"]
    # Both: the one condition and the other.
    assert await listed(channel="app-1", active_at=at(timedelta(0))) == ["everywhere", "app", "brief"]
    assert await listed(channel="pos-sh-01", active_at=at(timedelta(0))) == ["everywhere", "brief"]
    assert await listed(channel="pos-sh-01", active_at=at(4 * day)) == ["everywhere", "later"]
    assert await listed(channel="app-1", active_at=at(4 * day)) == ["everywhere"]
    # An instant with no offset is ambiguous: refused, naming the parameter.
    naive = await api.get(
        "/v1/campaigns", key=pos.key, params={"active_at": now.replace(tzinfo=None).isoformat()}
    )
    assert naive.status_code in (400, 422), naive.text
    assert "active_at" in naive.text


def without(body: dict[str, Any], *fields: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in fields}


def same_campaign(read: dict[str, Any], sent: dict[str, Any]) -> bool:
    """Whether the campaign document read back says what was sent (instants compared as
    instants, decimals as numbers), with the defaults for what was left out."""
    defaults: dict[str, Any] = {"channels": [], "tiers": [], "categories": [], "skus": [], "variants": []}
    expected = {**defaults, **sent}
    for field, value in expected.items():
        got: Any = read.get(field)
        if field in ("starts_at", "ends_at"):
            if datetime.fromisoformat(got) != datetime.fromisoformat(value):
                return False
        elif field in ("multiplier", "min_amount"):
            if Decimal(got) != Decimal(value):
                return False
        elif field == "variants":
            if [{k: v for k, v in r.items() if v is not None} for r in got] != value:
                return False
        elif got != value:
            return False
    return {k for k, v in read.items() if v not in (None, [])} <= set(expected)


async def test_a_quote_for_a_forgotten_member_is_409_as_its_earn_would_be(api: Api) -> None:
    desk = await api.channel_key("privacy-desk", ["privacy", "read", "earn", "members"], kind="internal")
    started = await api.post(
        "/v1/campaigns", {"name": "Every day", **window(), "bonus_points": 5}, key=ADMIN_KEY
    )
    assert started.status_code == 201, started.text
    member_id = await api.enrol(desk)
    purchase = {"order_ref": "F-1", "amount": "10.00", "currency": "CNY"}
    # Quoted while the member is active: the campaign's bonus, and nothing written.
    before = await api.last_position()
    quoted = await api.post("/v1/quotes/earn", {**purchase, "member_id": member_id}, key=desk)
    assert quoted.status_code == 200, quoted.text
    assert [p["rule"] for p in quoted.json()["breakdown"]] == ["base", "campaign"]
    assert await api.last_position() == before
    assert len((await api.get(f"/v1/members/{member_id}/campaigns", key=desk)).json()["campaigns"]) == 1

    forgotten = await api.post(f"/v1/members/{member_id}/forget", None, key=desk)
    assert forgotten.status_code == 201, forgotten.text
    before = await api.last_position()
    quote = await api.post("/v1/quotes/earn", {**purchase, "member_id": member_id}, key=desk)
    earn = await api.post(f"/v1/members/{member_id}/earn", purchase, key=desk)
    assert (quote.status_code, earn.status_code) == (409, 409), (quote.text, earn.text)
    assert quote.headers["content-type"].startswith("application/problem+json")
    assert quote.json()["type"] == earn.json()["type"]
    assert quote.json()["type"].endswith("/member_forgotten")
    assert await api.last_position() == before
    offers = await api.get(f"/v1/members/{member_id}/campaigns", key=desk)
    assert offers.json()["campaigns"] == []
