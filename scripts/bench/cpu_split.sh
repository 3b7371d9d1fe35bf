#!/usr/bin/env bash
# CPU used per process group over a window of its own: cpu_split.sh DELAY SECONDS [SERVER_PID]
# Sleeps DELAY, then samples /proc for SECONDS; prints cores used by the service (SERVER_PID and
# its descendants but the follower process, default the pid in $LOYALTY_DATA_DIR/bench-serve.pid),
# the follower process (`loyalty follow`), PostgreSQL, nats-server, `loyalty bench`, everything
# else, and the machine's busy cores (devtools/bench/cpu.py). With PG_PID and NATS_PID (the
# benchmark's own postmaster and nats-server), other servers on the machine count as `other`.
# Beside a `loyalty bench` run, prefer its own `--cpu-split PID`: it samples exactly its measured
# window, where a DELAY guessed from outside may open it late and count idle seconds after it.
set -euo pipefail
source "$(dirname "$0")/common.sh"
delay=${1:-5}; secs=${2:-30}; server=${3:-$(cat "$LOYALTY_DATA_DIR/bench-serve.pid")}
cd "$REPO" && exec "$REPO/.venv/bin/python" -m devtools.bench.cpu "$delay" "$secs" "$server"
