"""What `loyalty bench` sends: command kinds and the mix of them.

A kind turns (random source, member id, unique token, the worker's state) into a request, and
names the answers that are an expected refusal rather than an error. Most kinds ignore the state;
`capture` and `refund` act on what the worker's own earlier answers left in it (a hold id, an
order it earned), and send another kind first when there is nothing yet (`instead`). `batch` is
one `POST /v1/batch` of `batch_size` earns for distinct members; its answer says how many of
those commands were committed. Adding a kind is one entry in KINDS.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import msgspec

DEFAULT_MIX = "earn=90,redeem=10"
DEFAULT_BATCH_SIZE = 100
HOLD_TTL_SECONDS = 60
# A worker remembers at most this many holds and orders: enough for any sensible mix, and a hold
# or order forgotten (the oldest) is only one never captured or refunded, not an error.
REMEMBERED = 4096


@dataclass
class WorkerState:
    """One worker's memory of its own earlier answers, and what the batch kind draws from."""

    members: list[str]
    batch_size: int = DEFAULT_BATCH_SIZE
    holds: deque[str] = field(default_factory=lambda: deque(maxlen=REMEMBERED))
    # (member, order_ref) of the worker's earns, when refunds are in the mix
    orders: deque[tuple[str, str]] = field(default_factory=lambda: deque(maxlen=REMEMBERED))


# After a 2xx answer: keep what later requests need; for a request carrying several commands,
# return their outcomes ("committed" or "<status> <problem code>" -> n); else None.
After = Callable[[WorkerState, str, str, bytes], "Counter[str] | None"]


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    build: Callable[[random.Random, str, str, WorkerState], tuple[str, bytes]]  # -> (path, body)
    # (status, a byte string the body must contain) pairs that count as expected refusals
    expected: tuple[tuple[int, bytes], ...] = ()
    after: After | None = None
    # A kind that acts on remembered answers: whether there is one, and the kind sent otherwise.
    ready: Callable[[WorkerState], bool] | None = None
    instead: str | None = None
    several: bool = False  # a request carries several commands (counted by `after`)


def _amount(rng: random.Random) -> bytes:
    return b"%d.%02d" % (rng.randint(1000, 50000) // 100, rng.randint(0, 99))


def _earn(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    body = b'{"order_ref":"%s","amount":"%s","currency":"CNY"}' % (token.encode(), _amount(rng))
    return f"/v1/members/{member}/earn", body


def _remember_order(state: WorkerState, member: str, token: str, payload: bytes) -> None:
    state.orders.append((member, token))  # the earn's order_ref is its token


def _redeem(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    return f"/v1/members/{member}/redeem", b'{"points":%d}' % rng.randint(10, 200)


def _balance(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    return f"/v1/members/{member}/balance", b""


def _hold(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    return f"/v1/members/{member}/holds", b'{"points":%d,"ttl_seconds":%d}' % (
        rng.randint(1, 20),
        HOLD_TTL_SECONDS,
    )


class _HoldAnswer(msgspec.Struct):
    hold_id: str  # the only field read; msgspec skips the rest without building it


_decode_hold = msgspec.json.Decoder(_HoldAnswer).decode


def _remember_hold(state: WorkerState, member: str, token: str, payload: bytes) -> None:
    state.holds.append(_decode_hold(payload).hold_id)


def _capture(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    # The oldest first, as a checkout would; the whole hold (no points).
    return f"/v1/holds/{state.holds.popleft()}/capture", b"{}"


def _refund(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    # A whole refund of the worker's oldest remembered order, on the member who earned it.
    owner, order_ref = state.orders.popleft()
    return f"/v1/members/{owner}/reversals", b'{"order_ref":"%s"}' % order_ref.encode()


def _batch(rng: random.Random, member: str, token: str, state: WorkerState) -> tuple[str, bytes]:
    members = rng.sample(state.members, state.batch_size)  # distinct: they share group commits
    items = [
        b'{"op":"earn","member_id":"%s","idempotency_key":"%s-%d","body":'
        b'{"order_ref":"%s-%d","amount":"%s","currency":"CNY"}}'
        % (m.encode(), token.encode(), i, token.encode(), i, _amount(rng))
        for i, m in enumerate(members)
    ]
    return "/v1/batch", b'{"items":[' + b",".join(items) + b"]}"


class _BatchResult(msgspec.Struct):
    status: int
    body: msgspec.Raw  # read only when the item was refused
    replayed: bool = False


class _BatchAnswer(msgspec.Struct):
    results: list[_BatchResult]


_decode_batch = msgspec.json.Decoder(_BatchAnswer).decode


def _batch_outcomes(state: WorkerState, member: str, token: str, payload: bytes) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    for item in _decode_batch(payload).results:
        if 200 <= item.status < 300 and not item.replayed:
            outcomes["committed"] += 1
        elif item.replayed:
            outcomes["replayed"] += 1  # never with fresh keys: an error
        else:
            code = str(json.loads(bytes(item.body)).get("type", "")).rsplit("/", 1)[-1]
            outcomes[f"{item.status} {code}"] += 1
    return outcomes


KINDS: dict[str, Kind] = {
    "earn": Kind("earn", "POST", _earn),
    "redeem": Kind("redeem", "POST", _redeem, expected=((409, b"insufficient_points"),)),
    "balance": Kind("balance", "GET", _balance),
    # A hold spends nothing yet but needs the points available, as a redeem does.
    "hold": Kind("hold", "POST", _hold, expected=((409, b"insufficient_points"),), after=_remember_hold),
    # A remembered hold may have expired (ttl 60 s) by the time it is captured.
    "capture": Kind(
        "capture",
        "POST",
        _capture,
        # A refund may take back the very points a hold reserved: its capture then finds them
        # gone (409 insufficient_points), as a till would, and that is an answer, not an error.
        expected=((409, b"hold_not_active"), (409, b"insufficient_points")),
        ready=lambda state: bool(state.holds),
        instead="hold",
    ),
    # Each remembered order is refunded once, whole: over_refund or order_not_found is a bug.
    "refund": Kind("refund", "POST", _refund, ready=lambda state: bool(state.orders), instead="earn"),
    "batch": Kind("batch", "POST", _batch, after=_batch_outcomes, several=True),
}


def kinds_for(mix: dict[str, int]) -> dict[str, Kind]:
    """The kinds a worker running `mix` sends: the mix's own and those sent `instead`. An earn
    remembers its order only when refunds are in the mix, so earn/redeem runs pay nothing."""
    kinds = {name: KINDS[name] for name in mix}
    for name in mix:
        if (instead := KINDS[name].instead) is not None:
            kinds.setdefault(instead, KINDS[instead])
    if "refund" in mix:
        kinds["earn"] = replace(kinds["earn"], after=_remember_order)
    return kinds


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
