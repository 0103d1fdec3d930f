"""`GET /metrics`: the Host's Prometheus metrics (`host/metrics.py`).

For a Prometheus server presenting `metrics.scrape_token` (accepted on this
route only) or an admin; a plain user's token is refused (403). The text is
built from memory: a scrape reads no database and never holds the event
loop for long, so it cannot delay a heartbeat.
"""

from __future__ import annotations

from aiohttp import web

from ...errors import Forbidden
from ..accounts import principal_of
from ..keys import CLUSTER, DB, METRICS
from ..metrics import CONTENT_TYPE_LATEST


async def metrics(request: web.Request) -> web.Response:
    principal = principal_of(request)
    if not (principal.is_admin or principal.is_scraper):
        raise Forbidden("only an admin or the metrics scrape token (metrics.scrape_token) may read /metrics")
    body = await request.app[METRICS].render(request.app[CLUSTER], request.app[DB].task_counts())
    response = web.Response(body=body)
    # CONTENT_TYPE_LATEST carries its own parameters (version, charset).
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response
