#!/usr/bin/env bash
# Start the service in the background for benchmarking and wait until it is ready.
#   scripts/bench/serve.sh            `loyalty serve` (1 uvicorn worker), embedded PostgreSQL + NATS
#   scripts/bench/serve.sh 2          the same app under uvicorn with 2 worker processes (multiworker.py)
# Writes $LOYALTY_DATA_DIR/bench-serve.pid; stop it with scripts/bench/stop.sh.
# SERVICE_TREE=DIR runs the service code of DIR instead of this work tree (a fixed commit while
# the work tree moves on):  git archive --prefix=benchtree/ <commit> | tar -x -C /tmp
#                           echo <commit> >/tmp/benchtree/COMMIT; SERVICE_TREE=/tmp/benchtree ...
set -euo pipefail
source "$(dirname "$0")/common.sh"
workers=${1:-1}
mkdir -p "$LOYALTY_DATA_DIR"
log="$LOYALTY_DATA_DIR/bench-serve.log"
if [ -n "${SERVICE_TREE:-}" ]; then
  export PYTHONPATH="$SERVICE_TREE${PYTHONPATH:+:$PYTHONPATH}"
  cd "$SERVICE_TREE"  # python puts the current directory first on sys.path
  echo "service code from $SERVICE_TREE ($(cat COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo '?'))"
fi
if [ "$workers" -le 1 ]; then
  nohup "$REPO/.venv/bin/python" -m service.cli serve >"$log" 2>&1 &
else
  nohup "$REPO/.venv/bin/python" "$REPO/scripts/bench/multiworker.py" "$workers" >"$log" 2>&1 &
fi
echo $! >"$LOYALTY_DATA_DIR/bench-serve.pid"
wait_ready 90
echo "serving on $URL (pid $(cat "$LOYALTY_DATA_DIR/bench-serve.pid"), $workers worker(s)); database port $(pg_port)"
