#!/usr/bin/env bash
# CPU used per process group over a window: cpu_split.sh DELAY SECONDS [SERVER_PID]
# Sleeps DELAY, then samples /proc for SECONDS; prints cores used by the service (SERVER_PID and
# its descendants but the follower process, default the pid in $LOYALTY_DATA_DIR/bench-serve.pid),
# the follower process (`loyalty follow`), PostgreSQL,
# nats-server, `loyalty bench`, everything else, and the machine's total busy fraction. With
# PG_PID and NATS_PID (the benchmark's own postmaster and nats-server), other servers on the
# machine count as `other`.
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

# On a shared machine, only the benchmark's own servers count as such when their pids are given
# (PG_PID: the postmaster, whose children are the backends; NATS_PID), and only the service's own
# follower process (a child of it) as the followers.
pg_pid, nats_pid = int(os.environ.get("PG_PID") or 0), int(os.environ.get("NATS_PID") or 0)

def group(pid, table):
    comm, cmd, ppid, _ = table[pid]
    if comm == "postgres" or cmd.startswith("postgres"):
        return "postgresql" if not pg_pid or pg_pid in (pid, ppid) else "other"
    if "nats-server" in comm or "nats-server" in cmd:
        return "nats-server" if not nats_pid or pid == nats_pid else "other"
    if comm == "pgbench":
        return "pgbench"
    p, follower = pid, False
    while p in table and p > 1:
        follower = follower or "service.cli follow" in table[p][1] or "loyalty follow" in table[p][1]
        if p == server:
            return "followers (loyalty follow)" if follower else "service (uvicorn/python)"
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
