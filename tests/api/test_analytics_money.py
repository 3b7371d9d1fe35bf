"""The money in the analytics equals what the test works out from the raw events table and the
rules' point value: per channel the redemption rate, the cost of the points earned at the point
value and its ratio to revenue; the liability's outstanding, available, pending and held points
and their value, what expires within 30, 90 and 365 days and its value, breakage and its rate.

A workload of its own on five channels (three selling, one awarding only, one enrolling only)
with a point value of 0.0125: a point is an eightieth of a yuan, so many figures fall on a half
cent and the rounding (the currency's minor unit, half to even; rates to four places, half to
even; null when there is nothing to divide by) is exercised, not assumed. The reference walks
the events in log order and keeps each member's lots itself (spent oldest expiry first, a
refund from its order's own lot, an expiry taking what lapsed), so the liability is not read
back from the aggregate the projection folds.
"""

from __future__ import annotations

import random
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from tests.api.conftest import ADMIN_KEY, Api
from tests.api.raw_log import figures, on_a_still_log, raw_events
from tests.waiting import until

pytestmark = pytest.mark.asyncio

POINT_VALUE = Decimal("0.0125")
PENDING_DAYS = 2
SELLING = {"pos-money": "pos", "app-money": "app", "web-money": "web"}
AWARDING = "crm-money"  # awards points, sells nothing: a cost with no revenue
ENROLLING = "kiosk-money"  # enrols members only: nothing to divide by at all
# Days purchases are backdated by: lots expiring within 30, 90, 365 days, and a pending one (0).
BACKDATES = (340, 300, 100, 20, 0)
EXPIRED = 375  # a lot already past its 12 months: the clock records its expiry
HORIZONS = (30, 90, 365)


def money(amount: Decimal) -> str:
    """As the API documents money: the currency's minor unit (CNY: cents), half to even."""
    return str(amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def rate(part: Decimal | int, whole: Decimal | int) -> str | None:
    """As the API documents rates: four places, half to even; null for a zero whole."""
    if not whole:
        return None
    return str((Decimal(part) / Decimal(whole)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN))


# -- the reference: the raw events table ------------------------------------------------------


@dataclass
class Lot:
    points: int
    available_at: datetime
    expires_at: datetime | None
    order_ref: str | None

    def live(self, at: datetime) -> bool:
        return self.expires_at is None or self.expires_at > at


@dataclass
class Ledger:
    """One member's points as the reference keeps them."""

    lots: list[Lot] = field(default_factory=list)
    holds: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    debt: int = 0

    def draw(self, points: int, at: datetime) -> None:
        """Spend oldest expiry first from what is spendable at `at`."""
        spendable = [lot for lot in self.lots if lot.points and lot.available_at <= at and lot.live(at)]
        spendable.sort(key=lambda lot: lot.expires_at or datetime.max.replace(tzinfo=UTC))
        for lot in spendable:
            taken = min(lot.points, points)
            lot.points -= taken
            points -= taken
        assert points == 0, "a redemption drew more than was spendable"


@dataclass
class Liability:
    available: int = 0
    pending: int = 0
    held: int = 0
    expiring: dict[int, int] = field(default_factory=lambda: dict.fromkeys(HORIZONS, 0))
    breakage: int = 0
    earned: int = 0


KNOWN = frozenset({"member_enrolled", "tier_changed", "identity_linked"})


def reference_liability(events: list[dict[str, Any]], at: datetime) -> Liability:
    ledgers: dict[str, Ledger] = defaultdict(Ledger)
    found = Liability()
    for e in events:
        m, kind = ledgers[e["stream"]], e["type"]
        if kind == "points_earned":
            m.lots.append(Lot(e["points"], e["available_at"], e["expires_at"], e["order_ref"]))
            found.earned += e["points"]
        elif kind == "points_redeemed":
            m.draw(e["points"], e["at"])
        elif kind == "earn_reversed":
            lot = next(lot for lot in m.lots if lot.order_ref == e["order_ref"])
            taken = min(lot.points, e["points"])
            lot.points -= taken
            m.debt += e["points"] - taken
            found.earned -= e["points"]
        elif kind == "points_held":
            m.holds[str(e["hold_id"])] = (e["points"], e["expires_at"])
        elif kind == "hold_released":
            del m.holds[str(e["hold_id"])]
        elif kind == "points_expired":
            lapsed = [lot for lot in m.lots if not lot.live(e["at"])]
            assert sum(lot.points for lot in lapsed) == e["points"], "an expiry other than what lapsed"
            for lot in lapsed:
                lot.points = 0
            found.breakage += e["points"]
        else:
            # The workload makes nothing else; if it ever does, the reference must learn it.
            assert kind in KNOWN, f"the reference does not know {kind}"
    for m in ledgers.values():
        live = [lot for lot in m.lots if lot.points and lot.live(at)]
        spendable = sum(lot.points for lot in live if lot.available_at <= at)
        held = min(spendable, sum(points for points, expires in m.holds.values() if expires > at))
        found.available += spendable - held - m.debt
        found.pending += sum(lot.points for lot in live if lot.available_at > at)
        found.held += held
        found.breakage += sum(lot.points for lot in m.lots if lot.points and not lot.live(at))
        for days in HORIZONS:
            found.expiring[days] += sum(
                lot.points
                for lot in live
                if lot.expires_at is not None and lot.expires_at <= at + timedelta(days=days)
            )
    return found


@dataclass
class ChannelMoney:
    revenue: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)
    points_earned: int = 0
    points_redeemed: int = 0


def reference_channels(
    events: list[dict[str, Any]], since: date | None, until: date | None
) -> dict[str, ChannelMoney]:
    """Per channel over the days (a purchase on its business day, the rest on the day recorded)."""
    found: dict[str, ChannelMoney] = defaultdict(ChannelMoney)
    seen: set[str] = set()
    for e in events:
        day = (e["occurred_at"] if e["type"] == "points_earned" else e["at"]).astimezone(UTC).date()
        if (since is not None and day < since) or (until is not None and day > until):
            continue
        seen.add(e["channel"])  # any event makes a channel's row for its day, if only of zeros
        c = found[e["channel"]]
        if e["type"] == "points_earned":
            c.points_earned += e["points"]
            if e["source"] == "purchase":
                c.revenue += e["amount"]
        elif e["type"] == "points_redeemed":
            c.points_redeemed += e["points"]
        elif e["type"] == "earn_reversed":
            c.refunded += e["amount"]
    return {name: found[name] for name in seen}


# -- the workload ---------------------------------------------------------------------------


@dataclass
class Workload:
    api: Api
    rng: random.Random
    keys: dict[str, str] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    today_orders: list[tuple[str, str, Decimal]] = field(default_factory=list)  # member, order, amount

    def seller(self) -> str:
        return self.keys[self.rng.choice(list(SELLING))]

    async def earn(self, member: str, days: int) -> None:
        amount = Decimal(self.rng.randint(1_000, 300_000)) / 100
        occurred = datetime.now(UTC) - timedelta(days=days, hours=self.rng.randint(0, 20) if days else 0)
        order = uuid.uuid4().hex
        body = {
            "order_ref": order,
            "amount": str(amount),
            "currency": "CNY",
            "occurred_at": occurred.isoformat(),
        }
        response = await self.api.post(f"/v1/members/{member}/earn", body, key=self.seller())
        assert response.status_code == 201, response.text
        if days == 0:
            self.today_orders.append((member, order, amount))


async def run_workload(api: Api, rng: random.Random) -> Workload:
    rules = (await api.get("/v1/program", key=ADMIN_KEY)).json()["rules"]
    rules["redemption"]["point_value"] = str(POINT_VALUE)
    rules["earn"]["pending_days"] = PENDING_DAYS
    put = await api.client.put(
        "/v1/program/rules",
        json=rules,
        headers={"Authorization": f"Bearer {ADMIN_KEY}", "Idempotency-Key": uuid.uuid4().hex},
    )
    assert put.status_code == 200, put.text

    w = Workload(api, rng)
    everyday = ["read", "earn", "redeem", "members"]
    for channel, kind in SELLING.items():
        w.keys[channel] = await api.channel_key(channel, everyday, kind=kind)
    awarding = await api.channel_key(AWARDING, ["award", "read"], kind="internal")
    enrolling = await api.channel_key(ENROLLING, ["members"], kind="partner")
    for i in range(6):
        w.members.append(await api.enrol(enrolling if i % 2 else w.seller()))
    for member in w.members:
        for days in BACKDATES:
            await w.earn(member, days)
    await w.earn(w.members[0], EXPIRED)
    for member in rng.sample(w.members, 3):
        body = {"points": rng.randint(1, 999), "reason": "goodwill"}
        assert (await api.post(f"/v1/members/{member}/earn", body, key=awarding)).status_code == 201
    for member in w.members:
        for _ in range(2):
            body = {"points": rng.randint(1, 1500)}
            response = await api.post(f"/v1/members/{member}/redeem", body, key=w.seller())
            assert response.status_code == 201, response.text
    # Refunds of today's purchases (their lots still pending, untouched): one in full, one in part.
    (m1, o1, _), (m2, o2, a2) = rng.sample(w.today_orders, 2)
    part = (a2 * Decimal("0.37")).quantize(Decimal("0.01"))
    for member, order, amount in ((m1, o1, None), (m2, o2, part)):
        body = {"order_ref": order} | ({} if amount is None else {"amount": str(amount)})
        response = await api.post(f"/v1/members/{member}/reversals", body, key=w.seller())
        assert response.status_code == 201, response.text
    # An open hold (a day long): held points are owed too.
    hold = {"points": rng.randint(1, 100), "ttl_seconds": 86_400}
    assert (await api.post(f"/v1/members/{w.members[1]}/holds", hold, key=w.seller())).status_code == 201
    return w


# -- the comparison -------------------------------------------------------------------------


async def expiry_recorded(api: Api) -> bool:
    async with api.services.pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT count(*) FROM events WHERE event_type = 'points_expired'"))


async def compare(api: Api) -> None:
    events = await raw_events(api)

    liability = await figures(api, "/v1/analytics/liability")
    at = datetime.fromisoformat(liability["at"])
    want = reference_liability(events, at)
    assert (liability["currency"], Decimal(liability["point_value"])) == ("CNY", POINT_VALUE)

    def pv(points: int) -> dict[str, Any]:
        return {"points": points, "value": money(points * POINT_VALUE)}

    assert liability["available"] == pv(want.available)
    assert liability["pending"] == pv(want.pending)
    assert liability["held"] == pv(want.held)
    assert liability["outstanding"] == pv(want.available + want.pending + want.held)
    assert liability["expiring"] == [{"days": d, **pv(want.expiring[d])} for d in HORIZONS]
    assert liability["breakage"] == {**pv(want.breakage), "rate": rate(want.breakage, want.earned)}
    # The workload reaches every figure (else the equalities above prove little).
    assert min(want.available, want.pending, want.held, want.breakage, *want.expiring.values()) > 0

    today = datetime.now(UTC).date()
    windows = ((None, None), (today - timedelta(days=400), today - timedelta(days=30)), (today, today))
    nulls = set()
    for since, until_day in windows:
        params = {k: v.isoformat() for k, v in (("from", since), ("to", until_day)) if v is not None}
        report = await figures(api, "/v1/analytics/channels", **params)
        assert (report["currency"], Decimal(report["point_value"])) == ("CNY", POINT_VALUE)
        got = {c["channel"]: c for c in report["channels"]}
        expected = reference_channels(events, since, until_day)
        assert set(got) == set(expected), (since, until_day)
        for name, c in expected.items():
            cost = c.points_earned * POINT_VALUE
            answered = {
                k: got[name][k]
                for k in ("revenue", "refunded", "redemption_rate", "points_cost", "cost_ratio")
            }
            assert answered == {
                "revenue": money(c.revenue),
                "refunded": money(c.refunded),
                "redemption_rate": rate(c.points_redeemed, c.points_earned),
                "points_cost": money(cost),
                "cost_ratio": rate(cost, c.revenue),
            }, (name, since, until_day)
            nulls |= {k for k in ("redemption_rate", "cost_ratio") if answered[k] is None}
    assert nulls == {"redemption_rate", "cost_ratio"}  # the enrolling and awarding channels


async def test_channel_roi_and_liability_money_equal_a_reference_from_the_raw_events(api: Api) -> None:
    seed = secrets.randbits(32)
    try:
        await run_workload(api, random.Random(seed))
        await until(lambda: expiry_recorded(api), what="the clock recording the lapsed lot's expiry")
        await on_a_still_log(api, compare, attempts=10)
    except AssertionError as failure:
        raise AssertionError(f"{failure} (workload seed {seed})") from failure
