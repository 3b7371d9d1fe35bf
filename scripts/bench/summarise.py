"""Medians of a sitting's results: python3 scripts/bench/summarise.py bench-results/<dir>"""

import contextlib
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]


def _lines(path):
    with open(path) as f:
        return f.readlines()


def show(label, xs, unit="", digits=1):
    xs = [x for x in xs if x is not None]
    if xs:
        m = round(statistics.median(xs), digits)
        print(f"{label:<44} median {m:>9}{unit}   runs {', '.join(str(round(x, digits)) for x in xs)}")


benches = defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    name = os.path.basename(path)[:-5]
    m = re.match(r"(.*)-(\d+)$", name)
    if not m or m.group(1).endswith("es"):
        continue
    with open(path) as f, contextlib.suppress(ValueError):
        benches[m.group(1)].append(json.load(f))
for name, runs in sorted(benches.items()):
    print(f"-- loyalty bench {name} ({len(runs)} runs, concurrency {runs[0]['config']['concurrency']})")
    show("throughput", [d["throughput"] for d in runs], " cmd/s")
    for q in ("p50", "p95", "p99", "max"):
        show(f"latency {q}", [d["latency_ms"].get(q) for d in runs], " ms")
    for kind in runs[0]["kinds"]:
        show(f"{kind} throughput", [d["kinds"][kind]["throughput"] for d in runs], " cmd/s")
        show(f"{kind} p99", [d["kinds"][kind]["latency_ms"].get("p99") for d in runs], " ms")
        show(f"{kind} refused (expected)", [d["kinds"][kind]["rejected"] for d in runs])
    show("errors", [d["errors"] for d in runs])
    delays = defaultdict(lambda: defaultdict(list))
    for d in runs:
        for row in d.get("followers", {}).get("histograms", []):
            for q in ("p50_ms", "p99_ms"):
                delays[row["what"]][q].append(row[q])
    for what, qs in delays.items():
        for q, xs in qs.items():
            show(f"{what} {q[:3]}", xs, " ms")
    show("generator cores", [d["generator_cpu_cores"] for d in runs], digits=2)
    cpus = defaultdict(list)
    for cpu in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.cpu.txt"))):
        for line in _lines(cpu):
            m2 = re.match(r"\s+(.+?)\s+(-?[\d.]+) cores", line)
            if m2:
                cpus[m2.group(1)].append(float(m2.group(2)))
    for g, xs in cpus.items():
        show(f"cpu: {g}", xs, " cores", digits=2)

pg = defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*pgbench-*.txt"))):
    for line in _lines(path):
        m = re.match(r"clients=(\d+) tps=([\d.]+) lat_avg_ms=([\d.]+)", line)
        if m:
            pg[int(m.group(1))].append((float(m.group(2)), float(m.group(3))))
if pg:
    print(f"-- pgbench one-row insert ({len(next(iter(pg.values())))} runs)")
    for c in sorted(pg):
        show(f"clients {c} tps", [t for t, _ in pg[c]])
        show(f"clients {c} latency avg", [lat for _, lat in pg[c]], " ms")

es = defaultdict(list)
for path in sorted(glob.glob(os.path.join(out, "*es-*.json"))):
    for line in _lines(path):
        line = line.strip()
        if line.startswith("{"):
            for k, v in json.loads(line).items():
                es[k].append(v)
if es:
    print(f"-- eventsourcing Application ({len(next(iter(es.values())))} runs)")
    for k, xs in es.items():
        show(k, xs)
