"""Auditors' access (issue 12): verify, the log with its hashes, signed checkpoints.

Told as an auditor would: a program runs for a while; the auditor verifies it, reads it (and
exports it: the same lines), keeps a signed checkpoint from NATS; later someone rewrites an
event and every hash after it, and the checkpoint exposes the rewrite.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import itertools
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from service.app import create_app
from service.store import chain
from tests.api.conftest import ADMIN_KEY, Api, serving, settings_for
from tests.waiting import until

EVERY = 6  # a checkpoint every 6 events


@dataclasses.dataclass
class AuditedProgram:
    """A program with members who earned, a key with the audit scope, its database."""

    api: Api
    auditor: str
    pos: str
    database_url: str
    members: list[str]


@pytest_asyncio.fixture
async def audited(database_url: str, nats_url: str) -> AsyncIterator[AuditedProgram]:
    settings = dataclasses.replace(
        settings_for(database_url, nats_url), audit_checkpoint_events=EVERY, audit_checkpoint_seconds=3600.0
    )
    app = create_app(settings, log_requests=False)
    async with serving(app) as client:
        api = Api(client, app)
        pos = await api.channel_key("pos-sh-01", ["read", "earn", "members"])
        auditor = await api.channel_key("audit-firm", ["audit"], kind="partner")
        members = []
        for n in range(3):
            member_id = await api.enrol(pos, phone=f"+86138001380{n:02d}")
            earned = await api.post(
                f"/v1/members/{member_id}/earn",
                {"order_ref": f"A-{n}", "amount": "100.00", "currency": "CNY"},
                key=pos,
            )
            assert earned.status_code == 201, earned.text
            members.append(member_id)
        yield AuditedProgram(api, auditor, pos, database_url, members)


def lines(body: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.splitlines()]


async def test_the_log_verifies_and_reads_with_its_hashes_as_the_export_writes_it(
    audited: AuditedProgram, tmp_path: Path
) -> None:
    api, auditor = audited.api, audited.auditor
    head = await api.last_position()

    # Only a key with the audit scope may ask.
    assert (await api.get("/v1/audit/verify", key=audited.pos)).status_code == 403

    verified = await api.get("/v1/audit/verify", key=auditor)
    assert verified.status_code == 200, verified.text
    body = verified.json()
    assert body["ok"] is True
    assert body["break"] is None
    assert (body["events_checked"], body["position"]) == (head, head)

    read = await api.get("/v1/audit/events", key=auditor, params={"limit": 100_000})
    assert read.status_code == 200, read.text
    assert read.headers["content-type"].startswith("application/x-ndjson")
    events = lines(read.text)
    assert [e["position"] for e in events] == list(range(1, head + 1))
    assert events[-1]["global_hash"] == body["global_hash"]
    # Personal data stays sealed; the rest is readable.
    assert "13800138000" not in read.text
    enrolled = next(e for e in events if e["type"] == "member_enrolled")
    assert enrolled["payload"]["identities"].startswith("sealed:v1:")
    earned = next(e for e in events if e["type"] == "points_earned")
    assert (earned["channel"], earned["stream"]) == ("pos-sh-01", audited.members[0])
    assert earned["api_key_id"]
    assert earned["occurred_at"] < earned["recorded_at"]

    # Every line's hashes can be recomputed from the line itself (the payload read raw).
    previous = chain.GENESIS
    heads: dict[str, bytes] = {}
    for raw in read.content.splitlines():
        line = json.loads(raw)
        payload = raw[raw.index(b'"payload":') + len(b'"payload":') : raw.index(b',"data":')]
        event_hash = chain.stream_hash(heads.get(line["stream"], chain.GENESIS), _content(line, payload))
        previous = chain.global_hash(previous, line["position"], event_hash)
        heads[line["stream"]] = event_hash
        assert (line["hash"], line["global_hash"]) == (event_hash.hex(), previous.hex())

    # Resumable: a page after any position is the same lines.
    page = await api.get("/v1/audit/events", key=auditor, params={"after": 3, "limit": 4})
    assert lines(page.text) == events[3:7]

    # And `loyalty audit export` writes the very same lines, to stdout or to a file, from the
    # start or resumed after a position.
    exported = await _export(audited.database_url, "--after", "0")
    assert exported == read.content
    tail = await _export(audited.database_url, "--after", "5")
    assert tail == b"".join(read.content.splitlines(keepends=True)[5:])
    assert lines(tail.decode()) == events[5:]
    whole, resumed = tmp_path / "audit.jsonl", tmp_path / "audit-after-5.jsonl"
    assert await _export(audited.database_url, "--output", str(whole)) == b""  # nothing on stdout
    assert await _export(audited.database_url, "--after", "5", "--output", str(resumed)) == b""
    assert whole.read_bytes() == read.content
    assert resumed.read_bytes() == tail


def _content(line: dict[str, Any], payload: bytes) -> bytes:
    from datetime import datetime
    from uuid import UUID

    return chain.content(
        UUID(line["event_id"]), UUID(line["stream"]), line["version"], line["type"], line["topic"], payload,
        line["channel"], line["api_key_id"], line["correlation_id"], line["causation_id"],
        datetime.fromisoformat(line["occurred_at"]), datetime.fromisoformat(line["recorded_at"]),
    )  # fmt: skip


async def _cli(database_url: str, *args: str, master_key: str | None = None) -> tuple[int, bytes]:
    """`loyalty audit ARGS` on the test's database: its exit code and its stdout."""
    env = {**os.environ, "LOYALTY_DATABASE_URL": database_url, "LOYALTY_NATS_URL": "nats://127.0.0.1:1"}
    if master_key is not None:
        env["LOYALTY_MASTER_KEY"] = master_key
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service.cli", "audit", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode in (0, 1), err.decode()
    return process.returncode, out


async def _export(database_url: str, *args: str) -> bytes:
    code, out = await _cli(database_url, "export", *args)
    assert code == 0
    return out


async def test_forgetting_a_member_changes_no_hash_and_the_log_still_verifies(
    audited: AuditedProgram,
) -> None:
    api, auditor = audited.api, audited.auditor
    before = lines((await api.get("/v1/audit/events", key=auditor, params={"limit": 100_000})).text)
    privacy = await api.channel_key("dpo", ["privacy"], kind="internal")

    forgotten = await api.post(f"/v1/members/{audited.members[1]}/forget", {}, key=privacy)
    assert forgotten.status_code in (200, 201), forgotten.text

    after = lines((await api.get("/v1/audit/events", key=auditor, params={"limit": 100_000})).text)
    # Every event stored before is as it was, byte for byte and hash for hash (its key is gone).
    assert after[: len(before)] == before
    assert len(after) > len(before)
    assert after[len(before)]["type"] == "member_forgotten"
    verified = (await api.get("/v1/audit/verify", key=auditor)).json()
    assert verified["ok"] is True
    assert verified["events_checked"] == len(after)


async def test_a_checkpoint_held_by_an_auditor_exposes_a_rewrite_behind_it(
    audited: AuditedProgram, nats_url: str, tmp_path: Path
) -> None:
    api, auditor = audited.api, audited.auditor
    subject = api.services.settings.audit_subject
    client = await nats.connect(nats_url)
    received: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        received.append(json.loads(msg.data))

    await client.subscribe(subject, cb=keep)
    try:
        # The program goes on until a checkpoint is signed and published past what was there.
        start = await api.last_position()
        for n in range(EVERY):
            member_id = audited.members[n % 3]
            earned = await api.post(
                f"/v1/members/{member_id}/earn",
                {"order_ref": f"B-{n}", "amount": "10.00", "currency": "CNY"},
                key=audited.pos,
            )
            assert earned.status_code == 201
        await until(lambda: [c for c in received if c["position"] > start], what="a checkpoint on NATS")
    finally:
        await client.close()
    held = max(received, key=lambda c: c["position"])

    # It is the one the API lists, signed by the published key, over the log's global hash there.
    listed = (await api.get("/v1/audit/checkpoints", key=auditor)).json()["checkpoints"]
    assert held in listed
    key = (await api.get("/v1/audit/public-key", key=auditor)).json()
    assert key["algorithm"] == "Ed25519"
    assert key["public_key"] == held["public_key"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    public.verify(base64.b64decode(held["signature"]), held["message"].encode())  # raises if not
    assert held["message"].split()[1:3] == [str(held["position"]), held["global_hash"]]
    at = lines((await api.get("/v1/audit/events", key=auditor, params={"after": held["position"] - 1,
                                                                         "limit": 1})).text)  # fmt: skip
    assert at[0]["global_hash"] == held["global_hash"]
    # Verify resumes from it.
    resumed = (await api.get("/v1/audit/verify", key=auditor, params={"after": held["position"]})).json()
    assert resumed["ok"] is True
    assert resumed["after"] == held["position"]

    # When someone rewrites an early earn and every hash after it, as the rules say to compute them,
    await _rewrite(audited.database_url, position=4)

    # then the chains alone hold, but verify finds the log is not the one the checkpoint signed,
    verified = (await api.get("/v1/audit/verify", key=auditor)).json()
    assert verified["ok"] is False
    assert verified["break"]["reason"] == "checkpoint"
    assert verified["break"]["position"] <= held["position"]
    # and the auditor's own copy no longer matches the log's hash at its position.
    now_at = lines((await api.get("/v1/audit/events", key=auditor, params={"after": held["position"] - 1,
                                                                             "limit": 1})).text)  # fmt: skip
    assert now_at[0]["global_hash"] != held["global_hash"]

    # The service itself signs nothing more: its checkpointer finds the break as the log grows.
    for n in range(EVERY):
        await api.post(
            f"/v1/members/{audited.members[0]}/earn",
            {"order_ref": f"C-{n}", "amount": "10.00", "currency": "CNY"},
            key=audited.pos,
        )
    checkpointer = api.services.checkpointer
    await until(lambda: checkpointer.broken is not None, what="the checkpointer to find the break")
    assert "loyalty_audit_chain_broken 1.0" in (await api.client.get("/metrics")).text
    assert (await api.get("/v1/audit/checkpoints", key=auditor)).json()["checkpoints"] == listed

    # Even with the stored checkpoints deleted too (the chains then verify), the auditor's copies
    # expose the rewrite: `loyalty audit verify --checkpoints` checks them as it goes.
    await api.services.pool.execute("DELETE FROM audit_checkpoints")
    assert (await api.get("/v1/audit/verify", key=auditor)).json()["ok"] is True
    kept = tmp_path / "checkpoints.jsonl"
    kept.write_text("".join(json.dumps(c) + "\n" for c in received))
    code, out = await _cli(
        audited.database_url,
        "verify",
        "--checkpoints",
        str(kept),
        master_key=api.services.settings.master_key,
    )
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["break"]["reason"] == "checkpoint"


async def test_a_checkpoint_is_taken_m_seconds_on_when_few_events_came(
    database_url: str, nats_url: str
) -> None:
    # The count trigger out of reach: only the time can take these checkpoints.
    seconds = 1.0
    settings = dataclasses.replace(
        settings_for(database_url, nats_url),
        audit_checkpoint_events=1_000_000,
        audit_checkpoint_seconds=seconds,
    )
    started = datetime.now(UTC)
    app = create_app(settings, log_requests=False)
    async with serving(app) as client:
        api = Api(client, app)
        pos = await api.channel_key("pos-1", ["earn", "members"])
        auditor = await api.channel_key("audit-firm", ["audit"], kind="partner")
        taken = []
        for _ in range(2):  # an event, a checkpoint; one more event, the next checkpoint
            await api.enrol(pos)
            head = await api.last_position()
            assert head < settings.audit_checkpoint_events
            await until(
                lambda head=head: api.services.pool.fetchval(
                    "SELECT position FROM audit_checkpoints WHERE position >= $1", head
                ),
                within=10 * seconds,
                what=f"a checkpoint at {head} by time alone",
            )
            taken = await api.services.pool.fetch("SELECT * FROM audit_checkpoints ORDER BY position")
            assert taken[-1]["position"] == head
        assert len(taken) >= 2
        listed = (await api.get("/v1/audit/checkpoints", key=auditor)).json()["checkpoints"]

    # Each came at least M seconds after the one before it (the first after the service started),
    # with only a handful of events each; each is one of those listed, signed by the service.
    signed = [started, *(row["signed_at"] for row in taken)]
    assert all(b - a >= timedelta(seconds=seconds) for a, b in itertools.pairwise(signed)), signed
    assert [c["position"] for c in listed] == [row["position"] for row in taken]
    public = Ed25519PublicKey.from_public_bytes(taken[-1]["public_key"])
    for checkpoint in listed:
        public.verify(base64.b64decode(checkpoint["signature"]), checkpoint["message"].encode())


async def _rewrite(database_url: str, *, position: int) -> None:
    """Change the event at `position` and recompute every hash from there on."""
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute(
                "UPDATE events SET channel = 'forged' WHERE position = $1", position
            )  # fmt: skip
            heads: dict[Any, bytes] = {}
            previous = chain.GENESIS
            for row in await conn.fetch("SELECT * FROM events ORDER BY position"):
                event_hash = chain.stream_hash(
                    heads.get(row["stream_id"], chain.GENESIS), chain.row_content(row)
                )
                previous = chain.global_hash(previous, row["position"], event_hash)
                heads[row["stream_id"]] = event_hash
                if row["position"] >= position:
                    await conn.execute(
                        "UPDATE events SET hash = $2, global_hash = $3 WHERE position = $1",
                        row["position"], event_hash, previous,
                    )  # fmt: skip
    finally:
        await conn.close()


__all__ = ["ADMIN_KEY"]


async def test_one_checkpointer_leads_and_a_restart_loses_and_repeats_nothing(
    database_url: str, nats_url: str
) -> None:
    settings = dataclasses.replace(
        settings_for(database_url, nats_url), audit_checkpoint_events=3, audit_checkpoint_seconds=1.0
    )
    # Two instances on one database: one checkpointer leads.
    first, second = create_app(settings, log_requests=False), create_app(settings, log_requests=False)
    async with serving(first) as one, serving(second) as two:
        instances = [Api(one, first), Api(two, second)]
        await until(
            lambda: sum(a.services.checkpointer.leading for a in instances) == 1, what="one checkpoint leader"
        )
        await until(lambda: any(a.services.checkpointer.leading for a in instances))
        pos = await instances[0].channel_key("pos-1", ["earn", "members"])
        for n in range(2):
            member_id = await instances[n].enrol(pos)
            await instances[n].post(
                f"/v1/members/{member_id}/earn",
                {"order_ref": f"R-{n}", "amount": "5", "currency": "CNY"},
                key=pos,
            )
        # A checkpoint is due every 3 events, at the head the checkpointer saw then: the last one
        # lands within 3 events of the log's head (exactly where depends on when it looked).
        head = await instances[0].last_position()
        head = await until(
            lambda: instances[0].services.pool.fetchval(
                "SELECT max(position) FROM audit_checkpoints WHERE position > $1", head - 3
            ),
            what="a checkpoint within 3 events of the head",
        )
        assert sum(a.services.checkpointer.taken for a in instances) == await instances[
            0
        ].services.pool.fetchval("SELECT count(*) FROM audit_checkpoints")

    # As if the leader died between storing its last checkpoint and publishing it.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("UPDATE audit_checkpoints SET published = false WHERE position = $1", head)
        before = await conn.fetch("SELECT position, signature FROM audit_checkpoints ORDER BY position")
    finally:
        await conn.close()
    client = await nats.connect(nats_url)
    received: list[dict[str, Any]] = []

    async def keep(msg: Any) -> None:
        received.append(json.loads(msg.data))

    await client.subscribe(settings.audit_subject, cb=keep)
    try:
        restarted = create_app(settings, log_requests=False)
        async with serving(restarted) as three:
            api = Api(three, restarted)
            # The new leader publishes what was not, and goes on from the last checkpoint.
            await until(lambda: [c["position"] for c in received] == [head], what="the pending checkpoint")
            for n in range(2):  # 4 events: at least one more checkpoint
                member_id = await api.enrol(pos)
                await api.post(
                    f"/v1/members/{member_id}/earn",
                    {"order_ref": f"S-{n}", "amount": "5", "currency": "CNY"},
                    key=pos,
                )
            await until(lambda: len(received) > 1, what="the next checkpoint")
            assert received[1]["position"] > head
            after = await api.services.pool.fetch(
                "SELECT position, signature FROM audit_checkpoints ORDER BY position"
            )
            auditor = await api.channel_key("audit-firm", ["audit"], kind="partner")
            verified = (await api.get("/v1/audit/verify", key=auditor)).json()
    finally:
        await client.close()
    assert [tuple(r) for r in after[: len(before)]] == [tuple(r) for r in before]  # nothing re-signed
    assert verified["ok"] is True
    assert verified["checkpoints_checked"] == len(after)
