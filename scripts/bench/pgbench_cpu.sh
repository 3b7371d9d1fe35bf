#!/usr/bin/env bash
# The ratio's baseline beside pg_statements.sh: pgbench's one-row insert transaction
# (shared/baselines/append.sql) at CLIENTS (64) for SECONDS (20) on the running service's
# PostgreSQL, and the postgres processes' CPU per transaction over the run, from /proc.
set -euo pipefail
source "$(dirname "$0")/common.sh"
clients=${CLIENTS:-64}; secs=${SECONDS_MEASURED:-20}
port=$(pg_port)
pg_pid=$(head -1 "$LOYALTY_DATA_DIR/postgres/postmaster.pid")
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE DATABASE bench" 2>/dev/null || true
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d bench -f "$BASELINES/schema.sql" 2>/dev/null
psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d bench -c "CHECKPOINT"
cpu() {  # CPU seconds of the postmaster, its children and the children it reaped
  python3 - "$pg_pid" <<'PY'
import os, sys
pg, tick, total = int(sys.argv[1]), os.sysconf("SC_CLK_TCK"), 0.0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if int(pid) == pg:
        total += sum(int(x) for x in f[11:15]) / tick
    elif int(f[1]) == pg:
        total += (int(f[11]) + int(f[12])) / tick
print(total)
PY
}
c0=$(cpu)
out=$(pgbench -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -f "$BASELINES/append.sql" -c "$clients" -j 2 -T "$secs" bench 2>&1)
c1=$(cpu)
tps=$(echo "$out" | grep -oP 'tps = \K[0-9.]+')
txns=$(echo "$out" | grep -oP 'number of transactions actually processed: \K[0-9]+')
python3 -c "import sys; c, n, t = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3]; print(f'pgbench {sys.argv[4]} clients: {t} tps, {n} transactions; postgres processes CPU {c:.2f} s = {c / n * 1e6:.0f} us a transaction')" \
  "$(python3 -c "print($c1 - $c0)")" "$txns" "$tps" "$clients"
