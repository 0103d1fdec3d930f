"""Environment routes: containers on the Host, their shells, tarball versions
and imports. Long operations stream NDJSON progress (`stream_operation`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...connlimits import streams_body
from ...errors import Forbidden, HakuRiverError, ValidationError
from ...parsing import validate_env_name
from ...webapi import json_response, query_int, read_json_object, require_type
from ..accounts import principal_of, require_owner_or_admin
from ..environments import Progress
from ..keys import CONFIG, DB, ENVIRONMENTS
from ..shell import bridge_websocket

log = logging.getLogger(__name__)

OPERATION_KEEPALIVE = 10.0
"""Seconds between keepalive lines of an operation that has nothing new to say."""
UPLOAD_TYPES = ("application/x-tar", "application/octet-stream")


def _env_name(request: web.Request) -> str:
    return validate_env_name(request.match_info["name"])


async def _exists(request: web.Request, name: str) -> bool:
    envs = request.app[ENVIRONMENTS]
    if await envs.list_tarballs(name):
        return True
    try:
        return any(c["name"] == name for c in await envs.list_containers())
    except HakuRiverError:  # no engine: only tarballs can tell
        return False


async def authorize(request: web.Request, name: str, what: str, *, claim: bool = False) -> None:
    """Only an environment's owner, or an admin, may change it. The first user
    to create a name owns it (`claim`); the default environment and those from
    before users existed belong to the admins."""
    principal = principal_of(request)
    db = request.app[DB]
    owner = await db.environment_owner(name)
    if owner is None and (name == request.app[CONFIG].docker.default_container_name or await _exists(request, name)):
        owner = request.app[CONFIG].auth.admin_user
        if not principal.is_admin:
            raise Forbidden(f"environment {name!r} belongs to the admins; only an admin may {what} it")
    if owner is not None:
        require_owner_or_admin(principal, owner, f"{what} environments")
    elif claim:
        await db.set_environment_owner(name, principal.name, time.time())


async def stream_operation(
    request: web.Request, make: Callable[[Progress], Awaitable[dict[str, Any]]]
) -> web.StreamResponse:
    """Run a long environment operation, streaming its progress as NDJSON.

    One JSON object per line: `{"event": "progress", "stage", "message", ...}`,
    `{"event": "keepalive"}` when nothing happened for a while, and last
    either `{"event": "done", "result": {...}}` or `{"event": "error", "error":
    {"code", "message"}}` (the status is already 200 by then). Refusals known
    before the start are ordinary JSON errors instead. The operation runs to its
    end even if the client goes away.
    """
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def progress(stage: str, message: str, **extra: Any) -> None:
        loop.call_soon_threadsafe(events.put_nowait, {"event": "progress", "stage": stage, "message": message, **extra})

    op = request.app[ENVIRONMENTS].track(make(progress))
    resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"})
    await resp.prepare(request)
    connected = True

    async def send(event: dict[str, Any]) -> None:
        nonlocal connected
        if connected:
            try:
                await resp.write((json.dumps(event, separators=(",", ":")) + "\n").encode())
            except (ConnectionError, RuntimeError):
                connected = False

    while not op.done():
        getter = asyncio.ensure_future(events.get())
        done, _ = await asyncio.wait({getter, op}, timeout=OPERATION_KEEPALIVE, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            await send(getter.result())
        else:
            getter.cancel()
            if not done:
                await send({"event": "keepalive"})
    while not events.empty():
        await send(events.get_nowait())
    if op.cancelled():
        await send({"event": "error", "error": {"code": "unavailable", "message": "the Host is stopping"}})
    elif (exc := op.exception()) is None:
        await send({"event": "done", "result": op.result()})
    elif isinstance(exc, HakuRiverError):
        await send({"event": "error", "error": {"code": exc.code, "message": exc.message}})
    else:
        log.error("%s %s failed", request.method, request.path, exc_info=exc)
        await send({"event": "error", "error": {"code": "internal", "message": "internal error; see the Host log"}})
    if connected:
        try:
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass
    return resp


async def list_env_containers(request: web.Request) -> web.Response:
    return json_response({"containers": await request.app[ENVIRONMENTS].list_containers()})


async def create_env_container(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    data = await read_json_object(request, {"image", "pull"})
    image = require_type(data, "image", str)
    pull = require_type(data, "pull", bool, required=False, default=False)
    envs = request.app[ENVIRONMENTS]
    await authorize(request, name, "replace", claim=True)
    await envs.check_create_container(name, image, pull)
    return await stream_operation(request, lambda progress: envs.create_container(name, image, pull, progress))


async def start_env_container(request: web.Request) -> web.Response:
    name = _env_name(request)
    await authorize(request, name, "start")
    return json_response(await request.app[ENVIRONMENTS].start_container(name))


async def stop_env_container(request: web.Request) -> web.Response:
    name = _env_name(request)
    await authorize(request, name, "stop")
    return json_response(await request.app[ENVIRONMENTS].stop_container(name))


async def delete_env_container(request: web.Request) -> web.Response:
    name = _env_name(request)
    await authorize(request, name, "delete")
    return json_response(await request.app[ENVIRONMENTS].delete_container(name))


async def env_shell(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    rows = query_int(request, "rows", 24, minimum=1, maximum=10000)
    cols = query_int(request, "cols", 80, minimum=1, maximum=10000)
    command = request.query.getall("cmd", []) or None
    envs = request.app[ENVIRONMENTS]
    await authorize(request, name, "open a shell in")
    await envs.check_shell(name)  # refusals first, so that a plain GET reads the reason
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=1 << 20)
    if not ws.can_prepare(request).ok:
        raise ValidationError("this endpoint is a WebSocket: connect with an Upgrade: websocket request")
    session = await envs.open_shell(name, command, rows, cols, request.query.get("term", "xterm"))
    try:
        await ws.prepare(request)
    except BaseException:
        await session.close()
        raise
    await bridge_websocket(ws, session)
    return ws


async def commit_env(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    envs = request.app[ENVIRONMENTS]
    await authorize(request, name, "commit")
    await envs.check_commit(name)
    return await stream_operation(request, lambda progress: envs.create_tarball(name, progress))


async def list_env_tarballs(request: web.Request) -> web.Response:
    name = request.query.get("name") or None
    if name is not None:
        validate_env_name(name)
    return json_response({"tarballs": await request.app[ENVIRONMENTS].list_tarballs(name)})


async def delete_env_tarballs(request: web.Request) -> web.Response:
    name = _env_name(request)
    version = query_int(request, "version", None)
    await authorize(request, name, "delete")
    return json_response({"deleted": await request.app[ENVIRONMENTS].delete_tarballs(name, version)})


async def import_env_image(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    data = await read_json_object(request, {"image", "pull"})
    image = require_type(data, "image", str)
    pull = require_type(data, "pull", bool, required=False, default=False)
    envs = request.app[ENVIRONMENTS]
    await authorize(request, name, "replace", claim=True)
    await envs.check_import_image(name, image, pull)
    return await stream_operation(request, lambda progress: envs.import_image(name, image, progress, pull=pull))


@streams_body
async def import_env_tar(request: web.Request) -> web.StreamResponse:
    """The body streams to disk (`receive_upload`): refused with 413 above
    `docker.max_upload_size` and with 507 when the Host lacks the space, both
    before anything is stored when Content-Length says so."""
    name = _env_name(request)
    if request.content_type not in UPLOAD_TYPES:
        raise ValidationError(f"send the tarball as the body, with Content-Type {UPLOAD_TYPES[0]}")
    envs = request.app[ENVIRONMENTS]
    await authorize(request, name, "replace", claim=True)
    upload = await envs.receive_upload(request.content, request.content_length)
    return await stream_operation(request, lambda progress: envs.import_tar(name, upload, progress))
