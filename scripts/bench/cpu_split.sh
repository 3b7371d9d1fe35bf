#!/usr/bin/env bash
# CPU used per process group over a window: cpu_split.sh DELAY SECONDS [SERVER_PID]
# Sleeps DELAY, then samples /proc for SECONDS; prints cores used by the service (SERVER_PID and
# its descendants but the follower process, default the pid in $LOYALTY_DATA_DIR/bench-serve.pid),
# the follower process (`loyalty follow`), PostgreSQL,
# nats-server, `loyalty bench`, everything else, and the machine's total busy fraction.
set -euo pipefail
source "$(dirname "$0")/common.sh"
delay=${1:-5}; secs=${2:-30}; server=${3:-$(cat "$LOYALTY_DATA_DIR/bench-serve.pid")}
python3 - "$delay" "$secs" "$server" <<'PY'
import os, sys, time
delay, secs, server = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
tick = os.sysconf("SC_CLK_TCK")

def procs():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(pid)] = (comm, cmd, int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out

def machine():
    with open("/proc/stat") as f:
        v = list(map(int, f.readline().split()[1:]))
    idle = v[3] + v[4]
    return sum(v), idle

def group(pid, table):
    comm, cmd, _, _ = table[pid]
    if comm == "postgres" or cmd.startswith("postgres"):
        return "postgresql"
    if "nats-server" in comm or "nats-server" in cmd:
        return "nats-server"
    if comm == "pgbench":
        return "pgbench"
    p = pid
    while p in table and p > 1:
        if "service.cli follow" in table[p][1] or "loyalty follow" in table[p][1]:
            return "followers (loyalty follow)"
        if p == server:
            return "service (uvicorn/python)"
        if "loyalty bench" in table[p][1]:
            return "loyalty bench (generator)"
        p = table[p][2]
    return "other"

time.sleep(delay)
a, (ta, ia) = procs(), machine()
time.sleep(secs)
b, (tb, ib) = procs(), machine()
used = {}
for pid, (comm, cmd, ppid, cpu) in b.items():
    before = a.get(pid, (None, None, None, 0.0))[3] if pid in a and a[pid][0] == comm else 0.0
    g = group(pid, b)
    used[g] = used.get(g, 0.0) + cpu - before
print(f"cpu split over {secs:g} s (2 cores = 2.00):")
for g, s in sorted(used.items(), key=lambda kv: -kv[1]):
    print(f"  {g:<28}{s / secs:6.2f} cores")
busy = (1 - (ib - ia) / (tb - ta)) * os.cpu_count()
print(f"  {'unattributed':<28}{busy - sum(used.values()) / secs:6.2f} cores  (kernel, processes that exited)")
print(f"  {'machine busy':<28}{busy:6.2f} cores")
PY
