"""The console's files: served by the service itself with their content types, caching and a
strict Content-Security-Policy; nothing they load comes from another origin; all ship in the
package."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest_asyncio

from service.console import ASSETS, CONTENT_SECURITY_POLICY
from tests.api.conftest import Api

STATIC = Path(__file__).parents[2] / "service" / "console" / "static"
CHART_JS = "/console/vendor/chart.js-4.6.1/chart.umd.min.js"


class References(HTMLParser):
    """Every URL an HTML document loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "action") and value]


@pytest_asyncio.fixture
async def page(api: Api) -> str:
    response = await api.client.get("/console")
    assert response.status_code == 200
    return response.text


async def test_the_page_is_served_without_a_key_with_a_strict_policy(api: Api) -> None:
    response = await api.client.get("/console")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert policy == CONTENT_SECURITY_POLICY
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "img-src", "connect-src"):
        assert directives[directive] == "'self'", directive  # no inline code, no other origin
    assert directives["form-action"] == "'none'"  # a key typed in the form never becomes a URL
    assert directives["frame-ancestors"] == "'none'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-cache"
    assert (await api.client.get("/console/")).text == response.text


async def test_every_file_the_page_loads_is_served_with_its_type_and_caching(api: Api, page: str) -> None:
    parser = References()
    parser.feed(page)
    assert CHART_JS in parser.urls
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for url in parser.urls:
        response = await api.client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"].startswith(types[Path(url).suffix]), url
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        # A versioned library is cached for good; the console's own files are revalidated.
        expected = "public, max-age=31536000, immutable" if "/vendor/" in url else "no-cache"
        assert response.headers["cache-control"] == expected, url
        again = await api.client.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304, url
        assert again.content == b""


async def test_nothing_the_console_loads_comes_from_another_origin(page: str) -> None:
    parser = References()
    parser.feed(page)
    assert parser.urls
    for url in parser.urls:
        assert url.startswith("/console/"), url  # not "//host", "http(s)://", "data:"
    for name, asset in ASSETS.items():
        if name.startswith("vendor/") or not name.endswith((".js", ".css", ".html")):
            continue
        text = asset.body.decode()
        assert not re.search(r"\b(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text, name
    script = ASSETS["console.js"].body.decode()
    assert not re.search(r"\bimport\b[^;]*\bfrom\b", script)  # one module: nothing fetched by import
    assert set(re.findall(r"fetch\(\s*[`\"']([^`\"'$?]*)", script)) == {"/v1/events/live"}
    assert set(re.findall(r"api\(\s*[`\"'](/[a-z0-9/_-]*)", script)) >= {
        "/v1/program",
        "/v1/analytics/liability",
    }
    assert all(p.startswith("/v1/") for p in re.findall(r"api\(\s*[`\"'](/[^`\"'$?]*)", script))
    # The library is the published file with its licences beside it.
    vendored = ASSETS[CHART_JS.removeprefix("/console/")].body
    assert vendored.startswith(b"/*!\n * Chart.js v4.6.1\n")
    for licence in ("vendor/chart.js-4.6.1/LICENSE.md", "vendor/chart.js-4.6.1/LICENSE-kurkle-color.md"):
        assert b"MIT License" in ASSETS[licence].body


async def test_a_file_the_console_does_not_have_is_404(api: Api) -> None:
    for path in ("/console/nothing.js", "/console/../service/app.py", "/console/vendor/"):
        response = await api.client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"


def test_every_file_of_the_console_ships_in_the_package() -> None:
    """pyproject's package data names every file the console serves (an installed wheel has them)."""
    config = tomllib.loads((STATIC.parents[2] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service.console"]
    on_disk = {p.relative_to(STATIC).as_posix() for p in STATIC.rglob("*") if p.is_file()}
    assert set(ASSETS) <= on_disk
    for name in on_disk:
        assert any(fnmatch.fnmatch(f"static/{name}", pattern) for pattern in patterns), name
        # fnmatch's `*` crosses `/`, setuptools' does not: the depth must match too.
        assert any(pattern.count("/") == f"static/{name}".count("/") for pattern in patterns), name
