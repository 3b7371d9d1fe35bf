"""The console in a real headless browser (Debian's Chromium, driven by Playwright), at a phone's
width: sign in, look a member up by phone and see the balance the API reports, see a chart
render, see a new earn appear live; nothing loaded from another origin, no policy violation.

Chromium comes from Debian (`make test` installs it when it can: as root). Where it is missing
the test is skipped saying so, except where the browser is required (`LOYALTY_REQUIRE_BROWSER=1`,
which `.ci/run` sets; or `CI` set): there a missing browser is a failure, so CI never passes
without having run it (ADR 17).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Api, Pos

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE = "LOYALTY_REQUIRE_BROWSER"  # set (not empty, not 0) where the browser test must run
# What this machine's closed network needs (the probe's flags): no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 390, "height": 844}
WAIT_MS = 30_000


def _browser_or_skip() -> None:
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    missing = f"Chromium is not installed at {CHROMIUM}: `make test` as root (or `make browser`) installs it"
    required = os.environ.get(REQUIRE, "") not in ("", "0")
    if required or os.environ.get("CI"):
        why = f"{REQUIRE} is set" if required else "CI is set"
        pytest.fail(f"{missing}; the browser test is required here ({why}): it must run, not be skipped")
    pytest.skip(missing)


async def test_a_person_signs_in_looks_a_member_up_sees_charts_and_a_live_earn(
    pos: Pos, tmp_path: Path
) -> None:
    _browser_or_skip()
    from playwright.async_api import async_playwright

    api: Api = pos.api
    base = str(api.client.base_url).rstrip("/")
    viewer = await api.channel_key("console", ["read", "analytics"], kind="internal")
    member_id = await api.enrol(pos.key, phone="+8613800138000")
    earned = await api.post(
        f"/v1/members/{member_id}/earn",
        {"order_ref": "browser-1", "amount": "1234.50", "currency": "CNY"},
        key=pos.key,
    )
    assert earned.status_code == 201, earned.text
    view = (
        await api.get(f"/v1/members/{member_id}?min_position={earned.json()['position']}", key=viewer)
    ).json()
    available = view["balance"]["available"]
    assert available > 0

    requests: list[str] = []
    problems: list[str] = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport=PHONE)
            page.set_default_timeout(WAIT_MS)
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: _note(message, problems))

            # Sign in: the key goes into sessionStorage, never into a URL.
            await page.goto(f"{base}/console")
            await page.fill("#key", viewer)
            await page.click("#sign-in-form button[type=submit]")
            await page.wait_for_selector("#lookup-form", state="visible")
            assert await page.evaluate("sessionStorage.getItem('loyalty.console.key')") == viewer

            # Member 360 by phone, written as a person would: the service normalises it.
            await page.select_option("#lookup-kind", "phone")
            await page.fill("#lookup-value", "138 0013 8000")
            await page.click("#lookup-form button[type=submit]")
            await page.wait_for_selector("#member-view", state="visible")
            assert await page.text_content("#m-id") == member_id
            shown = await page.text_content("#m-balance .figure.main .value")
            assert _digits(shown) == available
            await page.wait_for_selector("#m-lots tbody tr")
            await page.wait_for_selector("#m-history tbody tr")
            await page.screenshot(path=str(tmp_path / "member.png"), full_page=True)

            # Analytics: a chart is drawn from the service's figures.
            await page.click("button[data-tab=analytics]")
            await page.wait_for_function(
                "() => Chart.getChart('chart-segments')?.data.datasets[0].data.length > 0"
            )
            drawn = await page.evaluate("() => Chart.getChart('chart-segments').data.datasets[0].data")
            counts = (await api.get("/v1/analytics/segments", key=viewer)).json()["segments"]
            assert drawn == [s["members"] for s in counts]

            # Live: an earn made now appears in the view as it is committed.
            await page.click("button[data-tab=live]")
            await page.wait_for_selector("#live-state.on")
            again = await api.post(
                f"/v1/members/{member_id}/earn",
                {"order_ref": "browser-2", "amount": "88.00", "currency": "CNY"},
                key=pos.key,
            )
            assert again.status_code == 201, again.text
            row = page.locator(f"#live-table tbody tr[data-position='{again.json()['position']}']")
            await row.wait_for()
            assert "points earned" in (await row.text_content() or "")
            await page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        finally:
            await browser.close()

    assert requests
    assert all(url.startswith(base + "/") for url in requests), [
        u for u in requests if not u.startswith(base)
    ]
    assert not any(viewer in url for url in requests)
    assert not problems, problems


def _note(message: Any, problems: list[str]) -> None:
    text = message.text
    # Anything the browser complains about is a fault: a failed read (every endpoint the console
    # reads exists, campaigns included), a script error, a policy violation above all.
    if message.type == "error":
        problems.append(f"console {message.type}: {text}")
    if "Content Security Policy" in text:
        problems.append(f"policy violation: {text}")


def _digits(text: str | None) -> int:
    return int(re.sub(r"\D", "", text or ""))


def test_the_browser_test_says_why_it_cannot_run_where_chromium_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Where the browser is not required a missing Chromium skips with the way to install it;
    where it is (LOYALTY_REQUIRE_BROWSER, as .ci/run sets it, or CI) it fails saying why."""
    monkeypatch.setattr(f"{__name__}.CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    for unset in (None, "", "0"):
        if unset is None:
            monkeypatch.delenv(REQUIRE, raising=False)
        else:
            monkeypatch.setenv(REQUIRE, unset)
        with pytest.raises(pytest.skip.Exception, match="make browser"):
            _browser_or_skip()
    monkeypatch.setenv(REQUIRE, "1")
    with pytest.raises(pytest.fail.Exception, match="required here \\(LOYALTY_REQUIRE_BROWSER is set\\)"):
        _browser_or_skip()
    monkeypatch.delenv(REQUIRE)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required here \\(CI is set\\)"):
        _browser_or_skip()


def test_ci_requires_the_browser_test() -> None:
    """`.ci/run` sets LOYALTY_REQUIRE_BROWSER before the tests: a CI run never skips the browser."""
    script = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    exported = script.index(f"export {REQUIRE}=1")
    assert exported < script.index("make test"), "set after the tests run"
