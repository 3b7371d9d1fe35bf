"""The processes curve's runs (scripts/bench/processes_curve.sh): one run, or the medians.

    python3 scripts/bench/summarise_curve.py OUT [RUN]

Per run: earns/s, p99, the cores of each kind of process over the measured window and the CPU
microseconds per earn they make, and the share of requests forwarded to a sibling.
"""

import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

EARN_ROUTE = r'route="/v1/members/\{member_id[^}]*\}/earn"'
KINDS = {
    "service (uvicorn/python)": "request processes",
    "followers (loyalty follow)": "follower",
    "postgresql": "PostgreSQL",
    "nats-server": "NATS",
    "loyalty bench (generator)": "generator",
    "other": "other",
}


def run(out: str, name: str) -> dict:
    with open(os.path.join(out, f"{name}.json")) as f:
        d = json.load(f)
    rate = d.get("commands_per_second") or d["throughput"]
    row = {"earns/s": rate, "p99 ms": d["latency_ms"].get("p99"), "errors": d["errors"]}
    with open(os.path.join(out, f"{name}.cpu")) as f:
        for line in f:
            m = re.match(r"\s+(.+?)\s+(-?[0-9.]+) cores", line)
            if m and m.group(1) in KINDS:
                cores = float(m.group(2))
                row[f"{KINDS[m.group(1)]} cores"] = cores
                row[f"{KINDS[m.group(1)]} us/earn"] = cores / rate * 1e6 if rate else None
            elif m and m.group(1) == "machine busy":
                row["machine busy"] = float(m.group(2))
    forwarded = served = 0.0
    path = os.path.join(out, f"{name}.metrics")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.startswith("loyalty_requests_forwarded_total"):
                    forwarded += float(line.rsplit(" ", 1)[1])
                elif line.startswith("loyalty_http_requests_total{") and re.search(EARN_ROUTE, line):
                    served += float(line.rsplit(" ", 1)[1])
    row["forwarded share"] = forwarded / served if served else 0.0
    return row


def show(name: str, row: dict) -> None:
    cells = [f"{k} {round(v, 2) if isinstance(v, float) else v}" for k, v in row.items() if v is not None]
    print(f"{name}: " + ", ".join(cells))


out = sys.argv[1]
if len(sys.argv) > 2:
    show(sys.argv[2], run(out, sys.argv[2]))
    sys.exit(0)
runs = defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "p*-r*.json"))):
    name = os.path.basename(path)[:-5]
    processes = int(re.match(r"p(\d+)-", name).group(1))
    runs[processes].append(run(out, name))
for processes, rows in sorted(runs.items()):
    print(f"-- {processes} request process(es), {len(rows)} runs: median (runs)")
    for key in rows[0]:
        xs = [r.get(key) for r in rows if r.get(key) is not None]
        if xs:
            runs_text = ", ".join(str(round(x, 2)) for x in xs)
            print(f"   {key:<28} {round(statistics.median(xs), 2):>10}   ({runs_text})")
