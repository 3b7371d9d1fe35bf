#!/usr/bin/env bash
# The eventsourcing library's own PostgreSQL Application (shared/baselines/eventsourcing_app.py)
# on a fresh database of the service's embedded PostgreSQL; prints its JSON line.
# Needs a separate venv:  python3 -m venv /tmp/esvenv && /tmp/esvenv/bin/pip install 'eventsourcing[postgres]==9.5.6'
set -euo pipefail
source "$(dirname "$0")/common.sh"
port=$(pg_port)
db="es_$(date +%s)_$$"
psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $db"
trap 'psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true' EXIT
ES_DB=$db ES_HOST=127.0.0.1 ES_PORT=$port "$ES_PYTHON" "$BASELINES/eventsourcing_app.py"
