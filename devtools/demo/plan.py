"""What `loyalty demo` seeds, decided up front from a seed: the same seed, size and day give the
same program, byte for byte (so a second run the same day replays every request idempotently).

A brand with channels of every kind; members enrolled at one channel with the identity that
channel knows them by, some known to a second channel too; purchases over the past year with
seasons (Chinese New Year, 618, Singles' Day, December) and busier weekends, mostly at the
channels a member uses; redemptions of part of what was earned; a few refunds; a few duplicate
members (enrolled again elsewhere) merged back into the first.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

CURRENCY = "CNY"
DAYS = 380  # purchases from 1 to DAYS days ago: within the service's 400-day backdating bound,
# and the oldest ones (past the 12-month expiry) expire as soon as they are recorded: breakage.

# (id, name, kind, weight as a member's home channel)
CHANNELS = [
    ("pos-sh-jingan", "Shanghai Jing'an store", "pos", 6),
    ("pos-bj-sanlitun", "Beijing Sanlitun store", "pos", 5),
    ("pos-gz-tianhe", "Guangzhou Tianhe store", "pos", 4),
    ("app-ios", "iOS app", "app", 6),
    ("app-android", "Android app", "app", 6),
    ("web-shop", "Web shop", "web", 4),
    ("web-outlet", "Outlet web shop", "web", 1),
    ("mp-wechat", "WeChat mini-program", "mini_program", 6),
    ("mp-alipay", "Alipay mini-program", "mini_program", 2),
    ("mkt-tmall", "Tmall flagship store", "marketplace", 5),
    ("mkt-jd", "JD store", "marketplace", 3),
    ("dlv-meituan", "Meituan delivery", "delivery", 3),
    ("dlv-eleme", "Ele.me delivery", "delivery", 2),
    ("soc-douyin", "Douyin shop", "social", 3),
    ("soc-xiaohongshu", "Xiaohongshu shop", "social", 1),
    ("ptn-airline", "Airline miles partner", "partner", 1),
    ("ptn-bank", "Bank card partner", "partner", 1),
]
# The identity each kind of channel knows its customers by.
IDENTITY_OF_KIND = {
    "pos": "phone",
    "app": "app_user",
    "web": "email",
    "mini_program": "social",
    "marketplace": "partner",
    "delivery": "phone",
    "social": "social",
    "partner": "partner",
}
# Month weights for purchases: CNY (Jan/Feb), 618 (June), Singles' Day (Nov), December.
MONTH_WEIGHT = {
    1: 1.3,
    2: 1.2,
    3: 0.8,
    4: 0.8,
    5: 0.9,
    6: 1.5,
    7: 0.9,
    8: 0.9,
    9: 0.9,
    10: 1.0,
    11: 2.0,
    12: 1.5,
}
SHOPPING_DAYS = {(6, 18): 4.0, (11, 11): 8.0, (12, 12): 3.0}
CROSS_CHANNEL_SHARE = 0.45  # members known to a second channel
REDEEMING_SHARE = 0.35
REFUND_SHARE = 0.02  # of purchases, refunded in part
DUPLICATE_SHARE = 0.01  # of members: enrolled again elsewhere, then merged


@dataclass(frozen=True)
class Channel:
    id: str
    name: str
    kind: str


@dataclass(frozen=True)
class Identity:
    kind: str
    value: str


@dataclass(frozen=True)
class Purchase:
    member: int
    channel: str
    order_ref: str
    amount: Decimal
    occurred_at: datetime


@dataclass(frozen=True)
class Refund:
    member: int
    channel: str
    order_ref: str
    amount: Decimal


@dataclass
class Member:
    index: int
    home: str
    identity: Identity
    second: tuple[str, Identity] | None = None  # a second channel and the identity it knows
    redeem_share: float = 0.0  # of what is available after the purchases (0: does not redeem)


@dataclass(frozen=True)
class Duplicate:
    """A member enrolled again at another channel; their purchases, then merged into `of`."""

    of: int
    channel: str
    identity: Identity
    purchases: list[Purchase]


@dataclass
class Plan:
    seed: int
    anchor: datetime
    channels: list[Channel]
    members: list[Member]
    purchases: list[Purchase]
    refunds: list[Refund]
    duplicates: list[Duplicate]


def _identity(kind: str, channel: str, seed: int, n: int, rng: random.Random) -> Identity:
    if kind == "phone":
        return Identity(
            "phone", f"+86 13{rng.randrange(10)} {rng.randrange(10**4):04d} {rng.randrange(10**4):04d}"
        )
    tag = f"{seed}{n:06d}"
    if kind == "email":
        return Identity("email", f"shopper{tag}@example.com")
    if kind == "app_user":
        return Identity("app_user", f"u{tag}")
    if kind == "social":
        platform = "wechat" if channel.startswith("mp-wechat") else channel.split("-", 1)[1]
        return Identity("social", f"{platform}:openid{tag}")
    return Identity("partner", f"{channel.split('-', 1)[1]}:{tag}")


def _day_weights(anchor: datetime) -> list[float]:
    """Weight of each day 1..DAYS days before `anchor`: season, shopping festivals, weekends."""
    weights = []
    for back in range(1, DAYS + 1):
        day: date = (anchor - timedelta(days=back)).date()
        weight = MONTH_WEIGHT[day.month] * SHOPPING_DAYS.get((day.month, day.day), 1.0)
        weights.append(weight * (1.35 if day.weekday() >= 5 else 1.0))
    return weights


def plan(seed: int, members: int, *, today: date | None = None) -> Plan:
    """The demo program for `seed` and `members`, anchored at the start of `today` (UTC)."""
    rng = random.Random(seed)  # noqa: S311 -- a reproducible program, not a secret
    day0 = today or datetime.now(UTC).date()
    anchor = datetime(day0.year, day0.month, day0.day, tzinfo=UTC)
    channels = [Channel(i, n, k) for i, n, k, _ in CHANNELS]
    ids = [c.id for c in channels]
    kinds = {c.id: c.kind for c in channels}
    home_weights = [w for *_, w in CHANNELS]
    days = list(range(1, DAYS + 1))
    day_weights = _day_weights(anchor)
    phones: set[str] = set()
    serial = 0

    def new_identity(channel: str) -> Identity:
        nonlocal serial
        serial += 1
        while True:
            identity = _identity(IDENTITY_OF_KIND[kinds[channel]], channel, seed, serial, rng)
            if identity.kind != "phone" or identity.value not in phones:
                phones.add(identity.value)
                return identity

    def purchase(member: int, channel: str, number: int, since_days: int = DAYS) -> Purchase:
        back = rng.choices(days[:since_days], day_weights[:since_days])[0]
        at = anchor - timedelta(days=back) + timedelta(seconds=rng.randrange(8 * 3600, 22 * 3600))
        # Log-normal basket: median ~150, a long tail of big orders; never below 5.00.
        amount = max(Decimal("5.00"), Decimal(str(round(math.exp(rng.gauss(5.0, 0.8)), 2))))
        return Purchase(member, channel, f"DEMO{seed}-{member}-{number}", amount, at)

    people: list[Member] = []
    purchases: list[Purchase] = []
    for index in range(members):
        home = rng.choices(ids, home_weights)[0]
        person = Member(index, home, new_identity(home))
        if rng.random() < CROSS_CHANNEL_SHARE:
            other = rng.choice([c for c in ids if c != home])
            person.second = (other, new_identity(other))
        if rng.random() < REDEEMING_SHARE:
            person.redeem_share = rng.choice([0.25, 0.5, 0.75, 1.0])
        people.append(person)
        used = [home] if person.second is None else [home, person.second[0]]
        for number in range(min(60, 1 + int(rng.expovariate(1 / 7)))):
            roll = rng.random()
            channel = used[0] if roll < 0.6 or len(used) == 1 else used[1] if roll < 0.9 else rng.choice(ids)
            purchases.append(purchase(index, channel, number))
    refunds = [
        Refund(
            p.member,
            p.channel,
            p.order_ref,
            (p.amount * Decimal(rng.choice(["0.5", "1"]))).quantize(Decimal("0.01")),
        )
        for p in purchases
        if rng.random() < REFUND_SHARE
    ]
    duplicates = []
    for number in range(max(1, int(members * DUPLICATE_SHARE)) if members >= 10 else 0):
        of = rng.randrange(members)
        channel = rng.choice([c for c in ids if c != people[of].home])
        bought = [
            purchase(of, channel, 1000 + number * 10 + k, since_days=90) for k in range(rng.randint(1, 3))
        ]
        bought = [
            Purchase(p.member, p.channel, f"{p.order_ref}-dup", p.amount, p.occurred_at) for p in bought
        ]
        duplicates.append(Duplicate(of, channel, new_identity(channel), bought))
    return Plan(seed, anchor, channels, people, purchases, refunds, duplicates)
