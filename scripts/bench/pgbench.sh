#!/usr/bin/env bash
# The durable-append ceiling (shared/baselines/pgbench_append.sh: one-row INSERT per transaction
# at 1/8/32/64 clients, 20 s each) on the embedded PostgreSQL of the running service.
set -euo pipefail
source "$(dirname "$0")/common.sh"
port=$(pg_port)
echo "# pgbench $(pgbench --version | awk '{print $NF}') on 127.0.0.1:$port, $(date -u +%FT%TZ)"
"$BASELINES/pgbench_append.sh" -h 127.0.0.1 -p "$port" -U postgres
