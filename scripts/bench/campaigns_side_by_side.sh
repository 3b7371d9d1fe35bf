#!/usr/bin/env bash
# Earn with N live campaigns against earn with none, in one sitting on one running service:
#   scripts/bench/campaigns_side_by_side.sh URL SERVE_PID [ROUNDS] [N]
# Rounds alternate none/N, N/none (ABBA) so that drift on a shared machine falls on both. Each
# run is `loyalty bench --mix earn=1 --campaigns 0|N` (needs LOYALTY_ADMIN_KEY); inside its load
# (from 12 s to 27 s after it starts: past setup and into the warm-up, before the measured window
# ends) the service's CPU (the serve process and its children, `loyalty follow` included) is
# sampled against its count of earns answered, giving CPU milliseconds per earn, which other
# processes on the machine disturb far less than throughput. Prints one line per run and the
# medians and ratios; the JSON of each run goes to OUT (default /tmp/campaigns-side-by-side).
set -euo pipefail
url=$1; serve=$2; rounds=${3:-4}; n=${4:-5}
out=${OUT:-/tmp/campaigns-side-by-side}; mkdir -p "$out"
repo=$(cd "$(dirname "$0")/../.." && pwd)
echo "date: $(date -u +%FT%TZ)  host: $(uname -n)  nproc: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "git: $(git -C "$repo" rev-parse --short HEAD)  cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
run=0
for r in $(seq "$rounds"); do
  if (( r % 2 )); then order="0 $n"; else order="$n 0"; fi
  for c in $order; do
    run=$((run + 1))
    "$repo/.venv/bin/loyalty" bench --url "$url" --mix earn=1 -c 32 -T 20 --warmup 10 --members 300 \
      --campaigns "$c" --seed "$run" --json >"$out/run-$run-c$c.json" &
    bench=$!
    python3 - "$url" "$serve" "$c" "$run" "$out/run-$run-c$c.cpu" <<'PY'
import os, sys, time, urllib.request
url, serve, campaigns, run, dest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
tick = os.sysconf("SC_CLK_TCK")
def tree_cpu():
    parents, cpu = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        # utime + stime, and cutime + cstime: what its children that ended used (PostgreSQL's
        # backends come and go under an embedded server; without it the sum could go down).
        parents[int(pid)] = int(f[1]); cpu[int(pid)] = sum(map(int, f[11:15])) / tick
    def under(p):
        while p > 1:
            if p == serve: return True
            p = parents.get(p, 1)
        return False
    return sum(v for p, v in cpu.items() if under(p))
def earns():
    text = urllib.request.urlopen(url + "/metrics").read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("loyalty_http_requests_total") and 'route="/v1/members/{member_id}/earn"' in l)
time.sleep(12)
c0, e0, t0 = tree_cpu(), earns(), time.monotonic()
time.sleep(15)
c1, e1, t1 = tree_cpu(), earns(), time.monotonic()
line = f"{campaigns} {(c1 - c0) / (e1 - e0) * 1000:.3f} {(e1 - e0) / (t1 - t0):.1f}"
open(dest, "w").write(line + "\n")
PY
    wait "$bench" || true
    read -r cc ms eps <"$out/run-$run-c$c.cpu"
    tput=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['throughput'], d['latency_ms'].get('p50'), d['errors'])" "$out/run-$run-c$c.json")
    echo "run $run campaigns=$c  service CPU ${ms} ms/earn (${eps} earns/s sampled)  bench: throughput p50 errors = $tput"
  done
done
python3 - "$out" "$n" <<'PY'
import glob, json, statistics, sys
out, n = sys.argv[1], sys.argv[2]
cpu, tput = {"0": [], n: []}, {"0": [], n: []}
for f in glob.glob(f"{out}/run-*.cpu"):
    c, ms, _ = open(f).read().split()
    cpu[c].append(float(ms))
    tput[c].append(json.load(open(f[:-4] + ".json"))["throughput"])
m = {k: statistics.median(v) for k, v in cpu.items()}
t = {k: statistics.median(v) for k, v in tput.items()}
print(f"median service CPU per earn: none {m['0']:.3f} ms, {n} campaigns {m[n]:.3f} ms, ratio {m[n] / m['0']:.3f}")
print(f"median throughput: none {t['0']:.1f}/s, {n} campaigns {t[n]:.1f}/s, ratio {t[n] / t['0']:.3f}")
PY
