"""`loyalty demo` against a running service: what it reports is what the log holds, counted here
from the events themselves; the same seed and day give the same program, and a second run
writes nothing new."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from devtools.demo.cli import run
from devtools.demo.plan import plan
from service.cli import parser
from service.store.log import LogReader
from tests.api.conftest import ADMIN_KEY, Api

MEMBERS = 40
SEED = 7
# The types of the events the demo's own requests make (the clock adds expiries and downgrades).
COMMANDED = (
    "member_enrolled",
    "identity_linked",
    "points_earned",
    "earn_reversed",
    "points_redeemed",
    "members_merged",
)


async def demo(api: Api, capsys: pytest.CaptureFixture[str], day: str) -> tuple[int, dict[str, Any]]:
    """`loyalty demo --json` in a thread of its own (it runs its own event loop), this loop serving."""
    base = str(api.client.base_url)
    argv = ["demo", "--url", base, "--admin-key", ADMIN_KEY, "--members", str(MEMBERS), "--seed", str(SEED)]
    args = parser().parse_args([*argv, "--day", day, "--concurrency", "4", "--json"])
    status = await asyncio.to_thread(run, args, host="unused", port=0)
    return status, json.loads(capsys.readouterr().out)


async def log_totals(api: Api) -> tuple[Counter[str], Counter[str]]:
    """Events by type, and points by type, read from the log."""
    counts: Counter[str] = Counter()
    points: Counter[str] = Counter()
    reader, after = LogReader(None), 0
    async with api.services.pool.acquire() as conn:
        while page := await reader.read(conn, after=after, limit=1000):
            for event in page:
                counts[event.event_type] += 1
                points[event.event_type] += getattr(event.event, "points", 0) or 0
            after = page[-1].position
    return counts, points


async def test_the_demo_reports_what_the_log_holds_and_runs_again_idempotently(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    day = datetime.now(UTC).date().isoformat()

    status, report = await demo(api, capsys, day)

    assert status == 0, report["refused"]
    assert report["refused"] == {}
    counts, points = await log_totals(api)
    program = plan(SEED, MEMBERS, today=datetime.fromisoformat(day).date())
    assert report["channels"] == len(program.channels)
    assert report["members"] == counts["member_enrolled"] == MEMBERS + len(program.duplicates)
    assert (
        report["identities_linked"]
        == counts["identity_linked"]
        == sum(1 for m in program.members if m.second)
    )
    assert report["purchases"] == counts["points_earned"]
    assert report["purchases"] == len(program.purchases) + sum(len(d.purchases) for d in program.duplicates)
    assert report["points_earned"] == points["points_earned"]
    assert report["refunds"] == counts["earn_reversed"] == len(program.refunds)
    assert report["points_refunded"] == points["earn_reversed"]
    assert report["redemptions"] == counts["points_redeemed"] > 0
    assert report["points_redeemed"] == points["points_redeemed"]
    assert report["merges"] == len(program.duplicates) > 0
    assert counts["members_merged"] == 2 * report["merges"]  # one event on both members' streams
    assert report["last_position"] >= report["first_position"] + sum(counts[t] for t in COMMANDED) // 2
    channels = (await api.get("/v1/channels", key=ADMIN_KEY)).json()
    assert {c.id for c in program.channels} <= {c["id"] for c in channels}
    kinds = Counter(c.kind for c in program.channels)
    assert len(kinds) == 8
    assert min(kinds.values()) >= 2  # several channels of each kind
    console = await api.get("/v1/analytics/segments", key=report["console_key"])
    assert console.status_code == 200, console.text

    # The same seed and day: every request is a replay, nothing new is written.
    status, again = await demo(api, capsys, day)

    assert status == 0, again["refused"]
    for figure in ("members", "identities_linked", "purchases", "points_earned", "redemptions", "merges"):
        assert again[figure] == report[figure], figure
    assert again["console_key"] == report["console_key"]
    counts_after, _ = await log_totals(api)
    assert {t: counts_after[t] for t in COMMANDED} == {t: counts[t] for t in COMMANDED}


def test_a_plan_is_a_function_of_its_seed_size_and_day() -> None:
    day = datetime(2026, 3, 1, tzinfo=UTC).date()
    first, second = plan(3, 200, today=day), plan(3, 200, today=day)
    assert first == second
    assert plan(4, 200, today=day) != first
    assert all(1 <= (first.anchor - p.occurred_at).days + 1 <= 380 for p in first.purchases)
    # Seasons: Singles' Day sells more than an ordinary November day.
    by_day = Counter(p.occurred_at.date() for p in first.purchases)
    singles = by_day[datetime(2025, 11, 11).date()]
    ordinary = sum(by_day[datetime(2025, 11, d).date()] for d in range(20, 27)) / 7
    assert singles > 2 * ordinary
    assert len({p.member for p in first.purchases}) > 150
    assert sum(1 for m in first.members if m.second) > 50  # known across channels
