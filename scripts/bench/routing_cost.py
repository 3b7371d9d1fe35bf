"""What routing members to request processes costs by itself (ADR 25, docs/benchmarks.md).

N processes of the service's own HTTP server (service/http_server.py) and router
(service/routing.py) on one port, around a trivial ASGI app instead of the ledger: enrol answers
a new member id, anything else a fixed 201. Driven by `loyalty bench --mix earn=1`, the CPU the
processes used per request over the measured window, against N=1, is what the routing costs
(the forwarding process's uvicorn, router and Unix-socket exchange; the owner's Unix-socket
request instead of a TCP one). MODE=plain serves N=1 without the router at all.

    .venv/bin/python scripts/bench/routing_cost.py N PORT SECONDS_UNTIL_WINDOW WINDOW_SECONDS
prints the cores and CPU microseconds per request of the processes over the window; run
`loyalty bench --url http://127.0.0.1:PORT --admin-key x --mix earn=1 -c 64 ...` beside it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

FIXED = b'{"key":"k","position":1,"points":10}'


class Trivial:
    """An ASGI app answering like the ledger would, doing nothing."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        self.state = SimpleNamespace(metrics=SimpleNamespace(registry=CollectorRegistry()))
        self.served = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        body = FIXED
        if scope["path"] == "/v1/members":
            body = json.dumps({"member_id": str(uuid.uuid4()), "key": "k"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 201, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def child() -> None:
    from service.config import Settings
    from service.http_server import HttpLimits, run_http
    from service.processes import this_request_process
    from service.routing import Router

    settings = Settings(processes=int(os.environ["LOYALTY_PROCESSES"]))
    me = this_request_process(settings)
    assert me is not None
    app: Any = Trivial()
    internal = None
    if os.environ.get("MODE") != "plain":
        app, internal = Router(app, me, keepalive_seconds=5.0), me.own_socket_path
    limits = HttpLimits()
    run_http(app, host="127.0.0.1", port=0, limits=limits, listener=me.listener(), internal_path=internal)


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def main() -> None:
    import socket

    from service.processes import REQUEST_PROCESS_VARIABLE

    count, port = int(sys.argv[1]), int(sys.argv[2])
    until_window, window = float(sys.argv[3]), float(sys.argv[4])
    listener = socket.create_server(("127.0.0.1", port), backlog=2048)
    listener.set_inheritable(True)
    sockets = tempfile.mkdtemp(prefix="routing-cost-")
    env = {**os.environ, "LOYALTY_PROCESSES": str(count), "LOYALTY_LOG_FORMAT": "json"}
    children = [
        subprocess.Popen(  # noqa: S603 - this interpreter and this file
            [sys.executable, __file__, "child"],
            env={**env, REQUEST_PROCESS_VARIABLE: f"{i} {listener.fileno()} {sockets}"},
            pass_fds=(listener.fileno(),),
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    pids = [c.pid for c in children]
    # For sigwait below; after the children started, which would inherit the mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    print(f"serving on {port} with {count} process(es), mode {os.environ.get('MODE', 'routed')}", flush=True)
    time.sleep(until_window)
    before, started = cpu_seconds(pids), time.monotonic()
    time.sleep(window)
    used, elapsed = cpu_seconds(pids) - before, time.monotonic() - started
    figures = {"processes": count, "cores": round(used / elapsed, 3), "cpu_s": round(used, 3)}
    print(json.dumps(figures), flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})  # blocked above: serving on until the generator is done
    for c in children:
        c.terminate()
    for c in children:
        c.wait()


if __name__ == "__main__":
    child() if sys.argv[1:] == ["child"] else main()
