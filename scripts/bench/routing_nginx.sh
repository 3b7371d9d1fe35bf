#!/usr/bin/env bash
# The load balancer's share of routing (ADR 25): nginx's consistent hash on the member id
# (deploy/nginx/loyalty.conf) in front of two processes of routing_cost.py's trivial app, each on
# its own port without the router, ROUNDS rounds of `loyalty bench --mix earn=1 -c 64`; prints
# nginx's and the two processes' CPU microseconds per request (beside routing_cost.sh's plain).
#   OUT=/tmp/routing-nginx scripts/bench/routing_nginx.sh    (ROUNDS 3, PORT 8150 and the next
#   two for the processes, DURATION 20; needs nginx, e.g. Debian's nginx-light)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
ROUNDS=${ROUNDS:-3}; PORT=${PORT:-8150}; DURATION=${DURATION:-20}
OUT=${OUT:-/tmp/routing-nginx/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT/nginx"
# The deployment's file, with this machine's listen address and upstreams, one worker.
{
  echo "worker_processes 1; pid $OUT/nginx/nginx.pid; error_log $OUT/nginx/error.log;"
  echo "events { worker_connections 1024; }"
  echo "http { access_log off;"
  sed -e "s/listen 8080;/listen 127.0.0.1:$PORT;/" -e "s/server api-1:8080;/server 127.0.0.1:$((PORT + 1));/" \
      -e "s/server api-2:8080;/server 127.0.0.1:$((PORT + 2));/" "$REPO/deploy/nginx/loyalty.conf"
  echo "}"
} >"$OUT/nginx.conf"
nginx -t -q -c "$OUT/nginx.conf" -p "$OUT/nginx"
echo "date: $(date -u +%FT%TZ)  load: $(cut -d' ' -f1-3 /proc/loadavg)  commit: $(git -C "$REPO" rev-parse --short HEAD)  $(nginx -v 2>&1)" | tee "$OUT/machine.txt"
cpu() {  # cpu PID... -> CPU seconds used so far
  python3 -c 'import os, sys
t = os.sysconf("SC_CLK_TCK"); s = 0
for p in sys.argv[1:]:
    f = open(f"/proc/{p}/stat").read().rpartition(")")[2].split(); s += (int(f[11]) + int(f[12])) / t
print(s)' "$@"
}
for round in $(seq "$ROUNDS"); do
  MODE=plain "$REPO/.venv/bin/python" "$here/routing_cost.py" 1 "$((PORT + 1))" 8 "$((DURATION - 8))" >"$OUT/a-$round.cpu" &
  a=$!
  MODE=plain "$REPO/.venv/bin/python" "$here/routing_cost.py" 1 "$((PORT + 2))" 8 "$((DURATION - 8))" >"$OUT/b-$round.cpu" &
  b=$!
  nginx -c "$OUT/nginx.conf" -p "$OUT/nginx" -g "daemon off;" &
  n=$!
  for port in "$((PORT + 1))" "$((PORT + 2))"; do
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/x" && break; sleep 0.1; done
  done
  workers=$(pgrep -P "$n" | tr '\n' ' ')
  ( sleep 8; c0=$(cpu "$n" $workers); sleep "$((DURATION - 8))"; c1=$(cpu "$n" $workers)
    python3 -c "import sys; print('{\"cores\": %.3f}' % ((float(sys.argv[2]) - float(sys.argv[1])) / float(sys.argv[3])))" "$c0" "$c1" "$((DURATION - 8))"
  ) >"$OUT/nginx-$round.cpu" &
  meter=$!
  "$REPO/.venv/bin/loyalty" bench --url "http://127.0.0.1:$PORT" --admin-key x --mix earn=1 -c 64 \
    -T "$DURATION" --warmup 3 --members 1000 --seed "$round" --json >"$OUT/$round.json"
  wait "$meter"
  while ! grep -q cores "$OUT/a-$round.cpu" || ! grep -q cores "$OUT/b-$round.cpu"; do sleep 0.2; done
  kill -TERM "$a" "$b" "$n"; wait "$a" "$b" "$n" || true
  python3 - "$OUT" "$round" <<'PY'
import json, sys
out, r = sys.argv[1], sys.argv[2]
rate = json.load(open(f"{out}/{r}.json"))["throughput"]
last = lambda p: json.loads(open(p).read().splitlines()[-1])["cores"]
ng, procs = last(f"{out}/nginx-{r}.cpu"), last(f"{out}/a-{r}.cpu") + last(f"{out}/b-{r}.cpu")
print(f"nginx2: {rate:8.0f} req/s  nginx {ng:.2f} cores {ng / rate * 1e6:6.1f} us/request"
      f"  processes {procs:.2f} cores {procs / rate * 1e6:6.1f} us/request")
PY
done | tee "$OUT/summary.txt"
