"""The web dashboard: static pages the Host serves on its own port.

The pages (`hakuriver/web/`, installed with the package, with their vendored
libraries under `web/vendor/`, see its MANIFEST.json) are read into memory
once when the Host starts, in a thread, and served from there: no file is
read while a request waits, and nothing is fetched from any network at run
time. They are a single-page app: `/dashboard/` is its HTML, everything else
is under `/dashboard/static/`. What they show they fetch from the JSON API
with the browser session (`sessions.py`), as the user who logged in.

These routes are the only ones without a credential: they hold no data, only
code. Every answer carries a strict Content-Security-Policy (scripts from the
Host only, no inline script, no framing), so even a task name that smuggles
markup cannot run script in a logged-in page.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

from ..errors import NotFound

DASHBOARD_PATH = "/dashboard/"
STATIC_PREFIX = "/dashboard/static/"

CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # uPlot and the bars set element styles
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".json": "application/json"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def web_root() -> Traversable:
    return resources.files("hakuriver").joinpath("web")


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every file of the web tree, by its path under it ("index.html",
    "vendor/uPlot.esm.js"). Blocking: run it in a thread."""
    root = web_root() if root is None else root
    assets: dict[str, Asset] = {}
    stack: list[tuple[str, Traversable]] = [("", root)]
    while stack:
        prefix, folder = stack.pop()
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                stack.append((name + "/", entry))
            elif entry.is_file() and not entry.name.startswith("."):
                body = entry.read_bytes()
                suffix = "." + entry.name.rpartition(".")[2]
                kind = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                assets[name] = Asset(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return assets


ASSETS = web.AppKey("dashboard_assets", dict)


def is_public(request: web.Request) -> bool:
    """The dashboard's own files need no credential (see the module doc)."""
    if request.method not in ("GET", "HEAD"):
        return False
    path = request.path
    return path in ("/", "/dashboard", DASHBOARD_PATH) or path.startswith(STATIC_PREFIX)


def _serve(request: web.Request, name: str) -> web.Response:
    asset = request.app[ASSETS].get(name)
    if asset is None:
        raise NotFound(f"no such dashboard file: {name}")
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith("text/") or asset.content_type.endswith("json") else None
    return web.Response(body=asset.body, content_type=asset.content_type, charset=charset, headers=headers)


async def index(request: web.Request) -> web.Response:
    return _serve(request, "index.html")


async def static(request: web.Request) -> web.Response:
    name = request.match_info["path"]
    if name == "index.html" or ".." in name.split("/"):
        raise NotFound(f"no such dashboard file: {name}")
    return _serve(request, name)


async def to_dashboard(request: web.Request) -> web.Response:
    raise web.HTTPFound(DASHBOARD_PATH)


async def dashboard_assets(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: read the web tree once, off the event loop."""
    app[ASSETS] = await asyncio.to_thread(load_assets)
    yield


ROUTES = [
    web.get("/", to_dashboard, allow_head=True),
    web.get("/dashboard", to_dashboard, allow_head=True),
    web.get(DASHBOARD_PATH, index, allow_head=True),
    web.get(STATIC_PREFIX + "{path:.+}", static, allow_head=True),
]
