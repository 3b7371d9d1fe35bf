"""Analytics figures equal what a separate, simple reference computes from the raw events table,
after a random multi-channel workload, again after every analytics projection is rebuilt
from zero (issue 13, what must be shown), and again after the channel rows are folded afresh by
the live statement in large batches (ADR 26: the returns a batch splits and adds).

The reference reads `events` itself (its stored JSON, not the projections' fold) for segments,
journeys and channels; the liability is checked against each member's balance as the member
aggregate computes it (the projection sums per-lot items in SQL, a different path).
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from domain.identities import Identity
from projections.channels import ChannelsProjection
from projections.segments import SEGMENTS
from projections.tracking import apply_tracked
from service.bus import segments as segment_feed
from service.handlers import members
from service.handlers.commands import Enrol
from service.handlers.context import CommandContext
from tests.api.conftest import Api
from tests.api.raw_log import figures, on_a_still_log, raw_events
from tests.integration.test_segments import relayed_everything
from tests.waiting import until as waiting_until

pytestmark = pytest.mark.asyncio

CHANNELS = {"pos-1": "pos", "app-1": "app", "web-1": "web"}
SCOPES = ["read", "earn", "award", "redeem", "adjust", "transfer", "members", "privacy"]
# Days a purchase is backdated by: none puts a segment threshold (30, 60, 180 days) within
# the seconds the test takes.
BACKDATES = (0, 3, 20, 45, 90, 150, 250, 320)
EXPIRED = 375  # a purchase this old has a lot already past its 12 months: the clock expires it


# -- the reference: the raw events table, walked once ----------------------------------------


@dataclass
class RefMember:
    status: str = "active"
    enrolled_at: datetime | None = None
    last_activity: datetime | None = None
    lifetime_earned: int = 0
    channels: list[str] = field(default_factory=list)

    def touch(self, at: datetime, channel: str) -> None:
        self.last_activity = at if self.last_activity is None else max(self.last_activity, at)
        if channel not in self.channels:
            self.channels.append(channel)


@dataclass
class RefChannel:
    enrolments: int = 0
    purchases: int = 0
    revenue: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    redemptions: int = 0
    points_earned: int = 0
    points_redeemed: int = 0
    points_expired: int = 0
    points_reversed: int = 0
    active: set[str] = field(default_factory=set)


# The member's own doings (a transfer only for its sender); awards, adjustments, expiries are not.
TOUCHING = frozenset(
    {
        "points_redeemed",
        "redemption_reversed",
        "points_held",
        "hold_captured",
        "identity_linked",
        "identity_unlinked",
    }
)


def reference_members(events: list[dict[str, Any]]) -> dict[str, RefMember]:
    members: dict[str, RefMember] = defaultdict(RefMember)
    for e in events:
        m, kind = members[e["stream"]], e["type"]
        if kind == "member_enrolled":
            m.enrolled_at = e["at"]
            m.touch(e["at"], e["channel"])
        elif kind == "points_earned":
            m.lifetime_earned += e["points"]
            if e["source"] == "purchase":
                m.touch(e["occurred_at"], e["channel"])
        elif kind == "earn_reversed":
            m.lifetime_earned -= e["points"]
            m.touch(e["at"], e["channel"])
        elif kind in TOUCHING or (kind == "points_transferred" and _uuid(e["from_member_id"]) == e["stream"]):
            m.touch(e["at"], e["channel"])
        elif kind == "members_merged":
            source = members[_uuid(e["source_member_id"])]
            if _uuid(e["source_member_id"]) == e["stream"]:
                continue  # the target's event (after the source's) moves everything
            m.lifetime_earned += source.lifetime_earned
            for used in source.channels:
                if used not in m.channels:
                    m.channels.append(used)
            assert source.last_activity is not None
            m.touch(source.last_activity, m.channels[0])
            source.status, source.lifetime_earned = "merged", 0
        elif kind == "member_forgotten":
            m.status = "forgotten"
    return dict(members)


def _uuid(value: Any) -> str:
    return str(uuid.UUID(str(value)))


def reference_segments(
    members: dict[str, RefMember], at: datetime, rules: dict[str, Any]
) -> dict[str, set[str]]:
    seg = rules["segments"]
    found: dict[str, set[str]] = {s: set() for s in SEGMENTS}
    for member_id, m in members.items():
        if m.status != "active":
            continue
        assert m.enrolled_at is not None
        assert m.last_activity is not None
        idle = at - m.last_activity
        inside = {
            "new": at - m.enrolled_at < timedelta(days=seg["new_days"]),
            "active": idle < timedelta(days=seg["at_risk_days"]),
            "at_risk": timedelta(days=seg["at_risk_days"]) <= idle < timedelta(days=seg["dormant_days"]),
            "dormant": idle >= timedelta(days=seg["dormant_days"]),
            "high_value": m.lifetime_earned >= seg["high_value_lifetime_points"],
            "multi_channel": len(m.channels) >= 2,
        }
        for name, yes in inside.items():
            if yes:
                found[name].add(member_id)
    return found


def reference_channels(
    events: list[dict[str, Any]], since: date | None, until: date | None
) -> dict[str, RefChannel]:
    def within(at: datetime) -> bool:
        day = at.astimezone(UTC).date()
        return (since is None or day >= since) and (until is None or day <= until)

    channels: dict[str, RefChannel] = defaultdict(RefChannel)
    for e in events:
        kind = e["type"]
        when = e["occurred_at"] if kind == "points_earned" else e.get("at")
        if when is None or not within(when) or kind in ("members_merged", "points_transferred"):
            continue
        c = channels[e["channel"]]
        if kind == "member_enrolled":
            c.enrolments += 1
        elif kind == "points_earned":
            c.points_earned += e["points"]
            if e["source"] == "purchase":
                c.purchases += 1
                c.revenue += e["amount"]
                c.active.add(e["stream"])
        elif kind in ("points_redeemed", "hold_captured") and e["points"]:
            c.redemptions += 1
            c.points_redeemed += e["points"]
            c.active.add(e["stream"])
        elif kind == "redemption_reversed":
            c.points_redeemed -= e["points"]
        elif kind == "earn_reversed":
            c.points_reversed += e["points"]
            c.refunded += e["amount"]
        elif kind == "points_expired":
            c.points_expired += e["points"]
    return {name: c for name, c in channels.items() if c != RefChannel()}


# -- the workload ----------------------------------------------------------------------------


@dataclass
class Workload:
    api: Api
    rng: random.Random
    keys: dict[str, str] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    orders: list[tuple[str, str, Decimal]] = field(default_factory=list)  # member, order_ref, amount
    redemptions: list[tuple[str, str]] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)

    def key(self) -> str:
        return self.keys[self.rng.choice(list(self.keys))]

    def member(self) -> str:
        return self.rng.choice(self.members)

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        response = await self.api.post(path, body, key=self.key())
        assert response.status_code < 500, response.text
        return response

    async def enrol(self) -> None:
        self.members.append(await self.api.enrol(self.key()))

    async def enrol_earlier(self, days: int, *, quiet: bool = False) -> None:
        """A member who joined `days` ago (through the use case, with the time a command would
        have had then): the API can only enrol now, and at_risk and dormant need older members.
        A quiet one is left alone by the workload."""
        at = datetime.now(UTC) - timedelta(days=days, hours=self.rng.randint(0, 20))
        ctx = CommandContext(
            channel=self.rng.choice(list(CHANNELS)), api_key_id="test", now=at, request_id=uuid.uuid4().hex
        )
        identity = Identity(kind="phone", value=f"+8613{secrets.randbelow(10**9):09d}")
        outcome = await members.enrol(self.api.services, ctx, Enrol(identities=[identity]))
        if not quiet:
            self.members.append(str(outcome.result.member_id))

    async def earn(self, days: int | None = None) -> None:
        member = self.member()
        order = uuid.uuid4().hex
        amount = Decimal(self.rng.randint(1_000, 900_000)) / 100
        days = self.rng.choice((*BACKDATES, EXPIRED)) if days is None else days
        backdate = timedelta(days=days, hours=self.rng.randint(0, 20))
        occurred = datetime.now(UTC) - backdate
        body = {
            "order_ref": order,
            "amount": str(amount),
            "currency": "CNY",
            "occurred_at": occurred.isoformat(),
        }
        if (await self.post(f"/v1/members/{member}/earn", body)).status_code == 201:
            self.orders.append((member, order, amount))

    async def award(self) -> None:
        await self.post(
            f"/v1/members/{self.member()}/earn", {"points": self.rng.randint(1, 500), "reason": "goodwill"}
        )

    async def redeem(self) -> None:
        member = self.member()
        response = await self.post(f"/v1/members/{member}/redeem", {"points": self.rng.randint(1, 800)})
        if response.status_code == 201:
            self.redemptions.append((member, response.json()["redemption_id"]))

    async def undo(self) -> None:
        if self.redemptions:
            member, redemption = self.redemptions.pop(self.rng.randrange(len(self.redemptions)))
            await self.post(f"/v1/members/{member}/reversals", {"redemption_id": redemption})

    async def refund(self) -> None:
        if self.orders:
            member, order, amount = self.rng.choice(self.orders)
            part = (amount * Decimal(self.rng.choice(["0.25", "0.5", "1"]))).quantize(Decimal("0.01"))
            await self.post(f"/v1/members/{member}/reversals", {"order_ref": order, "amount": str(part)})

    async def hold(self) -> None:
        response = await self.post(f"/v1/members/{self.member()}/holds", {"points": self.rng.randint(1, 300)})
        if response.status_code == 201:
            self.holds.append(response.json()["hold_id"])

    async def close_hold(self) -> None:
        if self.holds:
            hold = self.holds.pop(self.rng.randrange(len(self.holds)))
            if self.rng.random() < 0.6:
                await self.post(f"/v1/holds/{hold}/capture", {"points": self.rng.randint(1, 300)})
            else:
                await self.post(f"/v1/holds/{hold}/release", {})

    async def adjust(self) -> None:
        points = self.rng.choice([-1, 1]) * self.rng.randint(1, 200)
        await self.post(
            f"/v1/members/{self.member()}/adjustments", {"points": points, "reason": "correction"}
        )

    async def transfer(self) -> None:
        sender, receiver = self.rng.sample(self.members, 2)
        await self.post(
            f"/v1/members/{sender}/transfers", {"to_member_id": receiver, "points": self.rng.randint(1, 100)}
        )

    async def link(self) -> None:
        phone = f"+8613{secrets.randbelow(10**9):09d}"
        await self.post(f"/v1/members/{self.member()}/identities", {"kind": "phone", "value": phone})

    async def merge(self) -> None:
        if len(self.members) > 3:
            target, source = self.rng.sample(self.members, 2)
            if (
                await self.post(f"/v1/members/{target}/merge", {"source_member_id": source})
            ).status_code == 201:
                self.members.remove(source)


async def run_workload(api: Api, rng: random.Random, steps: int) -> None:
    w = Workload(api, rng)
    for channel, kind in CHANNELS.items():
        w.keys[channel] = await api.channel_key(channel, SCOPES, kind=kind)
    for _ in range(8):
        await w.enrol()
    for days in BACKDATES[2:]:
        await w.enrol_earlier(days)
        await w.enrol_earlier(days, quiet=True)
    for _ in range(4):  # some members are high value
        member = w.member()
        body = {"order_ref": uuid.uuid4().hex, "amount": "9000.00", "currency": "CNY"}
        assert (await w.post(f"/v1/members/{member}/earn", body)).status_code == 201
    await w.earn(EXPIRED)  # at least one lot expires
    ops = [w.earn] * 6 + [w.redeem] * 3 + [w.undo, w.refund, w.refund, w.hold, w.close_hold, w.close_hold]
    ops += [w.award, w.adjust, w.transfer, w.link, w.enrol]
    for step in range(steps):
        await (w.merge() if step % 25 == 24 else rng.choice(ops)())


# -- the figures -----------------------------------------------------------------------------


async def segment_members(api: Api, name: str) -> set[str]:
    found: set[str] = set()
    after = None
    while True:
        params: dict[str, Any] = {"limit": 7} | ({"after": after} if after else {})
        page = await figures(api, f"/v1/segments/{name}/members", **params)
        found |= {m["member_id"] for m in page["members"]}
        after = page["next_after"]
        if after is None:
            return found


async def check_figures(api: Api) -> None:
    """Compare, on a log that did not move meanwhile (the clock may still be recording expiries)."""
    await on_a_still_log(api, compare_figures)


def channel_ranges(today: date) -> list[tuple[date | None, date | None]]:
    """Ranges of days for the channel figures: open, a day, 30 and 365 days, ranges crossing
    months with and without whole months at either end, within one month, and some at random
    (active members are counted from per-day and per-month kept counts: ADR 26)."""
    month = today.replace(day=1)
    last_month = (month - timedelta(days=1)).replace(day=1)
    rng = random.Random(today.toordinal())
    ranges: list[tuple[date | None, date | None]] = [
        (None, None),
        (today, None),
        (None, today - timedelta(days=30)),
        (today - timedelta(days=100), today - timedelta(days=10)),
        (today - timedelta(days=29), today),
        (today - timedelta(days=364), today),
        ((month - timedelta(days=70)).replace(day=14), month - timedelta(days=1)),  # partial, whole, whole
        ((month - timedelta(days=100)).replace(day=1), today),  # whole months, then days
        ((month - timedelta(days=150)).replace(day=1), month - timedelta(days=1)),  # whole months only
        (last_month + timedelta(days=3), last_month + timedelta(days=20)),  # inside one month
        ((month - timedelta(days=400)).replace(day=9), (month - timedelta(days=40)).replace(day=22)),
    ]
    ranges += [(today - timedelta(days=d), today - timedelta(days=d)) for d in (*BACKDATES, EXPIRED)]
    for _ in range(6):
        first = today - timedelta(days=rng.randrange(400))
        ranges.append((first, first + timedelta(days=rng.randrange(400))))
    return ranges


async def compare_figures(api: Api) -> None:
    events = await raw_events(api)
    rules = (await figures(api, "/v1/program"))["rules"]
    members = reference_members(events)

    expected = reference_segments(members, datetime.now(UTC), rules)
    counts = await figures(api, "/v1/analytics/segments")
    assert counts == {"segments": [{"segment": s, "members": len(expected[s])} for s in SEGMENTS]}
    for name in SEGMENTS:
        assert await segment_members(api, name) == expected[name], name
    assert all(expected.values()), expected

    active = {mid: m for mid, m in members.items() if m.status == "active"}
    journeys = await figures(api, "/v1/analytics/journeys")
    assert {(j["channels"], j["members"]) for j in journeys["by_channel_count"]} == set(
        Counter(len(m.channels) for m in active.values()).items()
    )
    pairs = Counter((m.channels[0], m.channels[1] if len(m.channels) > 1 else None) for m in active.values())
    assert {(j["first"], j["next"], j["members"]) for j in journeys["first_to_next"]} == {
        (first, nxt, n) for (first, nxt), n in pairs.items()
    }

    for since, until in channel_ranges(datetime.now(UTC).date()):
        params = {k: v.isoformat() for k, v in (("from", since), ("to", until)) if v is not None}
        got = {c["channel"]: c for c in (await figures(api, "/v1/analytics/channels", **params))["channels"]}
        want = reference_channels(events, since, until)
        assert set(got) == set(want), (since, until)
        for name, c in want.items():
            g = got[name]
            assert (g["active_members"], g["enrolments"], g["purchases"], g["redemptions"]) == (
                len(c.active),
                c.enrolments,
                c.purchases,
                c.redemptions,
            ), name
            assert (Decimal(g["revenue"]), Decimal(g["refunded"])) == (c.revenue, c.refunded), name
            assert (g["points_earned"], g["points_redeemed"], g["points_expired"], g["points_reversed"]) == (
                c.points_earned,
                c.points_redeemed,
                c.points_expired,
                c.points_reversed,
            ), name

    liability = await figures(api, "/v1/analytics/liability")
    at = datetime.fromisoformat(liability["at"])
    program = await api.services.repository.program()
    totals: Counter[str] = Counter()
    for member_id in members:
        member = await api.services.repository.member(uuid.UUID(member_id))
        balance = member.balance(now=at, rules=program.rules)
        totals.update(
            available=balance.available, pending=balance.pending, held=balance.held, expired=balance.expired
        )
        for lot in member.lots:
            for days in (30, 90, 365):
                if lot.expires_at is not None and at < lot.expires_at <= at + timedelta(days=days):
                    totals[f"within_{days}"] += lot.points
    for kind in ("available", "pending", "held"):
        assert liability[kind]["points"] == totals[kind], kind
    assert liability["breakage"]["points"] == totals["expired"]
    assert [e["points"] for e in liability["expiring"]] == [totals[f"within_{d}"] for d in (30, 90, 365)]
    assert totals["available"] > 0
    assert totals["expired"] > 0


async def refold_channels_live(api: Api, rng: random.Random) -> None:
    """Fold channel_days again from zero with the live statement (a rebuild uses another), in
    batches of many events: a batch then adds several days of a member, backdated between its
    others, and the returns it splits and adds are all in one statement."""
    projection = ChannelsProjection(api.services.store)
    async with api.services.pool.acquire() as conn, conn.transaction():
        # Holding the checkpoint: the runner waits for this transaction.
        await conn.execute("SELECT position FROM checkpoints WHERE name = $1 FOR UPDATE", projection.name)
        for table in ("channel_days", "channel_totals", "channel_returns"):
            await conn.execute(f"DELETE FROM {table}")
        await conn.execute("UPDATE checkpoints SET position = 0 WHERE name = $1", projection.name)
        while True:
            after, reached = await apply_tracked(conn, projection, rng.randint(20, 300))
            if reached == after:
                break


async def test_analytics_equal_a_reference_from_the_raw_events_and_again_after_a_rebuild(api: Api) -> None:
    seed = secrets.randbits(32)
    try:
        await run_workload(api, random.Random(seed), steps=120)
        await check_figures(api)
        async with api.services.pool.acquire() as conn:
            announced = await conn.fetchval("SELECT count(*) FROM segment_transitions")
        for name in ("segments", "liability", "channel_days"):
            head = await api.last_position()
            report = await api.services.projections.rebuild(name)
            # Every event up to where the rebuild stopped, and at least the head it started from
            # (the clock may record an expiry meanwhile; the runner applies that one after).
            assert report.events == report.position >= head
        await check_figures(api)
        await refold_channels_live(api, random.Random(seed))
        await check_figures(api)
        async with api.services.pool.acquire() as conn:
            # A rebuild announces only what differs from what was announced: here nothing.
            assert await conn.fetchval("SELECT count(*) FROM segment_transitions") == announced
        # Every change recorded is in the segments stream, once.
        await waiting_until(lambda: relayed_everything(api.services), what="the segments relay catching up")
        js = api.services.nats.client.jetstream()
        info = await js.stream_info(segment_feed.stream_name(api.services.settings))
        assert info.state.messages == announced > 0
        assert info.state.last_seq == announced
    except AssertionError as failure:
        raise AssertionError(f"{failure} (workload seed {seed})") from failure
