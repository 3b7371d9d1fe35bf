#!/usr/bin/env bash
# The followers under batch earns, live: follower_live.sh TREE [SECONDS] [SEED]
# Serves TREE (a `git archive` of a commit, see serve.sh's SERVICE_TREE) on a fresh
# $LOYALTY_DATA_DIR, runs `loyalty bench --mix batch=1 --batch-size 100 -c 8` for SECONDS
# (default 30, after 5 s of warm-up, 1,000 members), waits until the projections and the relay
# have caught up with the log, and prints the bench's report (commit -> projection applied and
# commit -> JetStream ack, p50/p99 of the measured window) and the CPU the follower process
# (`loyalty follow`: relay + projections) and PostgreSQL spent per event over the whole run.
# With PYSPY=path/to/py-spy, the follower process is also sampled (--nonblocking) for the
# measured window into $LOYALTY_DATA_DIR/follower.spy (raw; read it as proportions).
set -euo pipefail
tree=$(cd "$1" && pwd); secs=${2:-30}; seed=${3:-1}
source "$(dirname "$0")/common.sh"
[ ! -e "$LOYALTY_DATA_DIR" ] || { echo "$LOYALTY_DATA_DIR exists: give a fresh LOYALTY_DATA_DIR" >&2; exit 1; }
SERVICE_TREE=$tree "$REPO/scripts/bench/serve.sh" >/dev/null
source "$REPO/scripts/bench/common.sh"  # again: the password of the new servers.json
trap '"$REPO/scripts/bench/stop.sh"' EXIT
serve=$(cat "$LOYALTY_DATA_DIR/bench-serve.pid")
follower=$(pgrep -P "$serve" -f 'service.cli follow' | head -1)
postmaster=$(head -1 "$LOYALTY_DATA_DIR/postgres/postmaster.pid" 2>/dev/null || pgrep -f "postgres -D $LOYALTY_DATA_DIR/postgres" | head -1)
cpu() {  # CPU seconds of these pids and their children
  python3 - "$@" <<'PY'
import os, sys
tick = os.sysconf("SC_CLK_TCK"); roots = set(map(int, sys.argv[1:])); total = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(pid) in roots or int(fields[1]) in roots:
        total += int(fields[11]) + int(fields[12])
print(total / tick)
PY
}
sql() { psql -h 127.0.0.1 -p "$(pg_port)" -U postgres -d loyalty -Atc "$1"; }
head0=$(sql "SELECT coalesce(max(position), 0) FROM events")
f0=$(cpu "$follower"); p0=$(cpu "$postmaster")
if [ -n "${PYSPY:-}" ]; then
  ( sleep 22; "$PYSPY" record --nonblocking -p "$follower" -d "$secs" -r 100 -f raw -o "$LOYALTY_DATA_DIR/follower.spy" >/dev/null 2>&1 ) &
fi
"$REPO/.venv/bin/loyalty" bench --url "$URL" --mix batch=1 --batch-size 100 -c 8 -T "$secs" --warmup 5 \
  --members 1000 --seed "$seed"
head1=$(sql "SELECT max(position) FROM events")
for _ in $(seq 600); do
  behind=$(sql "SELECT count(*) FROM checkpoints WHERE name <> 'segments_relay' AND position < $head1")
  [ "$behind" = 0 ] && break
  sleep 0.5
done
f1=$(cpu "$follower"); p1=$(cpu "$postmaster")
wait
python3 - "$head0" "$head1" "$f0" "$f1" "$p0" "$p1" "$(cat "$tree/COMMIT" 2>/dev/null || echo "$tree")" <<'PY'
import sys
h0, h1, f0, f1, p0, p1 = map(float, sys.argv[1:7])
n = h1 - h0
print(f"{sys.argv[7]}: {n:.0f} events over the run; follower process {f1 - f0:.1f} CPU s = "
      f"{(f1 - f0) * 1e6 / n:.0f} us/event; PostgreSQL {p1 - p0:.1f} CPU s = {(p1 - p0) * 1e6 / n:.0f} us/event "
      "(caught up, the relay and every projection)")
PY
