"""An auditor replays the past: every projection as it was at three instants, in scratch tables.

Members enrol, earn, redeem and hold at the POS; at three instants the API is asked for their
balances. Later — after one of them was forgotten — `loyalty replay --until` builds every
projection at each instant into a schema of its own; the replayed balances equal what the API
answered then (and what `balance?as_of` answers now), the live tables are untouched, and the
forgotten member replays with his amounts and without his personal data.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from projections.replay import replay_until
from service import cli
from tests.api.conftest import Api
from tests.waiting import until

BALANCE = ("available", "pending", "held", "lifetime_earned", "lifetime_redeemed", "expired", "qualifying")


async def balances_now(api: Api, key: str, members: list[str]) -> dict[str, dict[str, Any]]:
    return {m: (await api.get(f"/v1/members/{m}/balance", key=key)).json()["balance"] for m in members}


async def replayed(api: Api, schema: str) -> dict[str, dict[str, Any]]:
    async with api.services.pool.acquire() as conn:
        rows = await conn.fetch(f"SELECT * FROM {schema}.balances")
    return {str(r["member_id"]): {**{f: r[f] for f in BALANCE}, "tier": r["tier"]} for r in rows}


def plain(balance: dict[str, Any]) -> dict[str, Any]:
    return {f: balance[f] for f in (*BALANCE, "tier")}


async def test_replay_until_three_instants_equals_what_the_api_answered_then(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    pos = await api.channel_key("pos-sh-01", ["read", "earn", "redeem", "members"])
    desk = await api.channel_key("privacy-desk", ["read", "privacy"], kind="internal")
    members = [await api.enrol(pos) for _ in range(3)]
    shots: list[tuple[datetime, dict[str, dict[str, Any]]]] = []

    async def earn(member: str, order: str, amount: str, **extra: Any) -> None:
        body = {"order_ref": order, "amount": amount, "currency": "CNY", **extra}
        answer = await api.post(f"/v1/members/{member}/earn", body, key=pos)
        assert answer.status_code == 201, answer.text

    async def shoot() -> None:
        at = datetime.now(UTC)
        shots.append((at, await balances_now(api, pos, members)))
        # The next command is recorded strictly after this instant.
        await until(lambda: datetime.now(UTC) > at, what="the clock moved")

    await earn(members[0], "A-1", "300.00")
    await earn(members[1], "B-1", "1200.00")  # silver
    # A purchase from long ago: its lot had already expired when it was recorded.
    await earn(members[2], "C-1", "50.00", occurred_at=(datetime.now(UTC) - timedelta(days=390)).isoformat())
    await shoot()
    await api.post(f"/v1/members/{members[0]}/redeem", {"points": 120}, key=pos)
    await api.post(f"/v1/members/{members[1]}/holds", {"points": 200}, key=pos)
    await earn(members[2], "C-2", "80.00")
    await shoot()
    await api.post(f"/v1/members/{members[0]}/reversals", {"order_ref": "A-1", "amount": "100.00"}, key=pos)
    await earn(members[1], "B-2", "4000.00")  # gold
    await shoot()
    forgotten = await api.post(f"/v1/members/{members[1]}/forget", {}, key=desk)
    assert forgotten.status_code == 201, forgotten.text
    caught_up = api.services.projections.wait_for("balances", forgotten.json()["position"], timeout=10)
    assert await caught_up
    live_before = await replayed(api, "public")

    services = api.services
    for i, (at, answered) in enumerate(shots):
        report = await replay_until(services.pool, services.store, schema=f"replay_{i}", at=at)
        assert f"replay_{i}.balances" in report.tables
        assert all(t.startswith(f"replay_{i}.") for t in report.tables)
        rows = await replayed(api, f"replay_{i}")
        assert {m: rows[m] for m in members} == {m: plain(b) for m, b in answered.items()}, f"instant {i}"
        for m in members:
            as_of = await api.get(f"/v1/members/{m}/balance", key=pos, params={"as_of": at.isoformat()})
            assert plain(as_of.json()["balance"]) == rows[m], f"as_of at instant {i}, member {m}"

    # The live tables were not touched; the forgotten member replays without personal data.
    assert await replayed(api, "public") == live_before
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, identities FROM replay_0.members WHERE member_id = $1::uuid", members[1]
        )
    assert (row["status"], row["identities"]) == ("active", "[]")

    # The command line does the same, naming its schema: at each instant (ISO 8601, as an auditor
    # types it), what the API answered then; a position works as well as an instant.
    settings = services.settings
    monkeypatch.setenv("LOYALTY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("LOYALTY_NATS_URL", settings.nats_url)
    monkeypatch.setenv("LOYALTY_MASTER_KEY", settings.master_key)
    for i, (at, answered) in enumerate(shots):
        schema = f"replay_cli_at_{i}"
        assert (
            await asyncio.to_thread(cli.main, ["replay", "--until", at.isoformat(), "--schema", schema]) == 0
        )
        rows = await replayed(api, schema)
        assert {m: rows[m] for m in members} == {m: plain(b) for m, b in answered.items()}, (
            f"CLI, instant {i}"
        )
    position = (await api.post(f"/v1/members/{members[0]}/redeem", {"points": 1}, key=pos)).json()["position"]
    assert (
        await asyncio.to_thread(cli.main, ["replay", "--until", str(position - 1), "--schema", "replay_cli"])
        == 0
    )
    rows = await replayed(api, "replay_cli")
    assert rows[members[0]]["lifetime_redeemed"] == shots[-1][1][members[0]]["lifetime_redeemed"]
