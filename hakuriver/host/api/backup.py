"""The backup route: an online, consistent copy of the Host database (admin only)."""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web

from ..accounts import principal_of, require_admin
from ..backup import Snapshot, take_snapshot
from ..keys import DB

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MEDIA_TYPE = "application/vnd.sqlite3"


async def backup(request: web.Request) -> web.StreamResponse:
    """Stream a checked snapshot of the database (see `host/backup.py`).

    The copy is made and checked before the first byte is sent, so an error
    before then is an ordinary JSON error answer. The body's length and sha256
    are in the headers: a client that gets less (the Host died mid-answer) can
    tell, and keeps nothing."""
    principal = principal_of(request)
    require_admin(principal, "take backups")
    db_path = request.app[DB].path
    started = time.monotonic()
    snapshot: Snapshot = await asyncio.to_thread(take_snapshot, db_path)
    try:
        log.info(
            "backup for %s: %d bytes, schema version %d, copied and checked in %.2fs",
            principal.name,
            snapshot.size,
            snapshot.schema_version,
            time.monotonic() - started,
        )
        resp = web.StreamResponse(
            headers={
                "Content-Type": MEDIA_TYPE,
                "Content-Disposition": 'attachment; filename="hakuriver-host-backup.db"',
                "Cache-Control": "no-store",
                "X-HakuRiver-Schema-Version": str(snapshot.schema_version),
                "X-HakuRiver-Sha256": snapshot.sha256,
            }
        )
        resp.content_length = snapshot.size
        await resp.prepare(request)
        offset = 0
        try:
            while offset < snapshot.size:
                chunk = await asyncio.to_thread(snapshot.read, offset, CHUNK)
                if not chunk:
                    break
                await resp.write(chunk)
                offset += len(chunk)
            await resp.write_eof()
        except ConnectionError:
            # The client went away; it keeps nothing of a short body. Not an error of ours.
            # aiohttp says so as ConnectionResetError, or as the transport's BrokenPipeError
            # when the peer closed while a write was still being flushed.
            log.info("backup for %s: the client left after %d of %d bytes", principal.name, offset, snapshot.size)
        return resp
    finally:
        await asyncio.to_thread(snapshot.close)
