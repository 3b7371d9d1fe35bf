"""What `loyalty bench` observes beside the load: probes called when the measured window opens
and when it closes, from one thread, at the instants the generator counts answers between."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol


class Probe(Protocol):
    error: str | None

    def opened(self) -> None: ...

    def closed(self, seconds: float) -> None:
        """`seconds`: how long the window was open, as this probe saw it."""


class WindowWatch:
    """Calls each probe `start_in` seconds after `start()`, and again `duration` later. A probe
    that fails keeps its error (reported, not fatal: the load's figures stand on their own)."""

    def __init__(self, probes: Sequence[Probe], *, start_in: float, duration: float) -> None:
        self.probes, self.start_in, self.duration = list(probes), start_in, duration
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-window-watch", daemon=True)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        t0 = time.monotonic()
        time.sleep(self.start_in)
        opened = {}
        for probe in self.probes:
            opened[id(probe)] = time.monotonic()
            _call(probe, probe.opened)
        time.sleep(max(0.0, t0 + self.start_in + self.duration - time.monotonic()))
        for probe in self.probes:
            if probe.error is None:
                seconds = time.monotonic() - opened[id(probe)]
                _call(probe, lambda p=probe, s=seconds: p.closed(s))


def _call(probe: Probe, step: Callable[[], None]) -> None:
    try:
        step()
    except Exception as exc:
        probe.error = f"{type(exc).__name__}: {exc}"
