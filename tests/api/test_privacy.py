"""A member's own data: exported whole, then forgotten without breaking the ledger.

Li Lei enrols at the POS with a phone, an e-mail address and a name, earns, links an app
account, and has points on hold at a web checkout when he asks to be forgotten. After that his
phone and e-mail can be enrolled by someone new; nothing the service holds or broadcasts — API
answers, projections, kept idempotency answers, NATS messages, any table of the database —
shows his identities or name; his points and every total stay as they were.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import nats
import pytest

from domain.errors import MemberNotActive
from projections.rebuild import rebuild
from service.handlers import ledger, members
from service.handlers.commands import Award
from service.handlers.context import CommandContext
from service.services import Services, open_services
from service.store.audit import ChainVerifier
from tests.api.conftest import Api
from tests.waiting import until

PHONE, EMAIL, NAME, APP_USER = "+8613800138000", "li.lei@example.com", "Li Lei Zhang", "li-lei-app-7788"
OLD_EMAIL = "lilei.1990@example.net"
SECRETS = ("13800138000", EMAIL, NAME, APP_USER, OLD_EMAIL)


async def stored_events(api: Api, member_id: str) -> list[tuple[int, bytes]]:
    async with api.services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT position, data FROM events WHERE stream_id = $1", UUID(member_id))
    return sorted((r["position"], bytes(r["data"])) for r in rows)


async def liability(api: Api, key: str, position: int) -> dict[str, Any]:
    answer = await api.get("/v1/analytics/liability", key=key, params={"min_position": position})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s.lower() in text.lower()]


async def dump_database(api: Api) -> str:
    """Every row of every table, as text (what `pg_dump --data-only` would write)."""
    async with api.services.pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT quote_ident(table_name) AS t FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
        parts = []
        for row in tables:
            # bytea columns as their bytes decoded leniently: JSON inside them shows as text.
            rows = await conn.fetch(f"SELECT * FROM {row['t']}")
            for r in rows:
                for value in r.values():
                    parts.append(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return "\n".join(parts)


async def bus_payloads(api: Api) -> list[dict[str, Any]]:
    """Every CloudEvent the relay has published, decoded."""
    nc = await nats.connect(api.services.settings.nats_url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        stream = api.services.settings.stream_name
        info = await js.stream_info(stream)
        return [json.loads((await js.get_msg(stream, seq=s)).data) for s in range(1, info.state.last_seq + 1)]
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def second_instance(api: Api) -> AsyncIterator[Services]:
    """Another instance of the service on the same database (it follows, it does not lead)."""
    settings = dataclasses.replace(api.services.settings, admin_key=None)
    async with open_services(settings, lead=False) as services:
        yield services


def context(channel: str = "pos-sh-01", key: str = "k") -> CommandContext:
    return CommandContext(
        channel=channel, api_key_id="test", now=datetime.now(UTC), request_id="t", idempotency_key=key
    )


async def test_a_forgotten_member_is_unreadable_everywhere_and_the_ledger_is_unchanged(api: Api) -> None:
    desk = await api.channel_key(
        "privacy-desk", ["read", "members", "privacy", "earn", "redeem", "analytics"], kind="internal"
    )
    pos = await api.channel_key("pos-sh-01", ["read", "earn", "redeem", "members"])
    enrol_body = {
        "identities": [{"kind": "phone", "value": PHONE}, {"kind": "email", "value": EMAIL}],
        "profile": {"name": NAME, "locale": "zh-CN"},
    }
    enrolled = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert enrolled.status_code == 201, enrolled.text
    member_id = enrolled.json()["member_id"]
    assert {i["value"] for i in enrolled.json()["identities"]} == {PHONE, EMAIL}  # privacy scope: clear
    earned = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "POS-LL-1", "amount": "500.00", "currency": "CNY"},
        key=pos,
    )
    assert earned.status_code == 201, earned.text
    linked = await api.post(
        f"/v1/members/{member_id}/identities", {"kind": "app_user", "value": APP_USER}, key=pos
    )
    assert linked.status_code == 201, linked.text
    held = await api.post(f"/v1/members/{member_id}/holds", {"points": 100}, key=pos)
    assert held.status_code == 201, held.text
    # A duplicate he made in the app, merged into him: the same person.
    duplicate = await api.post(
        "/v1/members", {"identities": [{"kind": "email", "value": OLD_EMAIL}]}, key=pos
    )
    merged = await api.post(
        f"/v1/members/{member_id}/merge", {"source_member_id": duplicate.json()["member_id"]}, key=desk
    )
    assert merged.status_code == 201, merged.text
    before_forget = datetime.now(UTC)
    balance_before = (await api.get(f"/v1/members/{member_id}/balance", key=pos)).json()["balance"]
    liability_before = await liability(api, desk, merged.json()["position"])
    stored_before = await stored_events(api, member_id)

    # The export holds everything, decrypted.
    exported = await api.get(f"/v1/members/{member_id}/export", key=desk)
    assert exported.status_code == 200, exported.text
    export = exported.json()
    assert {i["value"] for i in export["identities"]} == {PHONE, EMAIL, APP_USER, OLD_EMAIL}
    assert export["profile"]["name"] == NAME
    assert [e["type"] for e in export["events"]][:2] == ["member_enrolled", "points_earned"]
    assert export["events"][0]["data"]["profile"]["name"] == NAME
    assert export["events"][1]["data"]["amount"] == "500.00"  # money stays a decimal string
    assert (await api.get(f"/v1/members/{member_id}/export", key=pos)).status_code == 403
    replay = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == enrolled.json()  # the kept answer opens while the key exists

    forgotten = await api.post(f"/v1/members/{member_id}/forget", None, key=desk, idem="forget-li-lei")
    assert forgotten.status_code == 201, forgotten.text
    body = forgotten.json()
    assert (body["status"], body["identities"]) == ("forgotten", [])
    # Open holds were released first; every amount but `held` is as it was.
    assert body["balance"] == {**balance_before, "held": 0, "available": balance_before["available"] + 100}
    again = await api.post(f"/v1/members/{member_id}/forget", None, key=desk, idem="forget-li-lei")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    position = body["position"]
    # The ledger is untouched: the same stored bytes (the audit chain hashes them), the same
    # points outstanding, and the chain still verifies.
    assert (await stored_events(api, member_id))[: len(stored_before)] == stored_before
    assert (await liability(api, desk, position))["outstanding"] == liability_before["outstanding"]
    async with api.services.pool.acquire() as conn:
        assert (await ChainVerifier().run(conn)).ok

    # Commands are refused; reads show the status and no personal data.
    refused = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "POS-LL-2", "amount": "10.00", "currency": "CNY"},
        key=pos,
    )
    assert (refused.status_code, refused.json()["type"].rsplit("/", 1)[-1]) == (409, "member_forgotten")
    capture = await api.post(f"/v1/holds/{held.json()['hold_id']}/capture", {}, key=pos)
    assert capture.status_code == 409
    for key in (desk, pos):
        view = await api.get(f"/v1/members/{member_id}", key=key, params={"min_position": position})
        assert (view.json()["status"], view.json()["identities"]) == ("forgotten", [])
    lookup = await api.get("/v1/members/lookup", key=pos, params={"kind": "phone", "value": PHONE})
    assert lookup.status_code == 404
    after = (await api.get(f"/v1/members/{member_id}/export", key=desk)).json()
    assert (after["identities"], after["profile"], after["status"]) == ([], None, "forgotten")
    assert [e["position"] for e in after["events"]][: len(export["events"])] == [
        e["position"] for e in export["events"]
    ]
    assert after["events"][0]["data"]["identities"] is None
    assert after["events"][0]["data"]["profile"] is None
    assert not leaks(json.dumps(after))
    # The kept answer of the enrolment no longer opens: its identities are gone from it too.
    replay = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json()["identities"] == []
    # History and the balance of the past still replay (amounts, no personal data needed).
    history = (await api.get(f"/v1/members/{member_id}/history", key=pos)).json()
    assert history["events"][-1]["type"] == "member_forgotten"
    past = await api.get(
        f"/v1/members/{member_id}/balance", key=pos, params={"as_of": before_forget.isoformat()}
    )
    assert past.json()["balance"] == balance_before

    # The identities are free: someone new enrols with the same phone and e-mail.
    newcomer = await api.post(
        "/v1/members",
        {"identities": [{"kind": "phone", "value": PHONE}, {"kind": "email", "value": EMAIL}]},
        key=pos,
    )
    assert newcomer.status_code == 201, newcomer.text
    assert newcomer.json()["member_id"] != member_id

    # The store: his key is shredded, his sealed bytes stay and cannot be opened.
    async with api.services.pool.acquire() as conn:
        key_row = await conn.fetchrow(
            "SELECT wrapped_key, shredded_at FROM member_keys WHERE member_id = $1", UUID(member_id)
        )
        enrolment = await conn.fetchval(
            "SELECT data FROM events WHERE stream_id = $1 AND stream_version = 1", UUID(member_id)
        )
    assert key_row["wrapped_key"] is None
    source_key = await api.services.pool.fetchval(
        "SELECT wrapped_key FROM member_keys WHERE member_id = $1", UUID(duplicate.json()["member_id"])
    )
    assert source_key is None  # the duplicate merged into him went with him
    assert {e["member_id"] for e in export["events"]} == {member_id, duplicate.json()["member_id"]}
    assert key_row["shredded_at"] is not None
    assert b"sealed:v1:" in enrolment
    assert not leaks(enrolment.decode())

    # Nothing held anywhere shows him: every table (his newcomer's rows are masked or hashed).
    await until(
        lambda: api.services.projections.wait_for("members", newcomer.json()["position"], timeout=1),
        what="projections caught up",
    )
    dumped = await dump_database(api)
    assert leaks(dumped) == [], "personal data in the clear in the database"
    # A projection rebuilt from zero without his key: his amounts, none of his data.
    await rebuild(api.services.pool, api.services.store, "members", workers=1)
    row = await api.services.pool.fetchrow(
        "SELECT status, identities, available, held FROM members WHERE member_id = $1", UUID(member_id)
    )
    assert (row["status"], row["identities"]) == ("forgotten", "[]")
    assert (row["available"], row["held"]) == (body["balance"]["available"], 0)
    # Nor the bus: identities are sent as their kinds only, the profile not at all.
    payloads = await until(lambda: _published_through(api, position), what="the relay published the forget")
    mine = [p for p in payloads if p["subject"] == member_id]
    assert "member_forgotten" in {p["type"].split(".")[1] for p in mine}
    assert leaks(json.dumps(payloads)) == []
    enrol_message = next(p for p in mine if p["type"] == "loyalty.member_enrolled.v1")
    assert enrol_message["data"]["identities"] == [{"kind": "phone"}, {"kind": "email"}]
    assert "profile" not in enrol_message["data"]


async def _published_through(api: Api, position: int) -> list[dict[str, Any]] | None:
    payloads = await bus_payloads(api)
    return payloads if payloads and payloads[-1]["position"] >= position else None


async def test_a_second_instance_with_a_warm_cache_refuses_the_member_after_forget(api: Api) -> None:
    desk = await api.channel_key("privacy-desk", ["read", "members", "privacy", "award"], kind="internal")
    member_id = await api.enrol(desk, phone=PHONE)
    async with second_instance(api) as other:
        # The other instance has the member and its key in memory.
        state, _ = await members.get_member(other, UUID(member_id), reveal=True, now=datetime.now(UTC))
        assert state.identities[0].value == PHONE
        assert other.repository.is_cached(UUID(member_id))

        forgotten = await api.post(f"/v1/members/{member_id}/forget", {}, key=desk)
        assert forgotten.status_code == 201, forgotten.text

        # At once (not waiting for its caches to be told): it shows no personal data...
        state, _ = await members.get_member(other, UUID(member_id), reveal=True, now=datetime.now(UTC))
        assert (state.status, state.identities) == ("forgotten", [])
        # ...and refuses commands on the member.
        with pytest.raises(MemberNotActive) as refused:
            await ledger.earn(other, context(), Award(member_id=UUID(member_id), points=5, reason="x"))
        assert refused.value.code == "member_forgotten"
        # Its caches drop the key and the member on the commit's notification.
        await until(lambda: other.store._keys.get(UUID(member_id)) is None, what="the key evicted")
