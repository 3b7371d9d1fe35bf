"""Sends a demo plan (plan.py) to a running service through its own HTTP API, and counts what
the service answered.

Channels and their keys and the merges go one request each (with the admin key); members and
the identities a second channel knows them by, one request each (with the channel's key), many
at a time; purchases, refunds and redemptions in batches of up to 500 (`POST /v1/batch`), one
channel's key per batch. Every request carries an Idempotency-Key made from the seed, so running
the same plan again replays the first answers and writes nothing new.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from .plan import CURRENCY, Plan, Purchase

BATCH = 500
ATTEMPTS = 5  # per request, when the connection broke or the service said to retry
CHANNEL_SCOPES = ["read", "earn", "redeem", "members"]
CONSOLE_SCOPES = ["read", "analytics"]
CONSOLE_CHANNEL = ("console", "Operations console", "internal")


class DemoFailed(Exception):
    """The service refused what the demo cannot do without (a channel, a key, the admin key)."""


@dataclass
class Report:
    """What the service accepted (status 2xx), and what it refused, by problem type."""

    channels: int = 0
    members: int = 0
    identities_linked: int = 0
    purchases: int = 0
    points_earned: int = 0
    refunds: int = 0
    points_refunded: int = 0
    redemptions: int = 0
    points_redeemed: int = 0
    merges: int = 0
    campaign: str | None = None
    console_key: str | None = None
    refused: dict[str, int] = field(default_factory=dict)
    first_position: int = 0
    last_position: int = 0
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds each step took

    def refuse(self, what: str, status: int, body: Any) -> None:
        code = body.get("type", "").rsplit("/", 1)[-1] if isinstance(body, dict) else ""
        name = f"{what}: {status} {code}".strip()
        self.refused[name] = self.refused.get(name, 0) + 1


class Seeder:
    def __init__(
        self,
        client: httpx.AsyncClient,
        admin_key: str,
        plan: Plan,
        *,
        concurrency: int,
        announce: Callable[[str], None] | None = None,
    ) -> None:
        self.client = client
        self.announce = announce  # told the console key as soon as there is one
        self.admin_key = admin_key
        self.plan = plan
        self.concurrency = concurrency
        self.report = Report()
        self.keys: dict[str, str] = {}
        self.member_ids: dict[int, str] = {}
        self.available: dict[str, tuple[int, int]] = {}  # member id -> (position, available)

    def idem(self, *parts: object) -> str:
        return "-".join(["demo", str(self.plan.seed), self.plan.anchor.date().isoformat(), *map(str, parts)])

    async def post(self, path: str, body: Any, *, key: str, idem: str) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": idem}
        response = await self.send("POST", path, json=body, headers=headers)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request, sent again (it is idempotent: every POST carries its key) when the
        connection broke (a kept-alive connection the server closed as it was reused) or the
        service asked to retry (429, 503, after their Retry-After)."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.client.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)
                continue
            if response.status_code not in (429, 503) or attempt == ATTEMPTS:
                return response
            await asyncio.sleep(min(float(response.headers.get("Retry-After", "1")), 10.0))
        raise AssertionError("unreachable")

    async def many(
        self, calls: Iterable[Callable[[], Awaitable[None]]], concurrency: int | None = None
    ) -> None:
        """Run the calls, at most `concurrency` at a time."""
        pending = iter(list(calls))

        async def worker() -> None:
            for call in pending:
                await call()

        await asyncio.gather(*(worker() for _ in range(concurrency or self.concurrency)))

    def saw(self, body: Any) -> None:
        """Keep each member's newest known `available` (answers come back in any order)."""
        if isinstance(body, dict) and isinstance(body.get("balance"), dict) and "member_id" in body:
            seen = self.available.get(body["member_id"])
            if seen is None or body["position"] > seen[0]:
                self.available[body["member_id"]] = (body["position"], body["balance"]["available"])

    # -- the steps ------------------------------------------------------------------------------

    async def run(self) -> Report:
        started = time.monotonic()
        self.report.first_position = await self.position()
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("channels", self.channels),
            ("campaign", self.campaign),
            ("members", self.members),
            ("purchases", lambda: self.purchases(self.plan.purchases, "purchase")),
            ("duplicates", self.duplicates),
            ("refunds", self.refunds),
            ("redemptions", self.redemptions),
            ("merges", self.merges),
        ]
        for name, step in steps:
            began = time.monotonic()
            await step()
            self.report.steps[name] = round(time.monotonic() - began, 2)
            if name == "channels" and self.announce is not None and self.report.console_key:
                self.announce(self.report.console_key)
        self.report.last_position = await self.position()
        self.report.seconds = time.monotonic() - started
        return self.report

    async def position(self) -> int:
        """The log's head, as the service reports it (its readiness check reads it)."""
        response = await self.send("GET", "/health/ready")
        body = response.json()
        return int(body.get("checks", {}).get("database", {}).get("position", 0))

    async def channels(self) -> None:
        probe = await self.send("GET", "/v1/channels", headers={"Authorization": f"Bearer {self.admin_key}"})
        if probe.status_code != 200:
            raise DemoFailed(f"the admin key was refused ({probe.status_code}): give a key with scope admin")
        wanted = [(c.id, c.name, c.kind) for c in self.plan.channels] + [CONSOLE_CHANNEL]
        for channel_id, name, kind in wanted:
            status, body = await self.post(
                "/v1/channels",
                {"id": channel_id, "name": name, "kind": kind},
                key=self.admin_key,
                idem=self.idem("channel", channel_id),
            )
            exists = status == 409 and str(body.get("type", "")).endswith("channel_exists")
            if status != 201 and not exists:
                raise DemoFailed(f"creating channel {channel_id} failed: {status} {body}")
            scopes = CONSOLE_SCOPES if channel_id == CONSOLE_CHANNEL[0] else CHANNEL_SCOPES
            status, body = await self.post(
                "/v1/api-keys",
                {"channel": channel_id, "scopes": scopes, "name": f"demo {channel_id}"},
                key=self.admin_key,
                idem=self.idem("key", channel_id),
            )
            if status != 201:
                raise DemoFailed(f"creating a key for channel {channel_id} failed: {status} {body}")
            if channel_id == CONSOLE_CHANNEL[0]:
                self.report.console_key = body["key"]
            else:
                self.keys[channel_id] = body["key"]
                self.report.channels += 1

    async def campaign(self) -> None:
        """An A/B campaign over the last 60 days and the next 30, where the service has campaigns."""
        body = {
            "name": "Double points season",
            "starts_at": (self.plan.anchor - timedelta(days=60)).isoformat(),
            "ends_at": (self.plan.anchor + timedelta(days=30)).isoformat(),
            "channels": [],
            "variants": [
                {"name": "double", "weight": 1, "multiplier": "2"},
                {"name": "bonus-50", "weight": 1, "bonus_points": 50},
            ],
        }
        status, answer = await self.post(
            "/v1/campaigns", body, key=self.admin_key, idem=self.idem("campaign")
        )
        if status == 201:
            self.report.campaign = answer.get("campaign_id")
        elif status not in (404, 405):
            self.report.refuse("campaign", status, answer)

    async def members(self) -> None:
        async def enrol(index: int) -> None:
            person = self.plan.members[index]
            status, body = await self.post(
                "/v1/members",
                {"identities": [{"kind": person.identity.kind, "value": person.identity.value}]},
                key=self.keys[person.home],
                idem=self.idem("enrol", index),
            )
            if status != 201:
                self.report.refuse("enrol", status, body)
                return
            self.member_ids[index] = body["member_id"]
            self.report.members += 1
            if person.second is None:
                return
            channel, identity = person.second
            status, body = await self.post(
                f"/v1/members/{body['member_id']}/identities",
                {"kind": identity.kind, "value": identity.value},
                key=self.keys[channel],
                idem=self.idem("link", index),
            )
            if status == 201:
                self.report.identities_linked += 1
            else:
                self.report.refuse("link identity", status, body)

        await self.many(lambda i=i: enrol(i) for i in range(len(self.plan.members)))

    async def batches(self, what: str, items: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[int, Any]]:
        """Batches of (channel, item), one channel per batch; every item's (status, body) in order."""
        by_channel: dict[str, list[int]] = {}
        for i, (channel, _) in enumerate(items):
            by_channel.setdefault(channel, []).append(i)
        results: list[tuple[int, Any]] = [(0, None)] * len(items)
        chunks = [
            (channel, indexes[k : k + BATCH])
            for channel, indexes in by_channel.items()
            for k in range(0, len(indexes), BATCH)
        ]

        async def send(channel: str, indexes: list[int]) -> None:
            status, body = await self.post(
                "/v1/batch",
                {"items": [items[i][1] for i in indexes]},
                key=self.keys[channel],
                idem=self.idem(what, "batch", indexes[0]),
            )
            if status != 200:
                raise DemoFailed(f"a batch of {what}s was refused: {status} {body}")
            for i, result in zip(indexes, body["results"], strict=True):
                results[i] = (result["status"], result["body"])
                self.saw(result["body"])

        # Two at a time: a batch already keeps the service's cores busy.
        await self.many((lambda c=c, ix=ix: send(c, ix) for c, ix in chunks), concurrency=2)
        return results

    async def purchases(self, purchases: list[Purchase], what: str) -> None:
        items = [
            (
                p.channel,
                {
                    "op": "earn",
                    "member_id": self.member_ids[p.member],
                    "idempotency_key": self.idem("earn", p.order_ref),
                    "body": {
                        "order_ref": p.order_ref,
                        "amount": str(p.amount),
                        "currency": CURRENCY,
                        "occurred_at": p.occurred_at.isoformat(),
                    },
                },
            )
            for p in purchases
            if p.member in self.member_ids
        ]
        for status, body in await self.batches(what, items):
            if status == 201:
                self.report.purchases += 1
                self.report.points_earned += body["points"]
            else:
                self.report.refuse(what, status, body)

    async def duplicates(self) -> None:
        """Enrol each duplicate at its channel and give it its purchases (merged at the end)."""
        self.duplicate_ids: dict[int, str] = {}

        async def enrol(number: int) -> None:
            duplicate = self.plan.duplicates[number]
            identity = duplicate.identity
            status, body = await self.post(
                "/v1/members",
                {"identities": [{"kind": identity.kind, "value": identity.value}]},
                key=self.keys[duplicate.channel],
                idem=self.idem("duplicate", number),
            )
            if status == 201:
                self.duplicate_ids[number] = body["member_id"]
                self.report.members += 1
            else:
                self.report.refuse("enrol duplicate", status, body)

        await self.many(lambda n=n: enrol(n) for n in range(len(self.plan.duplicates)))
        # Their purchases go to the duplicate, not to the member they duplicate.
        saved = dict(self.member_ids)
        try:
            for number, member_id in self.duplicate_ids.items():
                self.member_ids = {**saved, self.plan.duplicates[number].of: member_id}
                await self.purchases(self.plan.duplicates[number].purchases, "duplicate purchase")
        finally:
            self.member_ids = saved

    async def refunds(self) -> None:
        refunds = [r for r in self.plan.refunds if r.member in self.member_ids]
        items = [
            (
                r.channel,
                {
                    "op": "reversal",
                    "member_id": self.member_ids[r.member],
                    "idempotency_key": self.idem("refund", r.order_ref),
                    "body": {"order_ref": r.order_ref, "amount": str(r.amount)},
                },
            )
            for r in refunds
        ]
        for status, body in await self.batches("refund", items):
            if status == 201:
                self.report.refunds += 1
                self.report.points_refunded += -body["points"]
            else:
                self.report.refuse("refund", status, body)

    async def redemptions(self) -> None:
        """Members who redeem spend a share of what they have, in hundreds of points, at home."""
        items = []
        for person in self.plan.members:
            member_id = self.member_ids.get(person.index)
            if member_id is None or not person.redeem_share or member_id not in self.available:
                continue
            points = int(self.available[member_id][1] * person.redeem_share) // 100 * 100
            if points >= 100:
                items.append(
                    (
                        person.home,
                        {
                            "op": "redeem",
                            "member_id": member_id,
                            "idempotency_key": self.idem("redeem", person.index),
                            "body": {"points": points, "reward_ref": f"voucher-{points // 100}"},
                        },
                    )
                )
        for status, body in await self.batches("redemption", items):
            if status == 201:
                self.report.redemptions += 1
                self.report.points_redeemed += body["points"]
            else:
                self.report.refuse("redemption", status, body)

    async def merges(self) -> None:
        for number, source in self.duplicate_ids.items():
            target = self.member_ids.get(self.plan.duplicates[number].of)
            if target is None:
                continue
            status, body = await self.post(
                f"/v1/members/{target}/merge",
                {"source_member_id": source},
                key=self.admin_key,
                idem=self.idem("merge", number),
            )
            if status == 201:
                self.report.merges += 1
            else:
                self.report.refuse("merge", status, body)
