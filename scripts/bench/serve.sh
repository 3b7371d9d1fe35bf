#!/usr/bin/env bash
# Start the service in the background for benchmarking and wait until it is ready.
#   scripts/bench/serve.sh            `loyalty serve` (1 uvicorn worker), embedded PostgreSQL + NATS
#   scripts/bench/serve.sh 2          the same app under uvicorn with 2 worker processes (multiworker.py)
# Writes $LOYALTY_DATA_DIR/bench-serve.pid; stop it with scripts/bench/stop.sh.
set -euo pipefail
source "$(dirname "$0")/common.sh"
workers=${1:-1}
mkdir -p "$LOYALTY_DATA_DIR"
log="$LOYALTY_DATA_DIR/bench-serve.log"
if [ "$workers" -le 1 ]; then
  nohup "$REPO/.venv/bin/loyalty" serve >"$log" 2>&1 &
else
  nohup "$REPO/.venv/bin/python" "$REPO/scripts/bench/multiworker.py" "$workers" >"$log" 2>&1 &
fi
echo $! >"$LOYALTY_DATA_DIR/bench-serve.pid"
wait_ready 90
echo "serving on $URL (pid $(cat "$LOYALTY_DATA_DIR/bench-serve.pid"), $workers worker(s)); database port $(pg_port)"
