"""Benchmarks: `loyalty bench` (load on a running service) and `python -m devtools.bench.rebuild`
(full-rebuild throughput of the projections)."""
