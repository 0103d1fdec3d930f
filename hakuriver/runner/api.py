"""The Runner's HTTP handlers (called by the Host only; token required)."""

from __future__ import annotations

from aiohttp import web

from ..ids import parse_id
from ..runrequest import RUN_FIELDS, RunRequest
from ..webapi import json_response, read_json_object
from .keys import RESOURCES, SUPERVISOR


async def run_task(request: web.Request) -> web.Response:
    order = RunRequest.from_json(await read_json_object(request, RUN_FIELDS))
    status = await request.app[SUPERVISOR].accept(order)
    return json_response({"task_id": str(order.task_id), "status": status}, status=202)


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
    web.get("/api/tasks", list_tasks),
    web.post("/api/tasks/{task_id}/kill", kill_task),
    web.post("/api/tasks/{task_id}/pause", pause_task),
    web.post("/api/tasks/{task_id}/resume", resume_task),
    web.get("/api/health", health),
]
