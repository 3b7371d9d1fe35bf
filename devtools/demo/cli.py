"""`loyalty demo`: arguments, the run, and what it prints."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import date

import httpx

from .plan import plan
from .seed import DemoFailed, Report, Seeder


def _members(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000000")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Seed a realistic program (channels of every kind, members known across channels, a year of"
        " purchases with seasons, refunds, redemptions, merges) into a running service through its"
        " HTTP API. The same --seed gives the same program; run again the same day, it writes nothing new."
    )
    p.add_argument("--url", default=None, help="the service (default http://LOYALTY_HOST:LOYALTY_PORT)")
    p.add_argument("--admin-key", default=None, help="a key with every scope (default: $LOYALTY_ADMIN_KEY)")
    p.add_argument("--members", type=_members, default=2000, help="members to enrol (%(default)s)")
    p.add_argument("--seed", type=int, default=1, help="random seed (%(default)s)")
    p.add_argument("--concurrency", type=_members, default=16, help="requests in flight (%(default)s)")
    p.add_argument(
        "--day",
        type=date.fromisoformat,
        default=None,
        help="the day it runs as, YYYY-MM-DD (default: today, UTC)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")


async def seed(
    url: str,
    admin_key: str,
    *,
    members: int,
    seed: int,
    concurrency: int,
    day: date | None,
    announce: Callable[[str], None] | None = None,
) -> Report:
    """Seed the plan of `seed` and `members` into the service at `url`; what it accepted."""
    # Idle connections are dropped before the service would close them (its keep-alive is 5 s).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )
    program = plan(seed, members, today=day)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        return await Seeder(client, admin_key, program, concurrency=concurrency, announce=announce).run()


def render(report: Report, url: str) -> str:
    lines = [
        f"seeded in {report.seconds:.1f} s"
        f" (log positions {report.first_position} -> {report.last_position}):",
        f"  channels          {report.channels:>9,}",
        f"  members           {report.members:>9,}  ({report.merges:,} merged into another)",
        f"  identities linked {report.identities_linked:>9,}  (known to a second channel)",
        f"  purchases         {report.purchases:>9,}  {report.points_earned:>12,} points earned",
        f"  refunds           {report.refunds:>9,}  {report.points_refunded:>12,} points taken back",
        f"  redemptions       {report.redemptions:>9,}  {report.points_redeemed:>12,} points redeemed",
        f"  campaign          {report.campaign or 'none (the service has no campaigns)'}",
        "  steps             "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.steps.items()),
    ]
    for what, count in sorted(report.refused.items()):
        lines.append(f"  refused: {what} x{count}")
    lines += [
        f"Open {url.rstrip('/')}/console and sign in with this key (scopes read, analytics):",
        str(report.console_key),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace, *, host: str, port: int) -> int:
    url = args.url or f"http://{host}:{port}"
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request: thousands
    admin_key = args.admin_key or os.environ.get("LOYALTY_ADMIN_KEY")
    if not admin_key:
        raise SystemExit(
            "loyalty demo: give --admin-key (or set LOYALTY_ADMIN_KEY): `loyalty keys create` makes one"
        )

    def announce(key: str) -> None:
        # Early, on stderr: the console can be watched while the program is seeded.
        print(
            f"seeding; watch it arrive: open {url.rstrip('/')}/console, sign in with {key}", file=sys.stderr
        )

    try:
        report = asyncio.run(
            seed(
                url,
                admin_key,
                members=args.members,
                seed=args.seed,
                concurrency=args.concurrency,
                day=args.day,
                announce=None if args.json else announce,
            )
        )
    except DemoFailed as exc:
        raise SystemExit(f"loyalty demo: {exc}") from None
    except httpx.TransportError as exc:
        raise SystemExit(f"loyalty demo: cannot reach {url}: {exc}") from None
    print(json.dumps(asdict(report)) if args.json else render(report, url))
    return 0 if not report.refused else 1
