#!/usr/bin/env bash
# PostgreSQL's cost per earn, statement by statement (pg_stat_statements), and the postgres
# processes' CPU from /proc, over one measured `loyalty bench` run against the service started
# by serve.sh (same LOYALTY_DATA_DIR / LOYALTY_PORT):
#
#   scripts/bench/pg_statements.sh --mix earn=1 -c 64
#   scripts/bench/pg_statements.sh --mix batch=1 --batch-size 100 -c 8
#
# The arguments are loyalty bench's (--members 1000 unless given; its own duration and warm-up are
# set here). The first run on a data dir turns pg_stat_statements on (ALTER SYSTEM:
# shared_preload_libraries, a restart of the service through stop.sh/serve.sh); fsync and
# synchronous_commit stay as serve.sh starts them. The window is this script's own: once the
# bench has enrolled its members, WARM seconds (default 10) of load, then the counters reset and
# /proc read, SECONDS (default 30) of load, /proc and the counters read again, and the bench
# stopped. Per earn = divided by the points_earned events committed in the window.
# Statements are grouped by what they touch: append (the group commit), request reads, followers
# (relay, projections, checkpoints), other. COMMIT's time is mostly the WAL flush (a wait, not CPU).
# OUT=FILE also writes the whole table as JSON.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh"
args=("$@")
[[ " ${args[*]} " == *" --members "* ]] || args+=(--members 1000)
members=$(python3 -c 'import sys; a = sys.argv[1:]; print(a[a.index("--members") + 1])' "${args[@]}")

psql_q() { psql -X -q -At -h 127.0.0.1 -p "$(pg_port)" -U postgres -d loyalty -c "$1"; }

if [[ "$(psql_q 'SHOW shared_preload_libraries')" != *pg_stat_statements* ]]; then
  echo "# turning pg_stat_statements on (restarting the service)"
  psql_q "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'"
  psql_q "ALTER SYSTEM SET pg_stat_statements.track = 'all'"
  psql_q "ALTER SYSTEM SET pg_stat_statements.track_planning = on"
  "$here/stop.sh"
  "$here/serve.sh" >/dev/null
  source "$here/common.sh"  # the password may be new
fi
psql_q "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"

pg_pid=$(head -1 "$LOYALTY_DATA_DIR/postgres/postmaster.pid")
bench=("$REPO/.venv/bin/loyalty" bench --url "$URL" "${args[@]}" --warmup 0 -T 3600)

exec "$REPO/.venv/bin/python" - "$pg_pid" "$(pg_port)" "${OUT:-}" "$members" "${WARM:-10}" "${SECONDS_MEASURED:-30}" "${bench[@]}" <<'PY'
import json, os, re, signal, subprocess, sys, time

pg_pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
members, warm, seconds, cmd = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), sys.argv[7:]
tick = os.sysconf("SC_CLK_TCK")


def psql(sql):
    return subprocess.run(
        ["psql", "-X", "-q", "-At", "-F", "\t", "-h", "127.0.0.1", "-p", port, "-U", "postgres",
         "-d", "loyalty", "-c", sql], check=True, capture_output=True, text=True).stdout


def pg_cpu():
    """CPU seconds of the postmaster, its live children and its reaped ones (cutime/cstime)."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(pid) == pg_pid:
            total += sum(int(x) for x in fields[11:15]) / tick
        elif int(fields[1]) == pg_pid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def head():
    return int(psql("SELECT coalesce(max(position), 0) FROM events"))


GROUPS = [  # first match wins, on the normalised text
    ("append", r"pg_advisory_xact_lock|INSERT INTO events|FROM idempotency_keys\s+WHERE \(channel|"
               r"coalesce\(max\(position\), 0\) FROM events\) AS head|INSERT INTO identities|"
               r"UPDATE member_keys|^\s*COMMIT|^\s*ROLLBACK|^\s*BEGIN|new_events AS"),
    ("followers", r"projection|balances|members|segments|liability|channel_days|channel_totals|"
                  r"journey|campaign_members|checkpoints|tracking|relay|segment_|FROM events\s+WHERE position|"
                  r"audit_checkpoints|LISTEN|UNLISTEN"),
    ("request reads", r"FROM snapshots|FROM events|FROM member_keys|FROM idempotency_keys|FROM holds|"
                      r"FROM identities|FROM order_refs|INTO snapshots"),
]


def group(query):
    for name, pattern in GROUPS:
        if re.search(pattern, query, re.I):
            return name
    return "other"


begin = head()
bench = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
while int(psql(f"SELECT count(*) FROM events WHERE position > {begin} AND event_type = 'member_enrolled'")) < members:
    if bench.poll() is not None:
        sys.exit(f"loyalty bench stopped: {bench.stderr.read()}")
    time.sleep(0.5)
time.sleep(warm)
psql("SELECT pg_stat_statements_reset()")
start_head, start_cpu, t0 = head(), pg_cpu(), time.monotonic()
time.sleep(seconds)
end_cpu, t1, end_head = pg_cpu(), time.monotonic(), head()
rows = [line.split("\t") for line in psql(
    "SELECT calls, total_exec_time, rows, shared_blks_hit, shared_blks_read, shared_blks_dirtied,"
    " shared_blks_written, wal_fpi, wal_bytes, total_plan_time, regexp_replace(query, '\\s+', ' ', 'g')"
    " FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = 'loyalty')"
    " ORDER BY total_exec_time DESC").splitlines() if line]
live = bench.poll() is None
bench.send_signal(signal.SIGINT)
try:
    bench.wait(30)
except subprocess.TimeoutExpired:
    bench.kill()
    bench.wait()
if not live:
    sys.exit(f"loyalty bench stopped before the window closed: {bench.stderr.read()}")
earns = int(psql(f"SELECT count(*) FROM events WHERE position > {start_head} AND position <= {end_head}"
                 " AND event_type = 'points_earned'"))
events = end_head - start_head
stats = []
for r in rows:
    calls, ms, nrows, hit, read, dirtied, written, fpi, walbytes, plan_ms = map(float, r[:10])
    stats.append(dict(group=group(r[10]), calls=calls, ms=ms, plan_ms=plan_ms, rows=nrows,
                      blks=hit + read, dirtied=dirtied, written=written, wal_fpi=fpi,
                      wal_bytes=walbytes, query=r[10]))
per = max(earns, 1)
cpu_us = (end_cpu - start_cpu) / per * 1e6
print(f"\n# {earns} earns ({events} events) in {t1 - t0:.1f} s; load average {os.getloadavg()[0]:.2f}")
print(f"postgres processes' CPU: {end_cpu - start_cpu:.2f} s = {cpu_us:.0f} us per earn")
total_ms = sum(s["ms"] for s in stats)
print(f"pg_stat_statements exec time: {total_ms / per * 1000:.0f} us per earn"
      f" (plan {sum(s['plan_ms'] for s in stats) / per * 1000:.0f})")
for name in ("append", "request reads", "followers", "other"):
    g = [s for s in stats if s["group"] == name]
    print(f"  {name:14} {sum(s['ms'] for s in g) / per * 1000:7.1f} us"
          f"  {sum(s['calls'] for s in g) / per:6.2f} calls  {sum(s['blks'] for s in g) / per:7.1f} blocks"
          f"  {sum(s['dirtied'] for s in g) / per:5.2f} dirtied  {sum(s['wal_bytes'] for s in g) / per:7.0f} WAL bytes"
          f" ({sum(s['wal_fpi'] for s in g) / per:5.3f} full pages)")
print("\n   us/earn  calls/earn  rows/earn  blks/earn  dirt/earn  WALB/earn  group          statement")
for s in stats[:40]:
    print(f"  {s['ms'] / per * 1000:8.1f}  {s['calls'] / per:10.3f}  {s['rows'] / per:9.2f}"
          f"  {s['blks'] / per:9.1f}  {s['dirtied'] / per:9.2f}  {s['wal_bytes'] / per:9.0f}  {s['group']:13}  {s['query'][:110]}")
if out:
    with open(out, "w") as f:
        json.dump(dict(earns=earns, events=events, seconds=t1 - t0, pg_cpu_s=end_cpu - start_cpu,
                       pg_cpu_us_per_earn=cpu_us, statements=stats, command=cmd), f, indent=1)
PY
