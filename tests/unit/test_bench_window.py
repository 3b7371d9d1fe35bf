"""`loyalty bench`'s probes of the measured window: each called when it opens and when it closes."""

from __future__ import annotations

from devtools.bench.window import WindowWatch


class Probe:
    def __init__(self, fail_on_open: bool = False) -> None:
        self.calls: list[str] = []
        self.error: str | None = None
        self.fail_on_open = fail_on_open

    def opened(self) -> None:
        self.calls.append("opened")
        if self.fail_on_open:
            raise OSError("no metrics there")

    def closed(self, seconds: float) -> None:
        assert seconds >= 0.05
        self.calls.append("closed")


def test_each_probe_is_called_at_both_ends_and_a_failing_one_keeps_its_error() -> None:
    first, failing, last = Probe(), Probe(fail_on_open=True), Probe()
    window = WindowWatch([first, failing, last], start_in=0.0, duration=0.05)

    window.start()
    window.join()

    assert first.calls == last.calls == ["opened", "closed"]
    assert failing.calls == ["opened"]  # not asked to close what did not open
    assert failing.error == "OSError: no metrics there"
    assert first.error is None
