"""The Host's HTTP handlers and its one route list.

Handlers are thin: parse and validate, call `Cluster` (or the environment
manager, `environments.py`), shape the JSON. The OpenAPI document
(`openapi.yaml`, served at /api/openapi.yaml) lists every route here; a test
keeps the two equal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .. import __version__, naming
from ..errors import HakuRiverError, NotFound, ValidationError
from ..ids import parse_id
from ..models import GpuInfo, NodeResources, NumaNode, TaskState
from ..parsing import validate_env_name, validate_node_name
from ..webapi import json_response, query_int, read_json_object, require_type
from .cluster import Cluster
from .db import NodeRecord
from .environments import Progress
from .keys import CLUSTER, CONFIG, DB, ENVIRONMENTS, LIVENESS
from .shell import bridge_websocket
from .submission import MAX_TARGETS, SUBMIT_FIELDS, parse_submission

log = logging.getLogger(__name__)

MAX_LIST = 1000
MAX_WAIT_SECONDS = 300.0
LOG_CHUNK = 1 << 20


def _task_id(request: web.Request) -> int:
    return parse_id(request.match_info["task_id"])


# ----------------------------------------------------------------- tasks
async def submit_tasks(request: web.Request) -> web.Response:
    data = await read_json_object(request, SUBMIT_FIELDS)
    req = parse_submission(data, request.app[CONFIG])
    batch_id, tasks = await request.app[CLUSTER].submit(req)
    return json_response(
        {"batch_id": str(batch_id), "task_ids": [str(t.id) for t in tasks], "tasks": [t.to_json() for t in tasks]},
        status=201,
    )


async def list_tasks(request: web.Request) -> web.Response:
    states = None
    if request.query.get("state"):
        try:
            states = {TaskState(s) for s in request.query["state"].split(",")}
        except ValueError:
            raise ValidationError(
                f"unknown state in {request.query['state']!r}; states are: {', '.join(s.value for s in TaskState)}"
            ) from None
    node = request.query.get("node") or None
    if node is not None:
        validate_node_name(node)
    limit = query_int(request, "limit", 100, minimum=1, maximum=MAX_LIST)
    before = request.query.get("before")
    before_id = parse_id(before) if before else None
    # One row more than asked tells whether an older page exists.
    tasks = await request.app[DB].list_tasks(states=states, node=node, limit=limit + 1, before_id=before_id)
    more = len(tasks) > limit
    tasks = tasks[:limit]
    next_before = str(tasks[-1].id) if more else None
    return json_response({"tasks": [t.to_json() for t in tasks], "next_before": next_before})


async def get_task(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    task = await request.app[DB].get_task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return json_response(task.to_json())


async def kill_task(request: web.Request) -> web.Response:
    return json_response((await request.app[CLUSTER].kill(_task_id(request))).to_json())


async def pause_task(request: web.Request) -> web.Response:
    return json_response((await request.app[CLUSTER].pause(_task_id(request))).to_json())


async def resume_task(request: web.Request) -> web.Response:
    return json_response((await request.app[CLUSTER].resume(_task_id(request))).to_json())


async def wait_tasks(request: web.Request) -> web.Response:
    data = await read_json_object(request, {"task_ids", "timeout"})
    raw_ids = require_type(data, "task_ids", list)
    # As many ids as one submission can create, so a batch is waited in one call.
    if not raw_ids or len(raw_ids) > MAX_TARGETS:
        raise ValidationError(f"'task_ids' must hold between 1 and {MAX_TARGETS} ids")
    ids = [parse_id(i) for i in raw_ids]
    timeout = float(require_type(data, "timeout", (int, float), required=False, default=30))
    if not 0 <= timeout <= MAX_WAIT_SECONDS:
        raise ValidationError(f"'timeout' must be between 0 and {MAX_WAIT_SECONDS:.0f} seconds")
    tasks = await request.app[CLUSTER].wait_final(ids, timeout)
    found = {t.id for t in tasks}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise NotFound(f"no task {', '.join(missing)}")
    return json_response({"tasks": [t.to_json() for t in tasks], "done": all(t.state.is_final for t in tasks)})


def _read_log(path: str, offset: int | None, tail: int | None) -> tuple[bytes, int]:
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if tail is not None:
                start = _tail_start(fh, size, tail)
            else:
                start = min(offset or 0, size)
            fh.seek(start)
            data = fh.read(LOG_CHUNK)
            return data, start + len(data)
    except FileNotFoundError:
        return b"", offset or 0


def _tail_start(fh: Any, size: int, lines: int) -> int:
    """Byte offset where the last `lines` lines begin."""
    if lines == 0:
        return size
    pos, found, block = size, 0, 8192
    # A trailing newline ends the last line; it does not start a new one.
    fh.seek(max(size - 1, 0))
    if size and fh.read(1) == b"\n":
        pos -= 1
    while pos > 0:
        step = min(block, pos)
        fh.seek(pos - step)
        chunk = fh.read(step)
        for i in range(len(chunk) - 1, -1, -1):
            if chunk[i] == 0x0A:
                found += 1
                if found == lines:
                    return pos - step + i + 1
        pos -= step
    return 0


async def task_logs(request: web.Request) -> web.StreamResponse:
    task_id = _task_id(request)
    task = await request.app[DB].get_task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    stream = request.query.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ValidationError("query parameter 'stream' must be 'stdout' or 'stderr'")
    offset = query_int(request, "offset", 0)
    tail = query_int(request, "tail", None, maximum=1_000_000)
    shared = request.app[CONFIG].paths.shared_dir
    path = naming.stdout_path(shared, task_id) if stream == "stdout" else naming.stderr_path(shared, task_id)
    data, next_offset = await asyncio.to_thread(_read_log, path, offset, tail)
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={"X-HakuRiver-Next-Offset": str(next_offset), "X-HakuRiver-Task-State": str(task.state)},
    )


# ----------------------------------------------------------------- nodes
def node_json(node: NodeRecord, cluster: Cluster) -> dict[str, Any]:
    used = cluster.allocated(node.hostname)
    return {
        "hostname": node.hostname,
        "url": node.url,
        "online": node.online,
        "cores": node.cores,
        "memory": node.memory,
        "numa": [n.to_json() for n in node.numa],
        "gpus": [g.to_json() for g in node.gpus],
        "registered_at": node.registered_at,
        "last_heartbeat": node.last_heartbeat,
        "stats": node.stats,
        "allocated": {
            "cores": used.cores,
            "memory": used.memory,
            "gpus": sorted(used.gpus),
            "numa": {
                str(k): {"cores": used.numa_cores.get(k, 0), "memory": used.numa_memory.get(k, 0)}
                for k in sorted(set(used.numa_cores) | set(used.numa_memory))
            },
        },
    }


async def list_nodes(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    nodes = await request.app[DB].list_nodes()
    return json_response({"nodes": [node_json(n, cluster) for n in nodes]})


async def get_node(request: web.Request) -> web.Response:
    name = validate_node_name(request.match_info["hostname"])
    node = await request.app[DB].get_node(name)
    if node is None:
        raise NotFound(f"no node {name}")
    return json_response(node_json(node, request.app[CLUSTER]))


async def health(request: web.Request) -> web.Response:
    db = request.app[DB]
    nodes = await db.list_nodes()
    counts = await db.count_tasks_by_state()
    return json_response(
        {
            "status": "ok",
            "version": __version__,
            "nodes": {"online": sum(n.online for n in nodes), "offline": sum(not n.online for n in nodes)},
            "tasks": {str(k): v for k, v in counts.items()},
        }
    )


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("hakuriver.host").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="application/yaml")


# ---------------------------------------------------------- environments
OPERATION_KEEPALIVE = 10.0
"""Seconds between keepalive lines of an operation that has nothing new to say."""
UPLOAD_TYPES = ("application/x-tar", "application/octet-stream")


def _env_name(request: web.Request) -> str:
    return validate_env_name(request.match_info["name"])


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
    await envs.check_create_container(name, image, pull)
    return await stream_operation(request, lambda progress: envs.create_container(name, image, pull, progress))


async def start_env_container(request: web.Request) -> web.Response:
    return json_response(await request.app[ENVIRONMENTS].start_container(_env_name(request)))


async def stop_env_container(request: web.Request) -> web.Response:
    return json_response(await request.app[ENVIRONMENTS].stop_container(_env_name(request)))


async def delete_env_container(request: web.Request) -> web.Response:
    return json_response(await request.app[ENVIRONMENTS].delete_container(_env_name(request)))


async def env_shell(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    rows = query_int(request, "rows", 24, minimum=1, maximum=10000)
    cols = query_int(request, "cols", 80, minimum=1, maximum=10000)
    command = request.query.getall("cmd", []) or None
    envs = request.app[ENVIRONMENTS]
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
    return json_response({"deleted": await request.app[ENVIRONMENTS].delete_tarballs(name, version)})


async def import_env_image(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    data = await read_json_object(request, {"image", "pull"})
    image = require_type(data, "image", str)
    pull = require_type(data, "pull", bool, required=False, default=False)
    envs = request.app[ENVIRONMENTS]
    await envs.check_import_image(name, image, pull)
    return await stream_operation(request, lambda progress: envs.import_image(name, image, progress, pull=pull))


async def import_env_tar(request: web.Request) -> web.StreamResponse:
    name = _env_name(request)
    if request.content_type not in UPLOAD_TYPES:
        raise ValidationError(f"send the tarball as the body, with Content-Type {UPLOAD_TYPES[0]}")
    envs = request.app[ENVIRONMENTS]
    upload = await envs.receive_upload(request.content)
    return await stream_operation(request, lambda progress: envs.import_tar(name, upload, progress))


# --------------------------------------------------------- runner-facing
REGISTER_FIELDS = {"hostname", "url", "cores", "memory", "numa", "gpus", "tasks", "finishing"}
HEARTBEAT_FIELDS = {"hostname", "stats", "tasks", "finishing"}
REPORT_FIELDS = {"hostname", "state", "exit_code", "error"}


def _reported_tasks(data: dict[str, Any]) -> list[dict[str, Any]]:
    items = require_type(data, "tasks", list, required=False, default=[])
    out = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"task_id", "state"}:
            raise ValidationError('each entry of \'tasks\' must be {"task_id": ..., "state": ...}')
        state = item["state"]
        if state not in (TaskState.RUNNING, TaskState.PAUSED):
            raise ValidationError(f"a reported task must be running or paused, not {state!r}")
        out.append({"task_id": parse_id(item["task_id"]), "state": state})
    return out


async def runner_register(request: web.Request) -> web.Response:
    data = await read_json_object(request, REGISTER_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    url = require_type(data, "url", str)
    if not url.startswith(("http://", "https://")):
        raise ValidationError("'url' must be an http(s) URL")
    cores = require_type(data, "cores", int)
    memory = require_type(data, "memory", int)
    if cores < 1 or memory < 1:
        raise ValidationError("'cores' and 'memory' must be positive")
    try:
        numa = tuple(NumaNode.from_json(n) for n in require_type(data, "numa", list, required=False, default=[]))
        gpus = tuple(GpuInfo.from_json(g) for g in require_type(data, "gpus", list, required=False, default=[]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError(f"malformed 'numa' or 'gpus': {exc}") from None
    res = NodeResources(hostname=hostname, url=url, cores=cores, memory=memory, numa=numa, gpus=gpus)
    finishing = [parse_id(i) for i in require_type(data, "finishing", list, required=False, default=[])]
    record = await request.app[LIVENESS].register(res, _reported_tasks(data), finishing)
    config = request.app[CONFIG]
    return json_response({"hostname": record.hostname, "heartbeat_interval": config.timing.heartbeat_interval})


async def runner_heartbeat(request: web.Request) -> web.Response:
    data = await read_json_object(request, HEARTBEAT_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    stats = require_type(data, "stats", dict, required=False, default={})
    finishing = [parse_id(i) for i in require_type(data, "finishing", list, required=False, default=[])]
    kills = await request.app[LIVENESS].heartbeat(hostname, stats, _reported_tasks(data), finishing)
    return json_response({"kill": [str(k) for k in kills]})


async def runner_report(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    data = await read_json_object(request, REPORT_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    try:
        state = TaskState(require_type(data, "state", str))
    except ValueError:
        raise ValidationError(f"unknown state {data.get('state')!r}") from None
    exit_code = require_type(data, "exit_code", int, required=False)
    error = require_type(data, "error", str, required=False)
    task = await request.app[CLUSTER].apply_report(hostname, task_id, state, exit_code=exit_code, error=error)
    return json_response({"task_id": str(task.id), "state": str(task.state)})


ROUTES = [
    web.post("/api/tasks", submit_tasks),
    web.get("/api/tasks", list_tasks),
    web.post("/api/tasks/wait", wait_tasks),
    web.get("/api/tasks/{task_id}", get_task),
    web.post("/api/tasks/{task_id}/kill", kill_task),
    web.post("/api/tasks/{task_id}/pause", pause_task),
    web.post("/api/tasks/{task_id}/resume", resume_task),
    web.get("/api/tasks/{task_id}/logs", task_logs),
    web.get("/api/nodes", list_nodes),
    web.get("/api/nodes/{hostname}", get_node),
    web.get("/api/health", health),
    web.get("/api/openapi.yaml", openapi),
    web.get("/api/environments/containers", list_env_containers),
    web.post("/api/environments/containers/{name}", create_env_container),
    web.delete("/api/environments/containers/{name}", delete_env_container),
    web.post("/api/environments/containers/{name}/start", start_env_container),
    web.post("/api/environments/containers/{name}/stop", stop_env_container),
    web.get("/api/environments/containers/{name}/shell", env_shell),
    web.post("/api/environments/containers/{name}/tarball", commit_env),
    web.get("/api/environments/tarballs", list_env_tarballs),
    web.delete("/api/environments/tarballs/{name}", delete_env_tarballs),
    web.post("/api/environments/tarballs/{name}/image", import_env_image),
    web.post("/api/environments/tarballs/{name}/tar", import_env_tar),
    web.post("/api/runner/register", runner_register),
    web.post("/api/runner/heartbeat", runner_heartbeat),
    web.post("/api/runner/tasks/{task_id}/status", runner_report),
]
