"""Task routes: submit, list, status, wait, kill/pause/resume, logs."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from aiohttp import web

from ... import naming
from ...errors import NotFound, ValidationError
from ...ids import parse_id
from ...models import Task, TaskState
from ...parsing import parse_since, validate_node_name
from ...policy import check_priority, check_priority_allowed
from ...safefiles import UnsafeFile
from ...webapi import json_response, query_int, read_json_object, require_type
from ..accounts import Principal, principal_of, require_owner_or_admin, validate_user_name
from ..cluster import Cluster
from ..keys import ACCOUNTS, CLUSTER, CONFIG, CONTROL, DB, METRICS
from ..logs import read_log
from ..submission import MAX_TARGETS, SUBMIT_FIELDS, parse_submission
from ..waiting import QueueOrder

MAX_LIST = 1000
MAX_WAIT_SECONDS = 300.0


REDACTED = "<redacted>"
"""What others see of a task's --env values (they may be secrets)."""


_STATIC_SIBLINGS = {"wait": ("POST",)}
"""Paths beside /api/tasks/{task_id}: `GET /api/tasks/wait` matches the id route
by its shape, but is a wrong method on the wait route (405), not a bad id."""


def task_id_of(request: web.Request) -> int:
    raw = request.match_info["task_id"]
    if raw in _STATIC_SIBLINGS and request.path.rstrip("/").endswith(f"/api/tasks/{raw}"):
        raise web.HTTPMethodNotAllowed(request.method, _STATIC_SIBLINGS[raw])
    return parse_id(raw)


class PendingQueue:
    """Why pending tasks wait and their place in the queue, for one answer
    (the queue is sorted at most once, and only if a pending task is shown)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self._order: QueueOrder | None = None

    @functools.cached_property
    def usage(self) -> dict[str | None, float]:
        return self.cluster.fairshare.snapshot(self.cluster.clock())

    async def prepare(self) -> PendingQueue:
        """Make the latest pass's positions (off the loop for a long queue):
        without this, views show only positions made already."""
        self._order = await self.cluster.waits.order()
        return self

    @property
    def order(self) -> QueueOrder:
        # The latest pass's order: an answer never sorts the queue itself.
        return self._order if self._order is not None else self.cluster.waits.order_now()

    def fields(self, task: Task, principal: Principal) -> dict[str, Any]:
        if task.state is not TaskState.PENDING:
            return dict(NOT_QUEUED)
        # The owner's decayed usage explains their place among equal
        # priorities; like /api/usage it is shown only to them and admins.
        mine = principal.is_admin or task.owner == principal.name
        usage = round(self.usage.get(task.owner, 0.0) / 3600, 6) if mine and self.cluster.fairshare.enabled else None
        return {
            "pending_reason": self.cluster.waits.reason(task.id),
            "position": self.order.position(task.id),
            "fairshare_usage": usage,
            "fairshare_passed_by": self.order.passed_by_fairshare(task.id),
        }


NOT_QUEUED = {"pending_reason": None, "position": None, "fairshare_usage": None, "fairshare_passed_by": None}


def task_view(task: Task, principal: Principal, queue: PendingQueue | None = None) -> dict[str, Any]:
    """A task as `principal` may see it: everyone sees every task (like
    squeue), but only its owner and admins see its env values. With `queue`,
    a pending task says why it waits (`pending_reason`, `position`, and to
    its owner and admins `fairshare_usage`); they are null otherwise."""
    data = task.to_json()
    if not (principal.is_admin or task.owner == principal.name):
        data["env"] = dict.fromkeys(task.env, REDACTED)
    data.update(queue.fields(task, principal) if queue is not None else NOT_QUEUED)
    return data


async def _described(request: web.Request, task: Task) -> web.Response:
    """The task's view with its dependencies filled in."""
    await request.app[CLUSTER].describe_dependencies([task])
    queue = await PendingQueue(request.app[CLUSTER]).prepare()
    return json_response(task_view(task, principal_of(request), queue))


async def _owned_task(request: web.Request, what: str) -> Task:
    task_id = task_id_of(request)
    task = await request.app[DB].get_task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    require_owner_or_admin(principal_of(request), task.owner, f"{what} tasks")
    return task


# ----------------------------------------------------------------- tasks
SUBMIT_REPLIES = ("tasks", "ids")
"""`POST /api/tasks?reply=`: "tasks" (default) answers every new task's view
beside the ids; "ids" only the batch and task ids, which is all a client that
prints ids needs (an array of 10,000 is then a few hundred KB, not megabytes)."""


async def submit_tasks(request: web.Request) -> web.Response:
    began = time.perf_counter()
    reply = request.query.get("reply", "tasks")
    if reply not in SUBMIT_REPLIES:
        raise ValidationError(f"'reply' must be one of {', '.join(SUBMIT_REPLIES)}, not {reply!r}")
    data = await read_json_object(request, SUBMIT_FIELDS)
    req = parse_submission(data, request.app[CONFIG])
    principal = principal_of(request)
    check_priority_allowed(req.priority, admin=principal.is_admin)
    cluster = request.app[CLUSTER]
    limits = request.app[ACCOUNTS].effective_limits(principal.name)
    batch_id, tasks = await cluster.submit(req, owner=principal.name, limits=limits)  # sets dependencies
    answer: dict[str, Any] = {"batch_id": str(batch_id), "task_ids": [str(t.id) for t in tasks]}
    if reply == "tasks":
        queue = PendingQueue(cluster)
        answer["tasks"] = [task_view(t, principal, queue) for t in tasks]
    response = json_response(answer, status=201)
    request.app[METRICS].submit_seconds.observe(time.perf_counter() - began)
    return response


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
    user = request.query.get("user") or None
    if user is not None:
        validate_user_name(user)
    raw_since = request.query.get("since") or None
    since = None if raw_since is None else parse_since(raw_since, time.time())
    limit = query_int(request, "limit", 100, minimum=1, maximum=MAX_LIST)
    before = request.query.get("before")
    before_id = parse_id(before) if before else None
    batch = request.query.get("batch")
    batch_id = parse_id(batch) if batch else None
    # One row more than asked tells whether an older page exists.
    tasks = await request.app[DB].list_tasks(
        states=states,
        node=node,
        limit=limit + 1,
        before_id=before_id,
        owner=user,
        finished_since=since,
        batch_id=batch_id,
    )
    more = len(tasks) > limit
    tasks = tasks[:limit]
    await request.app[CLUSTER].describe_dependencies(tasks)
    next_before = str(tasks[-1].id) if more else None
    principal = principal_of(request)
    queue = PendingQueue(request.app[CLUSTER])
    if any(t.state is TaskState.PENDING for t in tasks):
        await queue.prepare()
    return json_response({"tasks": [task_view(t, principal, queue) for t in tasks], "next_before": next_before})


async def get_task(request: web.Request) -> web.Response:
    task_id = task_id_of(request)
    task = await request.app[DB].get_task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id}")
    return await _described(request, task)


async def kill_task(request: web.Request) -> web.Response:
    task = await _owned_task(request, "kill")
    return await _described(request, await request.app[CONTROL].kill(task.id))


async def pause_task(request: web.Request) -> web.Response:
    task = await _owned_task(request, "pause")
    return await _described(request, await request.app[CONTROL].pause(task.id))


async def resume_task(request: web.Request) -> web.Response:
    task = await _owned_task(request, "resume")
    return await _described(request, await request.app[CONTROL].resume(task.id))


async def set_priority(request: web.Request) -> web.Response:
    """`POST /api/tasks/{id}/priority` {"priority": N}: a pending task's new
    priority. Its owner may lower it (at most the default, or what it has);
    only an admin may raise it."""
    task = await _owned_task(request, "change the priority of")
    data = await read_json_object(request, {"priority"})
    if "priority" not in data:
        raise ValidationError("field 'priority' is required")
    priority = check_priority(data["priority"])
    admin = principal_of(request).is_admin
    check_priority_allowed(priority, admin=admin, current=task.priority)
    return await _described(request, await request.app[CONTROL].set_priority(task.id, priority, admin=admin))


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
    principal = principal_of(request)
    await request.app[CLUSTER].describe_dependencies(tasks)
    done = all(t.state.is_final for t in tasks)
    queue = PendingQueue(request.app[CLUSTER])
    return json_response({"tasks": [task_view(t, principal, queue) for t in tasks], "done": done})


async def task_logs(request: web.Request) -> web.StreamResponse:
    task = await _owned_task(request, "read the logs of")
    task_id = task.id
    stream = request.query.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ValidationError("query parameter 'stream' must be 'stdout' or 'stderr'")
    offset = query_int(request, "offset", 0)
    tail = query_int(request, "tail", None, maximum=1_000_000)
    attempt = query_int(request, "attempt", None, minimum=1)
    if attempt is not None and attempt > task.attempt:
        raise NotFound(f"task {task_id} has no attempt {attempt} (it is at attempt {task.attempt})")
    # Each attempt writes its own files (naming.stdout_path); the default is the current one's.
    shared = request.app[CONFIG].paths.shared_dir
    path_of = naming.stdout_path if stream == "stdout" else naming.stderr_path
    path = path_of(shared, task_id, task.attempt if attempt is None else attempt)
    try:
        data, next_offset = await asyncio.to_thread(read_log, path, offset, tail)
    except UnsafeFile as exc:
        raise UnsafeFile(
            f"the {stream} of task {task_id} is not served: {exc.message} (only a regular file HakuRiver wrote is)"
        ) from None
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={
            "X-HakuRiver-Next-Offset": str(next_offset),
            "X-HakuRiver-Task-State": str(task.state),
            "X-HakuRiver-Task-Attempt": str(task.attempt),
        },
    )
