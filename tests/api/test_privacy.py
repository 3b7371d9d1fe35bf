"""A member's own data: exported whole, then forgotten without breaking the ledger.

Li Lei enrols at the POS with a phone, an e-mail address, a name and a birthday, earns, links
an app account, and has points on hold at a web checkout when he asks to be forgotten. After that
his phone and e-mail can be enrolled by someone new; nothing the service holds or broadcasts —
any API answer, projection or kept idempotency answer, any message of any of its NATS streams or
any signed checkpoint, `pg_dump` of its database — shows his identities or profile, in any
spelling or common encoding; his points and every total stay as they were (the one move a
forget makes: what he had on hold is released).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import urllib.parse
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import nats
import nats.js.errors
import phonenumbers
import pytest
import pytest_asyncio
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from phonenumbers import PhoneNumberFormat

from domain.errors import MemberNotActive
from projections.rebuild import rebuild
from projections.registry import PROJECTIONS
from projections.segments import SEGMENTS
from service.app import create_app
from service.bus import segments
from service.handlers import ledger, members
from service.handlers.commands import Award
from service.handlers.context import CommandContext
from service.services import Services, open_services
from service.store.audit import ChainVerifier
from tests.api.conftest import Api, serving, settings_for
from tests.postgres_tools import pg
from tests.waiting import until

PHONE, EMAIL, NAME, APP_USER = "+8613800138000", "li.lei@example.com", "Li Lei Zhang", "li-lei-app-7788"
OLD_EMAIL = "lilei.1990@example.net"
BIRTHDAY = "1987-04-23"
PROFILE = {"name": NAME, "birthday": BIRTHDAY, "locale": "zh-CN"}
# His identity values and the personal fields of his profile (the locale identifies no one).
SECRETS = (PHONE, EMAIL, NAME, BIRTHDAY, APP_USER, OLD_EMAIL)


def _spellings(value: str) -> set[str]:
    """A value as it may be written down: as given, as the service normalises it (a phone in
    E.164, digits only, national, formatted; an e-mail lower-cased), lower- and upper-case."""
    found = {value, value.lower(), value.upper()}
    if value.startswith("+"):
        number = phonenumbers.parse(value, None)
        formats = (PhoneNumberFormat.E164, PhoneNumberFormat.INTERNATIONAL, PhoneNumberFormat.NATIONAL)
        found |= {phonenumbers.format_number(number, f) for f in formats}
        found |= {value.lstrip("+"), str(number.national_number)}
    return found


def _encodings(text: str) -> dict[str, str]:
    """`text` in the encodings a store or an answer may hold it in: as is, escaped in JSON,
    URL-encoded, as hex (how pg_dump writes a bytea), and in base64 at each of the three byte
    alignments it may start at inside a longer value (only the whole groups that depend on it
    alone). Keyed by the encoding's name, for the failure message."""
    raw = text.encode()
    found = {
        "as is": text,
        "JSON": json.dumps(text)[1:-1],
        "URL-encoded": urllib.parse.quote(text, safe=""),
        "form-encoded": urllib.parse.quote_plus(text, safe=""),
        "hex": raw.hex(),
    }
    for skip in range(3):
        part = raw[skip:]
        found[f"base64+{skip}"] = base64.b64encode(part[: len(part) - len(part) % 3]).decode()
    return found


@dataclasses.dataclass(frozen=True)
class Pattern:
    text: str
    case_sensitive: bool
    shown: str


PATTERNS = [
    Pattern(pattern, name.startswith("base64"), f"{secret!r} ({name}: {pattern!r})")
    for secret in SECRETS
    for spelling in sorted(_spellings(secret))
    for name, pattern in _encodings(spelling).items()
]


def leaks(text: str) -> list[str]:
    """Every spelling and encoding of his data that `text` contains."""
    lowered = text.lower()
    return sorted(
        {p.shown for p in PATTERNS if (p.text in text if p.case_sensitive else p.text.lower() in lowered)}
    )


def secrets_in(text: str) -> set[str]:
    """Which of his values `text` shows, in any spelling or encoding."""
    return {secret for secret in SECRETS if any(shown.startswith(repr(secret)) for shown in leaks(text))}


def answer_leaks(answer: httpx.Response) -> list[str]:
    """What an HTTP answer shows of his data, in its body or its headers."""
    return leaks(answer.text + "\n" + "\n".join(f"{k}: {v}" for k, v in answer.headers.items()))


async def stored_events(api: Api, member_id: str) -> list[tuple[int, bytes]]:
    async with api.services.pool.acquire() as conn:
        rows = await conn.fetch("SELECT position, data FROM events WHERE stream_id = $1", UUID(member_id))
    return sorted((r["position"], bytes(r["data"])) for r in rows)


async def liability(api: Api, key: str, position: int) -> dict[str, Any]:
    answer = await api.get("/v1/analytics/liability", key=key, params={"min_position": position})
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def figures(answer: dict[str, Any]) -> dict[str, Any]:
    """A liability answer without its `at` (the instant it was asked: the only field that
    moves with the clock alone)."""
    return {k: v for k, v in answer.items() if k != "at"}


async def every_balance(api: Api, key: str, position: int) -> dict[str, dict[str, Any]]:
    """Every member's balance (all of it: amounts, tier, what expires next) as the API answers."""
    assert await api.services.projections.wait_for("members", position, timeout=10)
    ids = await api.services.pool.fetch("SELECT member_id FROM members ORDER BY member_id")
    answers = {}
    for row in ids:
        answer = await api.get(f"/v1/members/{row['member_id']}/balance", key=key)
        assert answer.status_code == 200, answer.text
        answers[str(row["member_id"])] = answer.json()["balance"]
    return answers


async def dump_database(api: Api, path: Path, *options: str) -> str:
    """The test's database as `pg_dump` writes it (plain SQL, every schema; bytea as hex)."""
    url = api.services.settings.database_url
    await asyncio.to_thread(pg, "pg_dump", "--no-owner", "--file", str(path), *options, url)
    return await asyncio.to_thread(path.read_text)


async def scan_catches_a_planted_value(api: Api, path: Path) -> None:
    """The dump scan finds his data where a careless change would put it: JSON in a bytea
    (dumped as hex), in a text column, and in base64."""
    async with api.services.pool.acquire() as conn:
        await conn.execute("CREATE SCHEMA canary; CREATE TABLE canary.kept (b bytea, t text, e text)")
        await conn.execute(
            "INSERT INTO canary.kept VALUES ($1, $2, $3)",
            json.dumps({"phone": PHONE}).encode(),
            json.dumps({"name": NAME}),
            "x" + base64.b64encode(f"..{EMAIL}".encode()).decode(),
        )
    try:
        assert secrets_in(await dump_database(api, path, "--schema", "canary")) == {PHONE, NAME, EMAIL}
    finally:
        await api.services.pool.execute("DROP SCHEMA canary CASCADE")


async def service_streams(api: Api, nc: NatsClient) -> list[str]:
    """Every JetStream stream of this service, as the server lists them: named from its stream
    name, or holding subjects under its subject prefix's root (so a stream added later is
    found too, without being named here). Other services' streams on the server are left out."""
    settings = api.services.settings
    root = settings.subject_prefix.rsplit(".", 1)[0]
    found: set[str] = set()
    for query in ({}, {"subject": f"{root}.>"}):
        offset = 0
        while True:
            reply = await nc.request(
                "$JS.API.STREAM.NAMES", json.dumps({**query, "offset": offset}).encode(), timeout=5
            )
            page = json.loads(reply.data)
            names = page.get("streams") or []
            found |= {n for n in names if "subject" in query or n.startswith(settings.stream_name)}
            offset += len(names)
            if not names or offset >= page["total"]:
                break
    return sorted(found)


@dataclasses.dataclass(frozen=True)
class Message:
    """A NATS message as it was kept: its headers and its body."""

    headers: dict[str, str]
    data: bytes

    def leaks(self) -> list[str]:
        return leaks(json.dumps(self.headers) + "\n" + self.data.decode(errors="replace"))


async def stream_messages(nc: NatsClient, stream: str) -> list[Message]:
    """Every message a stream holds."""
    js = nc.jetstream()
    state = (await js.stream_info(stream)).state
    messages = []
    for seq in range(state.first_seq, state.last_seq + 1):
        with contextlib.suppress(nats.js.errors.NotFoundError):  # deleted: holds nothing
            kept = await js.get_msg(stream, seq=seq)
            messages.append(Message(dict(kept.headers or {}), kept.data or b""))
    return messages


async def published_through(nc: NatsClient, stream: str, position: int) -> bool:
    """Whether a relay's stream holds its feed's message at `position` (its last at or after)."""
    js = nc.jetstream()
    last = (await js.stream_info(stream)).state.last_seq
    return last > 0 and json.loads((await js.get_msg(stream, seq=last)).data or b"{}")["position"] >= position


@pytest_asyncio.fixture
async def api_signing_every_event(database_url: str, nats_url: str) -> AsyncIterator[Api]:
    """The service, signing and publishing an audit checkpoint as soon as the log has grown."""
    settings = dataclasses.replace(settings_for(database_url, nats_url), audit_checkpoint_events=1)
    app = create_app(settings, log_requests=False)
    async with serving(app) as client:
        yield Api(client, app)


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


async def test_a_forgotten_member_is_unreadable_everywhere_and_the_ledger_is_unchanged(
    api_signing_every_event: Api, tmp_path: Path
) -> None:
    api = api_signing_every_event
    settings = api.services.settings
    # Every signed checkpoint the service publishes (core NATS: kept only by who listens).
    nc = await nats.connect(settings.nats_url, max_reconnect_attempts=0)
    checkpoints: list[Message] = []

    async def keep(msg: Msg) -> None:
        checkpoints.append(Message(dict(msg.headers or {}), msg.data))

    await nc.subscribe(settings.audit_subject, cb=keep)
    await nc.flush()  # the server has the subscription: every checkpoint signed from now on comes
    try:
        await _story(api, nc, checkpoints, tmp_path)
    finally:
        await nc.close()


async def _story(api: Api, nc: NatsClient, checkpoints: list[Message], tmp_path: Path) -> None:
    start = await api.last_position()  # a checkpoint past this is signed after we subscribed
    desk = await api.channel_key(
        "privacy-desk", ["read", "members", "privacy", "earn", "redeem", "analytics"], kind="internal"
    )
    pos = await api.channel_key("pos-sh-01", ["read", "earn", "redeem", "members"])
    auditor = await api.channel_key("audit-firm", ["audit"], kind="partner")
    enrol_body = {
        "identities": [{"kind": "phone", "value": PHONE}, {"kind": "email", "value": EMAIL}],
        "profile": PROFILE,
    }
    enrolled = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert enrolled.status_code == 201, enrolled.text
    member_id = enrolled.json()["member_id"]
    assert {i["value"] for i in enrolled.json()["identities"]} == {PHONE, EMAIL}  # privacy scope: clear
    # Someone else, with points, is there too.
    other = await api.enrol(pos)
    purchase = {"order_ref": "POS-O-1", "amount": "80.00", "currency": "CNY"}
    assert (await api.post(f"/v1/members/{other}/earn", purchase, key=pos)).status_code == 201
    earned = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "POS-LL-1", "amount": "500.00", "currency": "CNY"},
        key=pos,
        idem="earn-li-lei",
    )
    assert earned.status_code == 201, earned.text
    linked = await api.post(
        f"/v1/members/{member_id}/identities",
        {"kind": "app_user", "value": APP_USER},
        key=pos,
        idem="link-li-lei",
    )
    assert linked.status_code == 201, linked.text
    held = await api.post(f"/v1/members/{member_id}/holds", {"points": 100}, key=pos, idem="hold-li-lei")
    assert held.status_code == 201, held.text
    # A duplicate he made in the app, merged into him: the same person.
    duplicate = await api.post(
        "/v1/members", {"identities": [{"kind": "email", "value": OLD_EMAIL}]}, key=pos, idem="enrol-dup"
    )
    merged = await api.post(
        f"/v1/members/{member_id}/merge",
        {"source_member_id": duplicate.json()["member_id"]},
        key=desk,
        idem="merge-li-lei",
    )
    assert merged.status_code == 201, merged.text
    before_forget = datetime.now(UTC)
    balances_before = await every_balance(api, pos, merged.json()["position"])
    assert set(balances_before) == {member_id, other, duplicate.json()["member_id"]}
    balance_before = balances_before[member_id]
    liability_before = await liability(api, desk, merged.json()["position"])
    assert liability_before["held"]["points"] == 100
    stored_before = await stored_events(api, member_id)

    # The export holds everything, decrypted.
    exported = await api.get(f"/v1/members/{member_id}/export", key=desk)
    assert exported.status_code == 200, exported.text
    export = exported.json()
    assert {i["value"] for i in export["identities"]} == {PHONE, EMAIL, APP_USER, OLD_EMAIL}
    assert export["profile"] == PROFILE
    assert [e["type"] for e in export["events"]][:2] == ["member_enrolled", "points_earned"]
    assert export["events"][0]["data"]["profile"]["name"] == NAME
    assert export["events"][1]["data"]["amount"] == "500.00"  # money stays a decimal string
    assert (await api.get(f"/v1/members/{member_id}/export", key=pos)).status_code == 403
    replay = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.json() == enrolled.json()  # the kept answer opens while the key exists
    # What the scans below look for is there to be found before the forget.
    assert secrets_in(exported.text) == set(SECRETS)
    assert secrets_in(replay.text) == {PHONE, EMAIL}  # the member view holds no profile

    forgotten = await api.post(f"/v1/members/{member_id}/forget", None, key=desk, idem="forget-li-lei")
    assert forgotten.status_code == 201, forgotten.text
    body = forgotten.json()
    assert (body["status"], body["identities"]) == ("forgotten", [])
    again = await api.post(f"/v1/members/{member_id}/forget", None, key=desk, idem="forget-li-lei")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    position = body["position"]

    # The ledger is untouched: the same stored bytes (the audit chain hashes them), and the chain
    # still verifies.
    assert (await stored_events(api, member_id))[: len(stored_before)] == stored_before
    async with api.services.pool.acquire() as conn:
        assert (await ChainVerifier().run(conn)).ok
    # Every balance, every field, is as it was, but for the one thing a forget does to amounts
    # (ADR 15): his open hold is released, so what was held is available again.
    released = {**balance_before, "held": 0, "available": balance_before["available"] + 100}
    assert body["balance"] == released
    assert await every_balance(api, pos, position) == {**balances_before, member_id: released}
    # And so is the whole liability answer: every total, value, horizon and rate; outstanding
    # the same, the released points moved from `held` to `available` at the same point value.
    liability_after = await liability(api, desk, position)
    value = Decimal(liability_before["point_value"])
    moved = {
        "available": _points(liability_before["available"]["points"] + 100, value, liability_before),
        "held": _points(0, value, liability_before),
    }
    assert figures(liability_after) == {**figures(liability_before), **moved}
    assert liability_after["outstanding"] == liability_before["outstanding"]

    # Commands are refused; reads show the status and no personal data. Every answer from now on
    # is scanned for his data, in any spelling or encoding.
    answers: list[tuple[str, httpx.Response]] = [("forget", forgotten), ("forget again", again)]

    def seen(what: str, answer: httpx.Response, status: int = 200) -> Any:
        assert answer.status_code == status, (what, answer.text)
        answers.append((what, answer))
        kind = answer.headers.get("content-type", "").split(";")[0]
        return answer.json() if kind in ("application/json", "application/problem+json") else answer

    refused = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "POS-LL-2", "amount": "10.00", "currency": "CNY"},
        key=pos,
    )
    assert seen("earn", refused, 409)["type"].rsplit("/", 1)[-1] == "member_forgotten"
    seen("capture", await api.post(f"/v1/holds/{held.json()['hold_id']}/capture", {}, key=pos), 409)
    for name, key in (("desk", desk), ("pos", pos)):
        view = seen(
            f"member view ({name})",
            await api.get(f"/v1/members/{member_id}", key=key, params={"min_position": position}),
        )
        assert (view["status"], view["identities"]) == ("forgotten", [])
        history = seen(f"history ({name})", await api.get(f"/v1/members/{member_id}/history", key=key))
        assert history["events"][-1]["type"] == "member_forgotten"
        seen(f"balance ({name})", await api.get(f"/v1/members/{member_id}/balance", key=key))
        seen(f"lots ({name})", await api.get(f"/v1/members/{member_id}/lots", key=key))
        for kind, value_ in (
            ("phone", PHONE),
            ("email", EMAIL),
            ("app_user", APP_USER),
            ("email", OLD_EMAIL),
        ):
            params = {"kind": kind, "value": value_}
            seen(f"lookup {kind} ({name})", await api.get("/v1/members/lookup", key=key, params=params), 404)
    after = seen("export", await api.get(f"/v1/members/{member_id}/export", key=desk))
    assert (after["identities"], after["profile"], after["status"]) == ([], None, "forgotten")
    assert [e["position"] for e in after["events"]][: len(export["events"])] == [
        e["position"] for e in export["events"]
    ]
    assert after["events"][0]["data"]["identities"] is None
    assert after["events"][0]["data"]["profile"] is None
    # The kept answer of the enrolment no longer opens: its identities are gone from it too.
    replay = await api.post("/v1/members", enrol_body, key=desk, idem="enrol-li-lei")
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert seen("enrol replayed", replay, 201)["identities"] == []
    # So do the others he (or the desk, for him) made: each kept answer comes back, sealed.
    for what, path, request, key, idem in (
        ("earn", f"/v1/members/{member_id}/earn", earned.request, pos, "earn-li-lei"),
        ("link", f"/v1/members/{member_id}/identities", linked.request, pos, "link-li-lei"),
        ("hold", f"/v1/members/{member_id}/holds", held.request, pos, "hold-li-lei"),
        ("duplicate's enrol", "/v1/members", duplicate.request, pos, "enrol-dup"),
        ("merge", f"/v1/members/{member_id}/merge", merged.request, desk, "merge-li-lei"),
    ):
        again = await api.post(path, json.loads(request.content), key=key, idem=idem)
        assert again.headers.get("Idempotent-Replayed") == "true", what
        seen(f"{what} replayed", again, 201)
    # The balance of the past still replays (amounts, no personal data needed).
    past = await api.get(
        f"/v1/members/{member_id}/balance", key=pos, params={"as_of": before_forget.isoformat()}
    )
    assert seen("balance as of before", past)["balance"] == balance_before
    # The auditors' log (NDJSON): personal data still sealed, and no key left to open it.
    log = seen("audit events", await api.get("/v1/audit/events", key=auditor, params={"limit": 100_000}))
    assert log.text.count("\n") == await api.last_position()
    seen("audit verify", await api.get("/v1/audit/verify", key=auditor))
    seen("audit checkpoints", await api.get("/v1/audit/checkpoints", key=auditor))
    # Segments: he is in none of them now, and their lists show ids only.
    for segment in SEGMENTS:
        listed = seen(
            f"segment {segment}",
            await api.get(
                f"/v1/segments/{segment}/members", key=desk, params={"min_position": position, "limit": 1000}
            ),
        )
        assert member_id not in {m["member_id"] for m in listed["members"]}
    seen("segments", await api.get("/v1/analytics/segments", key=desk, params={"min_position": position}))
    seen("liability", await api.get("/v1/analytics/liability", key=desk))
    assert [(what, found) for what, answer in answers if (found := answer_leaks(answer))] == []

    # The identities are free: someone new enrols with the same phone and e-mail.
    newcomer = await api.post(
        "/v1/members",
        {"identities": [{"kind": "phone", "value": PHONE}, {"kind": "email", "value": EMAIL}]},
        key=pos,
    )
    assert newcomer.status_code == 201, newcomer.text
    assert newcomer.json()["member_id"] != member_id
    head = newcomer.json()["position"]

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
    assert leaks(enrolment.decode()) == []

    # Nothing held anywhere shows him: `pg_dump` of the whole database, with every projection
    # caught up (his newcomer's rows are masked or hashed).
    for projection in PROJECTIONS:
        assert await api.services.projections.wait_for(projection, head, timeout=30), projection
    await scan_catches_a_planted_value(api, tmp_path / "canary.sql")
    dumped = await dump_database(api, tmp_path / "loyalty.sql")
    assert "COPY public.events " in dumped
    assert "COPY public.idempotency_keys " in dumped
    assert leaks(dumped) == [], "personal data in the clear in pg_dump's output"
    # A projection rebuilt from zero without his key: his amounts, none of his data.
    await rebuild(api.services.pool, api.services.store, "members", workers=1)
    row = await api.services.pool.fetchrow(
        "SELECT status, identities, available, held FROM members WHERE member_id = $1", UUID(member_id)
    )
    assert (row["status"], row["identities"]) == ("forgotten", "[]")
    assert (row["available"], row["held"]) == (body["balance"]["available"], 0)

    # Nor NATS: every message of every stream of the service once its relays have published all
    # there is (identities are sent as their kinds only, the profile not at all), and every
    # signed checkpoint, one of them taken after the forget.
    settings = api.services.settings
    events_stream, segments_stream = settings.stream_name, segments.stream_name(settings)
    await until(lambda: published_through(nc, events_stream, head), what="the relay published it all")
    transitions = await api.services.pool.fetchval("SELECT max(sequence) FROM segment_transitions")
    await until(
        lambda: published_through(nc, segments_stream, transitions), what="the segments relay published all"
    )
    streams = await service_streams(api, nc)
    assert {events_stream, segments_stream} <= set(streams)
    published = {stream: await stream_messages(nc, stream) for stream in streams}
    found = [
        (s, n, f) for s, messages in published.items() for n, m in enumerate(messages) if (f := m.leaks())
    ]
    assert found == []
    payloads = [json.loads(m.data) for m in published[events_stream]]
    mine = [p for p in payloads if p["subject"] == member_id]
    assert "member_forgotten" in {p["type"].split(".")[1] for p in mine}
    enrol_message = next(p for p in mine if p["type"] == "loyalty.member_enrolled.v1")
    assert enrol_message["data"]["identities"] == [{"kind": "phone"}, {"kind": "email"}]
    assert "profile" not in enrol_message["data"]
    changes = [json.loads(m.data) for m in published[segments_stream]]
    assert {c["type"] for c in changes if c["subject"] == member_id} == {segments.ENTERED, segments.LEFT}
    await until(
        lambda: api.services.pool.fetchval(
            "SELECT position FROM audit_checkpoints WHERE position >= $1", head
        ),
        what="a checkpoint after the newcomer",
    )
    stored = await api.services.pool.fetch(
        "SELECT position FROM audit_checkpoints WHERE position > $1", start
    )
    assert max(r["position"] for r in stored) >= head > position  # signed after the forget
    await until(
        lambda: {json.loads(c.data)["position"] for c in checkpoints} >= {r["position"] for r in stored},
        what="every checkpoint signed since we listened, published",
    )
    assert [(n, found) for n, c in enumerate(checkpoints) if (found := c.leaks())] == []


def _points(points: int, value: Decimal, answer: dict[str, Any]) -> dict[str, Any]:
    """A liability answer's {points, value} for `points` at the point value, in the answer's
    own notation (the currency's minor unit)."""
    unit = Decimal(answer["outstanding"]["value"]).as_tuple().exponent
    assert isinstance(unit, int)
    return {"points": points, "value": str((points * value).quantize(Decimal(1).scaleb(unit)))}


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


async def test_forgetting_a_member_without_holds_changes_no_balance_and_no_liability_figure(api: Api) -> None:
    pos = await api.channel_key("pos-sh-01", ["read", "earn", "redeem", "members"])
    desk = await api.channel_key("privacy-desk", ["privacy", "analytics"], kind="internal")
    members = [await api.enrol(pos) for _ in range(3)]
    for n, member_id in enumerate(members):
        purchase = {"order_ref": f"P-{n}", "amount": f"{(n + 1) * 700}.00", "currency": "CNY"}
        assert (await api.post(f"/v1/members/{member_id}/earn", purchase, key=pos)).status_code == 201
    redeemed = await api.post(f"/v1/members/{members[1]}/redeem", {"points": 300}, key=pos)
    assert redeemed.status_code == 201, redeemed.text
    balances = await every_balance(api, pos, redeemed.json()["position"])
    totals = await liability(api, desk, redeemed.json()["position"])
    assert totals["outstanding"]["points"] == 700 + 1400 + 2100 - 300

    forgotten = await api.post(f"/v1/members/{members[1]}/forget", {}, key=desk)
    assert forgotten.status_code == 201, forgotten.text

    # Every member's whole balance, and every figure of the liability answer, as they were.
    position = forgotten.json()["position"]
    assert await every_balance(api, pos, position) == balances
    assert figures(await liability(api, desk, position)) == figures(totals)
