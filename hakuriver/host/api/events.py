"""`GET /api/events`: server-sent events that say what changed (`changes.py`).

Each event is `event: changed` with `data: {"tasks": N, "nodes": M}`, the
topics' revisions; the first comes at once, the next when a revision moves
(at most one per `CHANGE_PERIOD`). A comment line every `KEEPALIVE` seconds
keeps proxies from closing an idle stream. A stream ends after `timeout`
seconds (at most `MAX_STREAM_SECONDS`); the browser's EventSource opens the
next by itself, `retry` milliseconds later. No data is in the events: the
page fetches what it shows through the API, as its user may see it.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from ...webapi import query_int
from ..accounts import principal_of
from ..keys import CHANGES

KEEPALIVE = 15.0
MAX_STREAM_SECONDS = 300
RETRY_MS = 1000


def event(revisions: dict[str, int]) -> bytes:
    return f"event: changed\ndata: {json.dumps(revisions, separators=(',', ':'))}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)  # authenticated: by a session or a bearer token
    timeout = query_int(request, "timeout", MAX_STREAM_SECONDS, minimum=1, maximum=MAX_STREAM_SECONDS)
    feed = request.app[CHANGES]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with feed.listen(principal.name) as listener:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        try:
            await response.write(f"retry: {RETRY_MS}\n".encode() + event(feed.snapshot()))
            while not feed.closed and (left := deadline - loop.time()) > 0:
                revisions = await listener.next(min(KEEPALIVE, left))
                await response.write(event(revisions) if revisions is not None else b": keepalive\n\n")
        except ConnectionError:  # the page went away (reset, or a broken pipe mid-write)
            pass
    return response
