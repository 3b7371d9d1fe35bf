"""What `loyalty bench` sends: command kinds and the mix of them.

A kind turns (random source, member id, unique token) into a request, and names the answers that
are an expected refusal rather than an error. Adding a kind (a hold, a balance read) is one entry
in KINDS.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MIX = "earn=90,redeem=10"


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    build: Callable[[random.Random, str, str], tuple[str, bytes]]  # -> (path, body)
    # (status, a byte string the body must contain) pairs that count as expected refusals
    expected: tuple[tuple[int, bytes], ...] = ()
    idempotent_post: bool = True


def _earn(rng: random.Random, member: str, token: str) -> tuple[str, bytes]:
    amount = f"{rng.randint(1000, 50000) // 100}.{rng.randint(0, 99):02d}"
    body = b'{"order_ref":"%s","amount":"%s","currency":"CNY"}' % (token.encode(), amount.encode())
    return f"/v1/members/{member}/earn", body


def _redeem(rng: random.Random, member: str, token: str) -> tuple[str, bytes]:
    return f"/v1/members/{member}/redeem", b'{"points":%d}' % rng.randint(10, 200)


def _balance(rng: random.Random, member: str, token: str) -> tuple[str, bytes]:
    return f"/v1/members/{member}/balance", b""


KINDS: dict[str, Kind] = {
    "earn": Kind("earn", "POST", _earn),
    "redeem": Kind("redeem", "POST", _redeem, expected=((409, b"insufficient_points"),)),
    "balance": Kind("balance", "GET", _balance, idempotent_post=False),
}


def parse_mix(text: str) -> dict[str, int]:
    """'earn=90,redeem=10' -> {'earn': 90, 'redeem': 10}; weights are relative integers."""
    mix: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = name.strip()
        if name not in KINDS:
            raise argparse.ArgumentTypeError(f"unknown kind {name!r} (known: {', '.join(KINDS)})")
        try:
            w = int(weight) if sep else 1
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must be an integer") from None
        if w < 0:
            raise argparse.ArgumentTypeError(f"weight of {name!r} must not be negative")
        mix[name] = mix.get(name, 0) + w
    if not mix or sum(mix.values()) == 0:
        raise argparse.ArgumentTypeError("the mix needs at least one kind with a positive weight")
    return {k: w for k, w in mix.items() if w > 0}
