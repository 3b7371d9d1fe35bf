"""`loyalty bench`: a load generator for a running service, in the manner of pgbench and `nats bench`.

Setup (through the API): a bench channel and an API key for it (with the admin key, unless `--key`
is given), then `--members` members enrolled. Then `--concurrency` connections, each a worker that
loops for `--warmup` + `--duration` seconds: pick a random member, pick a command kind by the
`--mix` weights, send it with a fresh Idempotency-Key (and order_ref), wait for the answer. Only
answers that complete inside the measured window (after the warm-up) are counted. An expected
refusal (a redeem answered 409 `insufficient_points`) is counted apart; any other non-2xx answer,
a network error or a timeout is an error.

The client is deliberately small, since it shares the machine's cores with the server: HTTP/1.1
keep-alive over an asyncio Protocol, the response parsed by httptools (C; it comes with
`uvicorn[standard]`), on uvloop when present; requests are pre-formatted bytes. `--processes`
splits the connections over several generator processes.

Latency is the time from writing the request to parsing the whole response, measured in the
generator: for a command it spans authentication, decision, the durable commit and the response.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import sys
import time
import uuid
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from devtools.bench.followers import FollowerWatch
from devtools.bench.followers import render as render_followers

DEFAULT_MIX = "earn=90,redeem=10"
BENCH_SCOPES = ["read", "earn", "redeem", "members"]


# --- command kinds ------------------------------------------------------------------------------
#
# A kind turns (random source, member id, unique token) into a request, and names the answers
# that are an expected refusal rather than an error. Adding a kind (a hold, a balance read) is
# one entry in KINDS.


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


# --- a small HTTP/1.1 keep-alive client -------------------------------------------------------------


class HttpError(Exception):
    """The connection failed, closed, or the response could not be parsed."""


class Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpResponseParser(self)
        self._parse_error = httptools.HttpParserError
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body: list[bytes] = []
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(cls, host, port)
        return protocol

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        with contextlib.suppress(OSError, AttributeError):
            import socket

            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except self._parse_error as exc:
            self._fail(HttpError(f"bad response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpError(f"connection closed{f': {exc!r}' if exc else ''}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        body = b"".join(self._body)
        self._body.clear()
        if waiter is not None and not waiter.done():
            waiter.set_result((self._parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, raw: bytes, timeout: float | None = None) -> asyncio.Future[tuple[int, bytes]]:
        """Write one pre-formatted request; a future of the response's status and body.

        On timeout the future fails with TimeoutError and the connection is closed (a late
        answer must not be taken for the next request's). A timer handle, not `wait_for`,
        which would wrap every request in a task.
        """
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        if self.closed or self._transport is None:
            waiter.set_exception(HttpError("connection closed"))
            return waiter
        self._waiter = waiter
        self._transport.write(raw)
        if timeout is not None:
            timer = loop.call_later(timeout, self._timed_out, waiter)
            waiter.add_done_callback(lambda _: timer.cancel())
        return waiter

    def _timed_out(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
            self.close()

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


def request_bytes(
    method: str,
    host: str,
    path: str,
    *,
    auth: str | None = None,
    idempotency_key: str | None = None,
    body: bytes = b"",
) -> bytes:
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    if auth:
        head.append(f"Authorization: Bearer {auth}")
    if idempotency_key:
        head.append(f"Idempotency-Key: {idempotency_key}")
    if method != "GET":
        head.append("Content-Type: application/json")
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# --- setup --------------------------------------------------------------------------------------


@dataclass
class Target:
    host: str
    port: int

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"


def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise SystemExit(f"--url must be http://host:port, got {url!r}")
    return Target(parts.hostname, parts.port or 80)


async def _call(
    conn: Connection,
    target: Target,
    method: str,
    path: str,
    key: str,
    body: Any = None,
    *,
    idem: str | None = None,
) -> tuple[int, Any]:
    raw = request_bytes(
        method,
        target.authority,
        path,
        auth=key,
        idempotency_key=idem,
        body=json.dumps(body).encode() if body is not None else b"",
    )
    status, payload = await conn.send(raw, 60.0)
    try:
        return status, json.loads(payload) if payload else None
    except ValueError:
        return status, payload.decode(errors="replace")


async def setup(
    target: Target, *, admin_key: str | None, key: str | None, members: int, concurrency: int, run_id: str
) -> tuple[str, list[str], float]:
    """The bench key (made with the admin key unless given) and `members` new members' ids."""
    started = time.perf_counter()
    try:
        conn = await Connection.open(target.host, target.port)
    except OSError as exc:
        raise SystemExit(f"cannot connect to {target.authority}: {exc}") from None
    try:
        if key is None:
            if not admin_key:
                raise SystemExit("give --admin-key (or LOYALTY_ADMIN_KEY) to create a bench key, or --key")
            channel = f"bench-{run_id}"
            status, body = await _call(
                conn,
                target,
                "POST",
                "/v1/channels",
                admin_key,
                {"id": channel, "name": f"loyalty bench {run_id}", "kind": "internal"},
                idem=f"bench-channel-{run_id}",
            )
            if status not in (200, 201):
                raise SystemExit(f"creating the bench channel failed: {status} {body}")
            status, body = await _call(
                conn,
                target,
                "POST",
                "/v1/api-keys",
                admin_key,
                {"channel": channel, "scopes": BENCH_SCOPES, "name": f"bench {run_id}"},
                idem=f"bench-key-{run_id}",
            )
            if status != 201:
                raise SystemExit(f"creating the bench API key failed: {status} {body}")
            key = body["key"]
    finally:
        conn.close()
    assert key is not None
    ids: list[str] = []
    counter = iter(range(members))

    async def enrol_worker() -> None:
        c = await Connection.open(target.host, target.port)
        try:
            for i in counter:
                status, body = await _call(
                    c,
                    target,
                    "POST",
                    "/v1/members",
                    key,
                    {"identities": [{"kind": "app_user", "value": f"bench-{run_id}-{i}"}]},
                    idem=f"bench-enrol-{run_id}-{i}",
                )
                if status != 201:
                    raise SystemExit(f"enrolling a member failed: {status} {body}")
                ids.append(body["member_id"])
        finally:
            c.close()

    await asyncio.gather(*(enrol_worker() for _ in range(max(1, min(concurrency, members, 32)))))
    return key, ids, time.perf_counter() - started


# --- the measured loop --------------------------------------------------------------------------


@dataclass
class Plan:
    """What one generator process runs (picklable: it crosses to --processes children)."""

    host: str
    port: int
    key: str
    members: list[str]
    mix: dict[str, int]
    connections: int
    seed: int
    run_id: str
    process: int
    warmup: float
    duration: float
    timeout: float


@dataclass
class Result:
    """What one generator process measured; merged across processes."""

    latencies: dict[str, array] = field(default_factory=dict)  # kind -> ms of counted answers
    ok: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "kind status" -> n
    cpu_seconds: float = 0.0  # the generator's own CPU time in the measured window
    window: float = 0.0

    def merge(self, other: Result) -> None:
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, array("d")).extend(values)
        self.ok.update(other.ok)
        self.rejected.update(other.rejected)
        self.errors.update(other.errors)
        self.cpu_seconds += other.cpu_seconds
        self.window = max(self.window, other.window)


async def _worker(plan: Plan, index: int, t_measure: float, t_end: float, result: Result) -> None:
    rng = random.Random(f"{plan.seed}-{plan.process}-{index}")  # noqa: S311 (load, not secrets)
    names = list(plan.mix)
    weights = [plan.mix[n] for n in names]
    cum = [sum(weights[: i + 1]) for i in range(len(weights))]
    total = cum[-1]
    kinds = [KINDS[n] for n in names]
    members = plan.members
    authority = f"{plan.host}:{plan.port}"
    prefix = f"b{plan.run_id}-{plan.process}-{index}-"
    head_auth = f"Host: {authority}\r\nAuthorization: Bearer {plan.key}\r\n"
    lat = {n: result.latencies.setdefault(n, array("d")) for n in names}
    perf = time.perf_counter
    monotonic = time.monotonic
    conn: Connection | None = None
    seq = 0
    try:
        while monotonic() < t_end:
            if conn is None or conn.closed:
                try:
                    conn = await asyncio.wait_for(Connection.open(plan.host, plan.port), plan.timeout)
                except (TimeoutError, OSError) as exc:
                    if monotonic() >= t_measure:
                        result.errors[f"connect {type(exc).__name__}"] += 1
                    conn = None
                    await asyncio.sleep(0.05)
                    continue
            kind = kinds[_pick(rng.random() * total, cum)]
            seq += 1
            token = f"{prefix}{seq}"
            path, body = kind.build(rng, members[rng.randrange(len(members))], token)
            if kind.method == "GET":
                raw = f"GET {path} HTTP/1.1\r\n{head_auth}\r\n".encode()
            else:
                raw = (
                    f"{kind.method} {path} HTTP/1.1\r\n{head_auth}Idempotency-Key: {token}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                ).encode() + body
            started = perf()
            try:
                status, payload = await conn.send(raw, plan.timeout)
            except TimeoutError:
                outcome = f"{kind.name} timeout"
                status = 0
            except HttpError:
                outcome = f"{kind.name} connection error"
                status = 0
            else:
                outcome = ""
            done = perf()
            now = monotonic()
            if now < t_measure or now > t_end:
                continue  # warm-up, or finished after the window closed
            if status == 0:
                result.errors[outcome] += 1
            elif 200 <= status < 300:
                result.ok[kind.name] += 1
                lat[kind.name].append((done - started) * 1000.0)
            elif any(status == s and marker in payload for s, marker in kind.expected):
                result.rejected[kind.name] += 1
                lat[kind.name].append((done - started) * 1000.0)
            else:
                result.errors[f"{kind.name} {status}"] += 1
    finally:
        if conn is not None:
            conn.close()


def _pick(x: float, cum: list[int]) -> int:
    for i, c in enumerate(cum):
        if x < c:
            return i
    return len(cum) - 1


async def _run_plan(plan: Plan, start_at: float) -> Result:
    """Run the workers from `start_at` (time.monotonic, shared by all processes on Linux)."""
    result = Result()
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    t_measure = start_at + plan.warmup
    t_end = t_measure + plan.duration
    tasks = [asyncio.create_task(_worker(plan, i, t_measure, t_end, result)) for i in range(plan.connections)]
    # The generator's own CPU in the measured window.
    await asyncio.sleep(max(0.0, t_measure - time.monotonic()))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, t_end - time.monotonic()))
    result.cpu_seconds = time.process_time() - cpu0
    result.window = plan.duration
    # Every worker stops by itself at t_end (its last request is bounded by the timeout).
    await asyncio.wait(tasks, timeout=plan.timeout + 5)
    for t in tasks:
        if not t.done():
            t.cancel()
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return result


def _event_loop_runner() -> Callable[[Any], Any]:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run  # type: ignore[no-any-return]


def _child(plan: Plan, pipe: Any) -> None:
    """A --processes child: say ready, wait for the start time, run, send the result back."""
    try:
        pipe.send("ready")
        start_at = pipe.recv()
        pipe.send(_event_loop_runner()(_run_plan(plan, start_at)))
    except BaseException as exc:  # the parent reports it
        pipe.send(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
    finally:
        pipe.close()


def run_load(plan: Plan, processes: int) -> Result:
    if processes <= 1:
        return _event_loop_runner()(_run_plan(plan, time.monotonic() + 0.1))
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    share = [
        plan.connections // processes + (1 if i < plan.connections % processes else 0)
        for i in range(processes)
    ]
    children = []
    for i, n in enumerate(share):
        if n == 0:
            continue
        parent_end, child_end = ctx.Pipe()
        sub = Plan(**{**plan.__dict__, "connections": n, "process": i})
        p = ctx.Process(target=_child, args=(sub, child_end), daemon=True)
        p.start()
        children.append((p, parent_end))
    for _, pipe in children:
        if pipe.recv() != "ready":
            raise SystemExit("a generator process failed to start")
    start_at = time.monotonic() + 0.2
    for _, pipe in children:
        pipe.send(start_at)
    total = Result()
    deadline = start_at + plan.warmup + plan.duration + plan.timeout + 30
    for p, pipe in children:
        if not pipe.poll(max(0.0, deadline - time.monotonic())):
            p.kill()
            raise SystemExit("a generator process did not finish in time")
        got = pipe.recv()
        p.join()
        if isinstance(got, Exception):
            raise got
        total.merge(got)
    return total


# --- report -------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 < q <= 100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(values: Any) -> dict[str, float | int]:
    s = sorted(values)
    if not s:
        return {"count": 0}
    return {
        "count": len(s),
        "mean": round(sum(s) / len(s), 3),
        "p50": round(percentile(s, 50), 3),
        "p95": round(percentile(s, 95), 3),
        "p99": round(percentile(s, 99), 3),
        "max": round(s[-1], 3),
    }


def summarise(config: dict[str, Any], result: Result) -> dict[str, Any]:
    kinds = list(config["mix"])
    all_lat: list[float] = []
    per_kind = {}
    for k in kinds:
        values = result.latencies.get(k, array("d"))
        all_lat.extend(values)
        per_kind[k] = {
            "ok": result.ok[k],
            "rejected": result.rejected[k],
            "errors": sum(n for key, n in result.errors.items() if key.split(" ", 1)[0] == k),
            "throughput": round((result.ok[k] + result.rejected[k]) / result.window, 1)
            if result.window
            else 0.0,
            "latency_ms": latency_summary(values),
        }
    completed = sum(result.ok.values()) + sum(result.rejected.values())
    errors = sum(result.errors.values())
    return {
        "config": config,
        "commands": completed,
        "ok": sum(result.ok.values()),
        "rejected": sum(result.rejected.values()),
        "errors": errors,
        "errors_by_status": dict(sorted(result.errors.items())),
        "duration_s": result.window,
        "throughput": round(completed / result.window, 1) if result.window else 0.0,
        "latency_ms": latency_summary(all_lat),
        "kinds": per_kind,
        "generator_cpu_s": round(result.cpu_seconds, 2),
        "generator_cpu_cores": round(result.cpu_seconds / result.window, 2) if result.window else 0.0,
    }


def render_text(s: dict[str, Any]) -> str:
    c = s["config"]
    mix = ", ".join(f"{k}={w}" for k, w in c["mix"].items())
    lines = [
        f"loyalty bench {c['url']}",
        f"started: {c['started_at']}   host: {c['host']}   python: {c['python']}",
        f"mix: {mix}",
        f"members: {c['members']} (set up in {c['setup_s']:.1f} s)   seed: {c['seed']}",
        f"concurrency: {c['concurrency']} connections in {c['processes']} process(es)",
        f"duration: {c['duration']:g} s measured, after {c['warmup']:g} s of warm-up",
        f"commands: {s['commands']} (ok {s['ok']}, expected refusals {s['rejected']})"
        f"   errors: {s['errors']}",
        f"throughput: {s['throughput']:.1f} commands/s",
        f"generator CPU: {s['generator_cpu_cores']:.2f} cores ({s['generator_cpu_s']:.1f} s in the window)",
        "",
        f"{'latency (ms)':<14}{'count':>9}{'cmd/s':>10}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}"
        f"{'refused':>9}{'errors':>8}",
    ]

    def row(name: str, lat: dict[str, Any], rate: float, refused: int, errors: int) -> str:
        if not lat.get("count"):
            return f"{name:<14}{0:>9}{rate:>10.1f}{'-':>9}{'-':>9}{'-':>9}{'-':>9}{refused:>9}{errors:>8}"
        return (
            f"{name:<14}{lat['count']:>9}{rate:>10.1f}{lat['p50']:>9.2f}{lat['p95']:>9.2f}"
            f"{lat['p99']:>9.2f}{lat['max']:>9.2f}{refused:>9}{errors:>8}"
        )

    lines.append(row("all", s["latency_ms"], s["throughput"], s["rejected"], s["errors"]))
    for k, v in s["kinds"].items():
        lines.append(row(k, v["latency_ms"], v["throughput"], v["rejected"], v["errors"]))
    lines.append("")
    if s["errors_by_status"]:
        lines.append("errors: " + ", ".join(f"{k}: {n}" for k, n in s["errors_by_status"].items()))
    else:
        lines.append("errors: none")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 24 * 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 86400 seconds")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = "Load-test a running service with earn/redeem commands; report throughput and latency."
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the service (default %(default)s)")
    p.add_argument(
        "--admin-key",
        default=None,
        help="admin key to create the bench channel and key (default: $LOYALTY_ADMIN_KEY)",
    )
    p.add_argument(
        "--key",
        default=None,
        help="use this API key (scopes read, earn, redeem, members) instead of creating one",
    )
    p.add_argument(
        "--members", type=_positive_int, default=1000, help="members enrolled in setup (%(default)s)"
    )
    p.add_argument(
        "--concurrency",
        "-c",
        type=_positive_int,
        default=64,
        help="connections, each one request at a time (%(default)s)",
    )
    p.add_argument("--duration", "-T", type=_seconds, default=30.0, help="measured seconds (%(default)s)")
    p.add_argument("--warmup", type=_seconds, default=5.0, help="seconds run before measuring (%(default)s)")
    p.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix(DEFAULT_MIX),
        help=f"kind=weight,... of {', '.join(KINDS)} (default {DEFAULT_MIX})",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument(
        "--processes",
        "-j",
        type=_positive_int,
        default=1,
        help="generator processes sharing the connections (%(default)s)",
    )
    p.add_argument(
        "--timeout", type=_seconds, default=30.0, help="per-request timeout, seconds (%(default)s)"
    )
    p.add_argument(
        "--followers-url",
        default=None,
        help="where the relay and the projections report their delays on /metrics (default: the"
        " service's host at port + 1, the `loyalty follow` process of `serve`; give --url itself"
        " with LOYALTY_FOLLOWERS=inline)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


def run(args: argparse.Namespace) -> int:
    target = parse_url(args.url)
    if args.duration <= 0:
        raise SystemExit("--duration must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    run_id = uuid.uuid4().hex[:10]
    admin_key = args.admin_key or os.environ.get("LOYALTY_ADMIN_KEY")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    key, member_ids, setup_s = _event_loop_runner()(
        setup(
            target,
            admin_key=admin_key,
            key=args.key,
            members=args.members,
            concurrency=args.concurrency,
            run_id=run_id,
        )
    )
    plan = Plan(
        host=target.host,
        port=target.port,
        key=key,
        members=member_ids,
        mix=args.mix,
        connections=args.concurrency,
        seed=seed,
        run_id=run_id,
        process=0,
        warmup=args.warmup,
        duration=args.duration,
        timeout=args.timeout,
    )
    followers = FollowerWatch(
        (args.followers_url or f"http://{target.host}:{target.port + 1}").rstrip("/") + "/metrics",
        start_in=0.1 + args.warmup,
        duration=args.duration,
    )
    followers.start()
    result = run_load(plan, args.processes)
    config = {
        "url": args.url,
        "mix": args.mix,
        "members": len(member_ids),
        "concurrency": args.concurrency,
        "processes": args.processes,
        "duration": args.duration,
        "warmup": args.warmup,
        "seed": seed,
        "run_id": run_id,
        "setup_s": round(setup_s, 2),
        "started_at": started_at,
        "host": platform.node(),
        "python": platform.python_version(),
        "timeout": args.timeout,
    }
    summary = summarise(config, result)
    summary["followers"] = followers.report()
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join([render_text(summary), "", *render_followers(summary["followers"])]))
    sys.stdout.flush()
    return 1 if summary["errors"] else 0
