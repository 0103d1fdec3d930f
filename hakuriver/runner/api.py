"""The Runner's HTTP handlers (called by the Host only; token required)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from ..errors import HakuRiverError, ValidationError
from ..ids import parse_id
from ..runrequest import RUN_FIELDS, RunRequest
from ..webapi import MAX_BATCH_ITEMS, error_body, json_response, read_json_object, require_type
from .keys import RESOURCES, SUPERVISOR
from .supervisor import Supervisor

log = logging.getLogger(__name__)


async def run_task(request: web.Request) -> web.Response:
    order = RunRequest.from_json(await read_json_object(request, RUN_FIELDS))
    status = await request.app[SUPERVISOR].accept(order)
    return json_response({"task_id": str(order.task_id), "status": status}, status=202)


async def run_tasks(request: web.Request) -> web.Response:
    """Several tasks in one order (`POST /api/tasks/batch`): each one is taken
    exactly as `POST /api/tasks` takes it (idempotent per task id, persisted
    before this answer), and each gets its own outcome, in order:
    `accepted`, `already_accepted`, or `refused` with the status and error
    the single route would have answered. Only a malformed batch (not a list
    of objects with task ids, too many) is refused as a whole."""
    data = await read_json_object(request, {"tasks"})
    items = require_type(data, "tasks", list)
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValidationError(f"'tasks' must hold 1 to {MAX_BATCH_ITEMS} run requests, not {len(items)}")
    ids = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationError(f"tasks[{index}]: a run request is a JSON object")
        try:
            ids.append(parse_id(item.get("task_id")))
        except ValidationError as exc:
            raise ValidationError(f"tasks[{index}]: {exc.message}") from None
    supervisor = request.app[SUPERVISOR]
    outcomes = await asyncio.gather(*(_accept(supervisor, item) for item in items))
    return json_response(
        {"results": [{"task_id": str(task_id), **outcome} for task_id, outcome in zip(ids, outcomes, strict=True)]}
    )


async def _accept(supervisor: Supervisor, item: dict[str, Any]) -> dict[str, Any]:
    """One task of a batch: what the single route would answer, as an outcome."""
    try:
        status = await supervisor.accept(RunRequest.from_json(item))
    except HakuRiverError as exc:
        if exc.status >= 500:
            log.warning("taking task %s failed: %s", item.get("task_id"), exc.message)
        return {"status": "refused", "http_status": exc.status, **error_body(exc.code, exc.message)}
    except Exception:
        log.exception("taking task %s failed", item.get("task_id"))
        return {"status": "refused", "http_status": 500, **error_body("internal", "internal error; see the runner log")}
    return {"status": status}


async def _control(request: web.Request, action: str) -> web.Response:
    task_id = parse_id(request.match_info["task_id"])
    await getattr(request.app[SUPERVISOR], action)(task_id)
    return json_response({"task_id": str(task_id), "status": f"{action} sent"})


async def kill_task(request: web.Request) -> web.Response:
    return await _control(request, "kill")


async def pause_task(request: web.Request) -> web.Response:
    return await _control(request, "pause")


async def resume_task(request: web.Request) -> web.Response:
    return await _control(request, "resume")


async def list_tasks(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return json_response({"tasks": sup.running_report(), "holding": [str(i) for i in sup.holding_ids()]})


async def health(request: web.Request) -> web.Response:
    res = request.app[RESOURCES]
    sup = request.app[SUPERVISOR]
    return json_response(
        {"status": "ok", "hostname": res.hostname, "tasks": len(sup.tasks), "executors": sorted(sup.executors)}
    )


ROUTES = [
    web.post("/api/tasks", run_task),
    web.post("/api/tasks/batch", run_tasks),
    web.get("/api/tasks", list_tasks),
    web.post("/api/tasks/{task_id}/kill", kill_task),
    web.post("/api/tasks/{task_id}/pause", pause_task),
    web.post("/api/tasks/{task_id}/resume", resume_task),
    web.get("/api/health", health),
]
