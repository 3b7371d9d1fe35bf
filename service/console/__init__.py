"""The console at /console: a web page for people (member 360, analytics charts, live events).

Its files ship in the package (`static/`, package data) and are served from memory: read once at
import, each with its content type, an ETag, and a caching rule: the page and the console's own
script and style are revalidated on every load (`no-cache` + ETag: a new release is seen at
once), a vendored library lives under a folder named for its version and is cached for good.
Every answer carries a strict Content-Security-Policy: scripts, styles, images and requests only
from this origin, no inline code, no frames, no form submissions (the sign-in form is handled in
script; a key must never end up in a URL).

The page holds no data: it is public, and everything it shows comes from the API with the key
the person signs in with (kept in the tab's sessionStorage, sent as `Authorization: Bearer`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from litestar import Request, Response, get
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

PREFIX = "/console"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html",  # Litestar adds "; charset=utf-8" to text types
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".md": "text/plain",
}
_REVALIDATE = "no-cache"
_FOREVER = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str
    cache_control: str


def _load() -> dict[str, Asset]:
    """Every file under static/, by its path below /console/."""
    assets: dict[str, Asset] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(folder: resources.abc.Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            suffix = "." + entry.name.rpartition(".")[2]
            if suffix not in _TYPES:
                continue
            body = entry.read_bytes()
            assets[name] = Asset(
                body=body,
                content_type=_TYPES[suffix],
                etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
                cache_control=_FOREVER if name.startswith("vendor/") else _REVALIDATE,
            )

    walk(root, "")
    return assets


ASSETS = _load()


def _answer(request: Request[object, object, object], asset: Asset) -> Response[bytes]:
    headers = {
        "ETag": asset.etag,
        "Cache-Control": asset.cache_control,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }
    if asset.etag in (request.headers.get("if-none-match") or "").replace(" ", "").split(","):
        return Response(b"", status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.content_type, headers=headers)


@get(PREFIX, include_in_schema=False, sync_to_thread=False)
def console_page(request: Request[object, object, object]) -> Response[bytes]:
    """The console's page."""
    return _answer(request, ASSETS["index.html"])


@get(PREFIX + "/{name:path}", include_in_schema=False, sync_to_thread=False)
def console_asset(request: Request[object, object, object], name: FromPath[str]) -> Response[bytes]:
    """One of the console's files (the page again at /console/)."""
    asset = ASSETS.get(name.lstrip("/") or "index.html")
    if asset is None:
        raise NotFoundException(f"the console has no file {name!r}")
    return _answer(request, asset)


ROUTES = [console_page, console_asset]
