"""The measured loop: `--concurrency` workers, each one connection sending commands of the mix
one at a time for the warm-up and the measured window, in one or `--processes` generator processes.

Only answers that complete inside the measured window (after the warm-up) are counted. An expected
refusal is counted apart; any other non-2xx answer, a network error or a timeout is an error.
Latency is the time from writing the request to parsing the whole response.

A request is counted as the kind it was: a `capture` sent when its worker had no hold left places
a hold instead, counted as a `hold` (and in `substituted` under `capture`); a `refund` without an
order earns instead, likewise. A `batch` request is one answer; the earns it carried are counted
apart (`committed`, and their refusals as errors "batch item <status> <code>").
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from devtools.bench.client import Connection, HttpError
from devtools.bench.workload import DEFAULT_BATCH_SIZE, WorkerState, kinds_for


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
    batch_size: int = DEFAULT_BATCH_SIZE


@dataclass
class Result:
    """What one generator process measured; merged across processes."""

    latencies: dict[str, array[float]] = field(default_factory=dict)  # kind -> ms of counted answers
    ok: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # "kind status" -> n
    committed: Counter[str] = field(default_factory=Counter)  # kind -> commands its requests carried
    substituted: Counter[str] = field(default_factory=Counter)  # kind -> requests sent as its `instead`
    cpu_seconds: float = 0.0  # the generator's own CPU time in the measured window
    window: float = 0.0

    def merge(self, other: Result) -> None:
        for kind, values in other.latencies.items():
            self.latencies.setdefault(kind, array("d")).extend(values)
        self.ok.update(other.ok)
        self.rejected.update(other.rejected)
        self.errors.update(other.errors)
        self.committed.update(other.committed)
        self.substituted.update(other.substituted)
        self.cpu_seconds += other.cpu_seconds
        self.window = max(self.window, other.window)


async def _worker(plan: Plan, index: int, t_measure: float, t_end: float, result: Result) -> None:
    rng = random.Random(f"{plan.seed}-{plan.process}-{index}")  # noqa: S311 (load, not secrets)
    names = list(plan.mix)
    weights = [plan.mix[n] for n in names]
    cum = [sum(weights[: i + 1]) for i in range(len(weights))]
    total = cum[-1]
    sendable = kinds_for(plan.mix)
    kinds = [sendable[n] for n in names]
    members = plan.members
    state = WorkerState(members=members, batch_size=plan.batch_size)
    authority = f"{plan.host}:{plan.port}"
    prefix = f"b{plan.run_id}-{plan.process}-{index}-"
    head_auth = f"Host: {authority}\r\nAuthorization: Bearer {plan.key}\r\n"
    lat = {n: result.latencies.setdefault(n, array("d")) for n in sendable}
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
            instead_of = None
            if kind.ready is not None and not kind.ready(state):
                instead_of, kind = kind.name, sendable[kind.instead]  # type: ignore[index]
            seq += 1
            token = f"{prefix}{seq}"
            member = members[rng.randrange(len(members))]
            path, body = kind.build(rng, member, token, state)
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
            carried = None
            # In the warm-up too: what a kind remembers must not depend on when it was answered.
            if kind.after is not None and 200 <= status < 300:
                try:
                    carried = kind.after(state, member, token, payload)
                except ValueError:  # a 2xx answer without what it must say (msgspec's errors too)
                    outcome, status = f"{kind.name} unreadable answer", 0
            now = monotonic()
            if now < t_measure or now > t_end:
                continue  # warm-up, or finished after the window closed
            if instead_of is not None:
                result.substituted[instead_of] += 1
            if status == 0:
                result.errors[outcome] += 1
            elif 200 <= status < 300:
                result.ok[kind.name] += 1
                lat[kind.name].append((done - started) * 1000.0)
                if carried is not None:
                    result.committed[kind.name] += carried.pop("committed", 0)
                    for what, n in carried.items():
                        result.errors[f"{kind.name} item {what}"] += n
            elif any(status == s and marker in payload for s, marker in kind.expected):
                result.rejected[kind.name] += 1
                lat[kind.name].append((done - started) * 1000.0)
            else:
                result.errors[f"{kind.name} {status}{_problem_code(payload)}"] += 1
    finally:
        if conn is not None:
            conn.close()


def _problem_code(payload: bytes) -> str:
    """' <code>' of a problem answer (its type's last segment), to tell errors apart; else ''."""
    try:
        kind = json.loads(payload).get("type")
    except (ValueError, AttributeError):
        return ""
    return f" {kind.rsplit('/', 1)[-1]}" if isinstance(kind, str) else ""


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


def event_loop_runner() -> Callable[[Any], Any]:
    """asyncio.run, or uvloop.run when uvloop is installed."""
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
        pipe.send(event_loop_runner()(_run_plan(plan, start_at)))
    except BaseException as exc:  # the parent reports it
        pipe.send(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
    finally:
        pipe.close()


def run_load(plan: Plan, processes: int) -> Result:
    if processes <= 1:
        return event_loop_runner()(_run_plan(plan, time.monotonic() + 0.1))
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
