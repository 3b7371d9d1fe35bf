#!/usr/bin/env bash
# Stop the service started by serve.sh (SIGTERM: it drains, then stops its embedded servers).
set -euo pipefail
source "$(dirname "$0")/common.sh"
pidfile="$LOYALTY_DATA_DIR/bench-serve.pid"
[ -f "$pidfile" ] || { echo "no $pidfile" >&2; exit 0; }
pid=$(cat "$pidfile")
kill -TERM "$pid" 2>/dev/null || true
for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
rm -f "$pidfile"
