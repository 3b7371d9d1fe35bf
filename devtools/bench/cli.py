"""`loyalty bench`: a load generator for a running service, in the manner of pgbench and `nats bench`.

Setup (through the API): a bench channel and an API key for it (with the admin key, unless `--key`
is given), then `--members` members enrolled. Then `--concurrency` connections, each a worker that
loops for `--warmup` + `--duration` seconds: pick a random member, pick a command kind by the
`--mix` weights, send it with a fresh Idempotency-Key (and order_ref), wait for the answer. Only
answers that complete inside the measured window (after the warm-up) are counted. An expected
refusal (a redeem answered 409 `insufficient_points`) is counted apart; any other non-2xx answer,
a network error or a timeout is an error. `capture` and `refund` act on the holds and orders the
same worker placed and earned before; `batch` sends `--batch-size` earns in one request and is
reported both as requests/s and as commands committed/s (`commands_per_second`).

The client is deliberately small, since it shares the machine's cores with the server: HTTP/1.1
keep-alive over an asyncio Protocol, the response parsed by httptools (C; it comes with
`uvicorn[standard]`), on uvloop when present; requests are pre-formatted bytes. `--processes`
splits the connections over several generator processes.

Latency is the time from writing the request to parsing the whole response, measured in the
generator: for a command it spans authentication, decision, the durable commit and the response.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
import uuid

from devtools.bench.campaigns import end_campaigns, start_campaigns
from devtools.bench.cpu import CpuSplit
from devtools.bench.cpu import render as render_cpu
from devtools.bench.driver import Plan, event_loop_runner, run_load
from devtools.bench.followers import FollowerDelays
from devtools.bench.followers import render as render_followers
from devtools.bench.prepare import parse_url, setup
from devtools.bench.report import render_text, summarise
from devtools.bench.window import WindowWatch
from devtools.bench.workload import DEFAULT_BATCH_SIZE, DEFAULT_MIX, KINDS, parse_mix


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
    p.description = "Load-test a running service with ledger commands; report throughput and latency."
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
        help=f"kind=weight,... of {', '.join(KINDS)} (default {DEFAULT_MIX}); capture and refund act"
        " on the worker's own earlier holds and earns (none yet: a hold or an earn is sent instead,"
        " counted as such); batch is one POST /v1/batch of --batch-size earns for distinct members",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help="earns in one batch request, at most --members and 500 (%(default)s)",
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
    p.add_argument(
        "--campaigns",
        type=int,
        default=0,
        help="live campaigns every earn of the run matches (multiplier, bonus, A/B variants, minimum,"
        " cap; started with the admin key on the bench's channel, ended after the run) (%(default)s)",
    )
    p.add_argument(
        "--cpu-split",
        type=int,
        default=None,
        metavar="PID",
        help="also report the cores each part of the system used over the measured window, the"
        " service being PID (its `loyalty follow` child apart); PG_PID and NATS_PID name the"
        " benchmark's own postmaster and nats-server on a shared machine (same machine only)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


def run(args: argparse.Namespace) -> int:
    target = parse_url(args.url)
    if args.duration <= 0:
        raise SystemExit("--duration must be positive")
    if "batch" in args.mix and not args.batch_size <= min(args.members, 500):
        raise SystemExit("--batch-size must be at most --members and 500 (its earns go to distinct members)")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    run_id = uuid.uuid4().hex[:10]
    admin_key = args.admin_key or os.environ.get("LOYALTY_ADMIN_KEY")
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    key, member_ids, setup_s = event_loop_runner()(
        setup(
            target,
            admin_key=admin_key,
            key=args.key,
            members=args.members,
            concurrency=args.concurrency,
            run_id=run_id,
        )
    )
    campaign_ids: list[str] = []
    if args.campaigns > 0:
        if not admin_key:
            raise SystemExit("--campaigns needs --admin-key (or LOYALTY_ADMIN_KEY) to start them")
        channel = None if args.key else f"bench-{run_id}"
        campaign_ids = event_loop_runner()(
            start_campaigns(target, admin_key, args.campaigns, channel, run_id)
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
        batch_size=args.batch_size,
    )
    followers = FollowerDelays(
        (args.followers_url or f"http://{target.host}:{target.port + 1}").rstrip("/") + "/metrics"
    )
    cpu = None if args.cpu_split is None else CpuSplit.of(args.cpu_split)
    window = WindowWatch(
        [followers, *([cpu] if cpu else [])], start_in=0.1 + args.warmup, duration=args.duration
    )
    window.start()
    try:
        result = run_load(plan, args.processes)
    finally:
        if campaign_ids:
            assert admin_key is not None
            event_loop_runner()(end_campaigns(target, admin_key, campaign_ids, run_id))
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
        "batch_size": args.batch_size,
        "campaigns": len(campaign_ids),
    }
    summary = summarise(config, result)
    window.join()
    summary["followers"] = followers.report()
    if cpu is not None:
        summary["cpu_split"] = cpu.report()
    if args.json:
        print(json.dumps(summary))
    else:
        lines = [render_text(summary), "", *render_followers(summary["followers"])]
        if cpu is not None:
            rate = summary.get("commands_per_second", summary["throughput"])
            split = summary["cpu_split"]
            lines.append("")
            lines += (
                render_cpu(split["cores"], rate) if "cores" in split else [f"cpu split: {split['error']}"]
            )
        print("\n".join(lines))
    sys.stdout.flush()
    return 1 if summary["errors"] else 0
