"""The Runner's HTTP handlers (called by the Host only; token required)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..errors import HakuRiverError, ValidationError
from ..ids import parse_id
from ..runrequest import RUN_FIELDS, RunRequest
from ..webapi import MAX_BATCH_ITEMS, error_body, json_response, read_json_object, require_type
from .keys import RESOURCES, SUPERVISOR
from .supervisor import Supervisor

log = logging.getLogger(__name__)

START_REPLY_WAIT_SECONDS = 0.025
"""How long the answer to an order waits for its tasks to start: those that
started by then are reported `running` in it (the Host applies that as their
report), which spares the Host a report request per task. A container that
takes longer (an image to load) is reported on its own as before."""


async def run_task(request: web.Request) -> web.Response:
    """One task's order: 202 once it is persisted; its outcome says `"state":
    "running"` when it started within `START_REPLY_WAIT_SECONDS`."""
    order = RunRequest.from_json(await read_json_object(request, RUN_FIELDS))
    supervisor = request.app[SUPERVISOR]

    async def take() -> list[dict[str, Any]]:
        return [{"task_id": str(order.task_id), "status": await supervisor.accept(order)}]

    (answer,) = await _take_and_answer(supervisor, [order.task_id], take)
    return json_response(answer, status=202)


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

    async def take() -> list[dict[str, Any]]:
        outcomes = await asyncio.gather(*(_accept(supervisor, item) for item in items))
        return [{"task_id": str(task_id), **outcome} for task_id, outcome in zip(ids, outcomes, strict=True)]

    return json_response({"results": await _take_and_answer(supervisor, ids, take)})


async def _take_and_answer(
    supervisor: Supervisor, ids: list[int], take: Callable[[], Awaitable[list[dict[str, Any]]]]
) -> list[dict[str, Any]]:
    """An order's outcomes (`take()` accepts its tasks), once each task it
    newly accepted has started or `START_REPLY_WAIT_SECONDS` have passed: a
    task that started says `"state": "running"` in its outcome, and is not
    reported on its own (`Notices.release`). The starts are held before any
    task is accepted: one taken early in a batch may start while the others
    are still being taken."""
    held = supervisor.notices.hold(ids)
    try:
        results = await take()
    except BaseException:
        supervisor.notices.abandon(held)
        raise
    accepted = [int(r["task_id"]) for r in results if r["status"] == "accepted"]
    started = await supervisor.notices.release(held, accepted, START_REPLY_WAIT_SECONDS)
    for result in results:
        task_id = int(result["task_id"])
        if task_id in started:
            result["state"] = "running"
        elif result["status"] == "already_accepted":
            # A copy of an order answered before (a restarted Host sends its
            # `assigning` tasks again): that answer may never have been read.
            entry = supervisor.tasks.get(task_id)
            if entry is not None and entry.started and not entry.paused and not entry.kill_requested:
                result["state"] = "running"
    return results


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
