"""`loyalty serve` with the garbage collector's totals printed to stderr every 10 s (collections,
seconds spent, full collections and the longest one), for docs/benchmarks.md.
Usage (instead of serve.sh):  .venv/bin/python scripts/bench/gcwatch.py 2>&1 | grep GCSTATS
The defaults of CPython are what 1a67dbb replaced; to see them again, comment out the call of
`_settle_heap` in service/cli.py.
"""

import gc
import sys
import threading
import time

stats = {"seconds": 0.0, "collections": 0, "full": 0, "full_seconds": 0.0, "longest_full": 0.0}
_began = [0.0]


def _watch(phase: str, info: dict) -> None:
    if phase == "start":
        _began[0] = time.perf_counter()
        return
    took = time.perf_counter() - _began[0]
    stats["seconds"] += took
    stats["collections"] += 1
    if info["generation"] == 2:
        stats["full"] += 1
        stats["full_seconds"] += took
        stats["longest_full"] = max(stats["longest_full"], took)


def _report() -> None:
    while True:
        time.sleep(10)
        shown = {k: round(v, 3) for k, v in stats.items()}
        print("GCSTATS", shown, "tracked", len(gc.get_objects()), file=sys.stderr, flush=True)


gc.callbacks.append(_watch)
threading.Thread(target=_report, daemon=True).start()

from service.cli import main  # noqa: E402

sys.exit(main(["serve"]))
