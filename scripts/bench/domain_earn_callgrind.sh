#!/usr/bin/env bash
# Instructions per earn of `domain_earn.py` (one earn's decision and its balance, on a member with
# HISTORY earns behind it), counted by callgrind: runs it on TREE's code with no timed earns and
# with EARNS, and divides the difference of the two totals by EARNS.
#   scripts/bench/domain_earn_callgrind.sh TREE [EARNS] [HISTORY]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$here/../.." && pwd)
tree=$(cd "${1:?tree}" && pwd); earns=${2:-200}; history=${3:-300}
OUT=${OUT:-/tmp/domain-earn-callgrind}; mkdir -p "$OUT"
total() {
  env -C "$tree" PYTHONHASHSEED=0 PYTHONPATH="$tree" valgrind --tool=callgrind --callgrind-out-file="$OUT/$1.out" \
    "$REPO/.venv/bin/python" "$here/domain_earn.py" 1 "$1" "$history" >/dev/null 2>"$OUT/$1.log"
  callgrind_annotate "$OUT/$1.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'
}
base=$(total 0); with=$(total "$earns")
echo "$tree: $(( (with - base) / earns )) instructions per earn ($earns earns after $history)"
