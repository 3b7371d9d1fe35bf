#!/usr/bin/env bash
# One sitting, side by side on one embedded PostgreSQL, ROUNDS (default 3) rounds of:
#   (a) loyalty bench, earn only;  (b) loyalty bench, earn=90,redeem=10;
#   (c) pgbench one-row insert (pgbench.sh);  (d) the eventsourcing Application (es_baseline.sh)
# each loyalty bench run with a CPU split beside it. Results go to OUT (default
# $LOYALTY_DATA_DIR/results/<UTC time>/); summarise.py prints the medians.
# Needs the service running (serve.sh). Options via env: ROUNDS, CONCURRENCY (64), DURATION (30),
# WARMUP (5), MEMBERS (1000), SKIP ("es pgbench" to leave baselines out), TAG (file-name prefix).
set -euo pipefail
source "$(dirname "$0")/common.sh"
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$LOYALTY_DATA_DIR/results/$(date -u +%Y%m%dT%H%M%SZ)}
ROUNDS=${ROUNDS:-3}; CONCURRENCY=${CONCURRENCY:-64}; DURATION=${DURATION:-30}; WARMUP=${WARMUP:-5}
MEMBERS=${MEMBERS:-1000}; SKIP=${SKIP:-}; TAG=${TAG:-}
mkdir -p "$OUT"
{
  echo "date: $(date -u +%FT%TZ)"; echo "host: $(uname -n) $(uname -r)"; echo "nproc: $(nproc)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "memory: $(free -g | awk '/Mem:/{print $2}') GiB"; echo "git: $(git -C "$REPO" rev-parse --short HEAD)$(git -C "$REPO" diff --quiet || echo '+dirty')"
  echo "service code: ${SERVICE_TREE:-$REPO} $(cat "${SERVICE_TREE:-/nonexistent}/COMMIT" 2>/dev/null)"
  echo "postgres: $(psql -h 127.0.0.1 -p "$(pg_port)" -U postgres -d postgres -Atc 'show server_version') (fsync $(psql -h 127.0.0.1 -p "$(pg_port)" -U postgres -d postgres -Atc 'show fsync'), synchronous_commit $(psql -h 127.0.0.1 -p "$(pg_port)" -U postgres -d postgres -Atc 'show synchronous_commit'))"
  echo "settings: rounds=$ROUNDS concurrency=$CONCURRENCY duration=$DURATION warmup=$WARMUP members=$MEMBERS"
} >>"$OUT/${TAG}machine.txt"

bench() {  # bench NAME MIX
  local name=$1 mix=$2 r=$3
  "$here/quiet.sh" 120
  # The cores of each part over the measured window, sampled by the generator (--cpu-split).
  echo "+ loyalty bench --url $URL --mix $mix -c $CONCURRENCY -T $DURATION --warmup $WARMUP --members $MEMBERS --seed $r --json"
  "$REPO/.venv/bin/loyalty" bench --url "$URL" --mix "$mix" -c "$CONCURRENCY" -T "$DURATION" --warmup "$WARMUP" \
    --members "$MEMBERS" --seed "$r" --cpu-split "$(cat "$LOYALTY_DATA_DIR/bench-serve.pid")" \
    --json >"$OUT/${TAG}$name-$r.json" || true
  (cd "$REPO" && "$REPO/.venv/bin/python" - "$OUT/${TAG}$name-$r.json" <<'PY') >"$OUT/${TAG}$name-$r.cpu.txt" || true
import json, sys
from devtools.bench.cpu import render
print("\n".join(render(json.load(open(sys.argv[1])).get("cpu_split", {}).get("cores", {}))))
PY
  python3 - "$OUT/${TAG}$name-$r.json" <<'PY' || true
import json, sys
d = json.load(open(sys.argv[1]))
print(f"  {d['throughput']} cmd/s  p50 {d['latency_ms'].get('p50')} ms  p99 {d['latency_ms'].get('p99')} ms  errors {d['errors']}")
PY
  sed 's/^/  /' "$OUT/${TAG}$name-$r.cpu.txt"
}

for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  bench earn "earn=1" "$r"
  bench mix "earn=90,redeem=10" "$r"
  if [[ " $SKIP " != *" pgbench "* ]]; then
    "$here/quiet.sh" 120
    echo "+ pgbench.sh"; "$here/pgbench.sh" | tee "$OUT/${TAG}pgbench-$r.txt"
  fi
  if [[ " $SKIP " != *" es "* ]]; then
    "$here/quiet.sh" 120
    echo "+ es_baseline.sh"; "$here/es_baseline.sh" | tee "$OUT/${TAG}es-$r.json"
  fi
done
python3 "$here/summarise.py" "$OUT"
