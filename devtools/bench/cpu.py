"""The cores each part of the system used over the measured window, read from /proc.

`loyalty bench --cpu-split PID` samples every process when the measured window opens and when it
closes (as it scrapes the followers' metrics) and groups them: the service (PID and its
descendants but the follower process), the followers (`loyalty follow`), PostgreSQL, nats-server,
the generator itself, pgbench, everything else; and the machine's busy cores from /proc/stat,
whatever is left of them being the kernel's or processes that exited. Taken over the window the
generator measures, not over one guessed from outside (a guess that opened late counted the
seconds after the load as idle: docs/benchmarks.md, 2026-11-30).

`python -m devtools.bench.cpu DELAY SECONDS SERVER_PID` does the same over a window of its own.
PG_PID and NATS_PID (the benchmark's postmaster and nats-server) keep other servers of a shared
machine in `other`.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Process:
    comm: str
    cmdline: str
    ppid: int
    cpu: float  # seconds, user + system
    started: int = 0  # clock ticks after boot: a pid reused by another process starts later


@dataclass(frozen=True, slots=True)
class Sample:
    processes: dict[int, Process]
    ticks: int  # all of /proc/stat's first line
    idle: int  # its idle + iowait


def sample() -> Sample:
    """Every process's CPU so far, and the machine's."""
    processes = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        processes[int(pid)] = Process(comm, cmdline, int(fields[1]), cpu, int(fields[19]))
    with open("/proc/stat") as f:
        values = list(map(int, f.readline().split()[1:]))
    return Sample(processes, sum(values), values[3] + values[4])


def group(pid: int, table: dict[int, Process], *, server: int, pg_pid: int = 0, nats_pid: int = 0) -> str:
    """Which part of the system the process is."""
    p = table[pid]
    if p.comm == "postgres" or p.cmdline.startswith("postgres"):
        return "postgresql" if not pg_pid or pg_pid in (pid, p.ppid) else "other"
    if "nats-server" in p.comm or "nats-server" in p.cmdline:
        return "nats-server" if not nats_pid or pid == nats_pid else "other"
    if p.comm == "pgbench":
        return "pgbench"
    current, follower = pid, False
    while current in table and current > 1:
        cmdline = table[current].cmdline
        follower = follower or "service.cli follow" in cmdline or "loyalty follow" in cmdline
        if current == server:
            return "followers (loyalty follow)" if follower else "service (uvicorn/python)"
        if "loyalty bench" in cmdline:
            return "loyalty bench (generator)"
        current = table[current].ppid
    return "other"


def split(before: Sample, after: Sample, seconds: float, **pids: int) -> dict[str, float]:
    """Cores used by each group between two samples `seconds` apart, with `unattributed` and
    `machine busy`; a process counts from 0 if it started between them."""
    used: dict[str, float] = {}
    for pid, process in after.processes.items():
        earlier = before.processes.get(pid)
        # Not by name: a kernel worker's name changes with its work item.
        start = earlier.cpu if earlier is not None and earlier.started == process.started else 0.0
        name = group(pid, after.processes, **pids)
        used[name] = used.get(name, 0.0) + (process.cpu - start) / seconds
    ticks = after.ticks - before.ticks
    busy = (1 - (after.idle - before.idle) / ticks) * (os.cpu_count() or 1) if ticks else 0.0
    cores = dict(sorted(used.items(), key=lambda kv: -kv[1]))
    cores["unattributed"] = busy - sum(used.values())
    cores["machine busy"] = busy
    return {k: round(v, 3) for k, v in cores.items()}


def render(cores: dict[str, float], rate: float | None = None) -> list[str]:
    """Text lines: cores, and microseconds per command at `rate` commands/s."""
    lines = [f"cpu split over the measured window ({os.cpu_count()} cores):"]
    for name, used in cores.items():
        per = f"  {used / rate * 1e6:7.0f} us/command" if rate else ""
        note = "  (kernel, processes that exited)" if name == "unattributed" else ""
        lines.append(f"  {name:<28}{used:6.2f} cores{per}{note}")
    return lines


@dataclass
class CpuSplit:
    """Samples /proc when the measured window opens and when it closes (a WindowWatch probe)."""

    server: int
    pg_pid: int = 0
    nats_pid: int = 0
    before: Sample | None = None
    cores: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @classmethod
    def of(cls, server: int) -> CpuSplit:
        """For the service `server`, with PG_PID and NATS_PID from the environment."""
        return cls(server, int(os.environ.get("PG_PID") or 0), int(os.environ.get("NATS_PID") or 0))

    def opened(self) -> None:
        self.before = sample()

    def closed(self, seconds: float) -> None:
        assert self.before is not None
        pids = {"server": self.server, "pg_pid": self.pg_pid, "nats_pid": self.nats_pid}
        self.cores = split(self.before, sample(), seconds, **pids)

    def report(self) -> dict[str, Any]:
        return (
            {"error": self.error or "not sampled"} if self.error or not self.cores else {"cores": self.cores}
        )


def main(argv: list[str]) -> None:
    delay, seconds, server = float(argv[0]), float(argv[1]), int(argv[2])
    probe = CpuSplit.of(server)
    time.sleep(delay)
    probe.opened()
    opened = time.monotonic()
    time.sleep(seconds)
    probe.closed(time.monotonic() - opened)
    print("\n".join(render(probe.cores)))


if __name__ == "__main__":
    main(sys.argv[1:])
