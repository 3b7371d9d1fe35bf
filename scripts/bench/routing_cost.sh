#!/usr/bin/env bash
# The routing's own CPU per request (routing_cost.py): a trivial app behind the service's HTTP
# server, without the router (plain) and routed over 1, 2 and 4 processes, ROUNDS rounds
# alternating, `loyalty bench --mix earn=1 -c 64` each; prints CPU microseconds per request.
#   OUT=/tmp/routing scripts/bench/routing_cost.sh      (ROUNDS 3, PORT 8150, DURATION 20)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
ROUNDS=${ROUNDS:-3}; PORT=${PORT:-8150}; DURATION=${DURATION:-20}
OUT=${OUT:-/tmp/routing-cost/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)  commit: $(git -C "$REPO" rev-parse --short HEAD)" | tee "$OUT/machine.txt"
for round in $(seq "$ROUNDS"); do
  for variant in plain 1 2 4; do
    n=$variant; mode=routed
    [ "$variant" = plain ] && { n=1; mode=plain; }
    # The window: from 8 s (members enrolled, warm-up over) for DURATION - 8 s.
    MODE=$mode "$REPO/.venv/bin/python" "$here/routing_cost.py" "$n" "$PORT" 8 "$((DURATION - 8))" >"$OUT/$variant-$round.cpu" &
    server=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/x" && break; sleep 0.1; done
    "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" --admin-key x --mix earn=1 -c 64 \
      -T "$DURATION" --warmup 3 --members 1000 --seed "$round" --json >"$OUT/$variant-$round.json"
    while ! grep -q cores "$OUT/$variant-$round.cpu"; do sleep 0.2; done
    kill -TERM "$server"; wait "$server"
    python3 - "$OUT/$variant-$round" "$variant" "$DURATION" <<'PY'
import json, sys
run, variant = sys.argv[1], sys.argv[2]
bench = json.load(open(run + ".json"))
cpu = json.loads(open(run + ".cpu").read().splitlines()[-1])
rate = bench["throughput"]
print(f"{variant:>5}: {rate:8.0f} req/s  {cpu['cores']:.2f} cores  {cpu['cores'] / rate * 1e6:6.1f} us/request  p99 {bench['latency_ms']['p99']} ms")
PY
  done
done | tee "$OUT/summary.txt"
