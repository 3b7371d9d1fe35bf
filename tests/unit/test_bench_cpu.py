"""`loyalty bench --cpu-split`: which part of the system each process is, and the cores each used."""

from __future__ import annotations

import os

import pytest

from devtools.bench.cpu import Process, Sample, group, split

SERVER, FOLLOWER, WORKER, POSTMASTER, BACKEND, NATS, BENCH = 100, 101, 102, 200, 201, 300, 400
OTHER_POSTMASTER, OTHER_BACKEND = 500, 501


def table(cpu: dict[int, float]) -> dict[int, Process]:
    shape = {
        SERVER: Process("python", "python -m service.cli serve ", 1, 0.0),
        FOLLOWER: Process("python", "python -m service.cli follow ", SERVER, 0.0),
        WORKER: Process("python", "python -c multiprocessing ", SERVER, 0.0),
        POSTMASTER: Process("postgres", "postgres -D data ", 1, 0.0),
        BACKEND: Process("postgres", "postgres: loyalty 127.0.0.1 idle ", POSTMASTER, 0.0),
        NATS: Process("nats-server", "nats-server -js ", 1, 0.0),
        BENCH: Process("python", "python .venv/bin/loyalty bench --url x ", 1, 0.0),
        OTHER_POSTMASTER: Process("postgres", "postgres -D elsewhere ", 1, 0.0),
        OTHER_BACKEND: Process("postgres", "postgres: other ", OTHER_POSTMASTER, 0.0),
    }
    return {pid: Process(p.comm, p.cmdline, p.ppid, cpu.get(pid, 0.0)) for pid, p in shape.items()}


def test_each_process_is_its_part_of_the_system() -> None:
    t = table({})
    pids = {"server": SERVER, "pg_pid": POSTMASTER, "nats_pid": NATS}
    assert group(SERVER, t, **pids) == group(WORKER, t, **pids) == "service (uvicorn/python)"
    assert group(FOLLOWER, t, **pids) == "followers (loyalty follow)"
    assert group(BACKEND, t, **pids) == group(POSTMASTER, t, **pids) == "postgresql"
    assert group(OTHER_BACKEND, t, **pids) == "other"  # another server on a shared machine
    assert group(OTHER_BACKEND, t, server=SERVER) == "postgresql"  # unless no postmaster is named
    assert group(NATS, t, **pids) == "nats-server"
    assert group(BENCH, t, **pids) == "loyalty bench (generator)"


def test_the_cores_are_what_each_part_used_between_the_samples() -> None:
    before = Sample(table({SERVER: 10.0, FOLLOWER: 4.0, BACKEND: 1.0}), ticks=10_000, idle=6_000)
    # 10 s later: 2,000 ticks went by, 400 of them idle (the busy share times the cores).
    after = Sample(table({SERVER: 17.0, FOLLOWER: 8.0, BACKEND: 3.0, WORKER: 1.0}), ticks=12_000, idle=6_400)

    cores = split(before, after, 10.0, server=SERVER, pg_pid=POSTMASTER, nats_pid=NATS)

    assert cores["service (uvicorn/python)"] == pytest.approx(0.8)  # 0.7 + a worker that started
    assert cores["followers (loyalty follow)"] == pytest.approx(0.4)
    assert cores["postgresql"] == pytest.approx(0.2)
    assert cores["machine busy"] == pytest.approx((1 - 400 / 2_000) * os.cpu_count())
    assert cores["unattributed"] == pytest.approx(cores["machine busy"] - 1.4)


def test_a_process_counts_from_its_earlier_sample_unless_its_pid_was_reused() -> None:
    renamed = {1: Process("kworker/0:1-events", "", 0, 50.0, started=7)}  # named by its work item
    reused = {1: Process("python", "", 0, 0.5, started=900)}  # another process, the same pid
    before = Sample({1: Process("kworker/0:1-mm_percpu_wq", "", 0, 49.0, started=7)}, ticks=0, idle=0)

    assert split(before, Sample(renamed, ticks=0, idle=0), 10.0, server=SERVER)["other"] == pytest.approx(0.1)
    assert split(before, Sample(reused, ticks=0, idle=0), 10.0, server=SERVER)["other"] == pytest.approx(0.05)
