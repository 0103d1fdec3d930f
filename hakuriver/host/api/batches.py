"""Batch routes: kill every task of one batch (an `--array`, or the tasks of
one submission), or change the priority of its pending ones. Listing a batch is `GET /api/tasks?batch=ID`; waiting for
one is `POST /api/tasks/wait` with its task ids."""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound, ValidationError
from ...ids import parse_id
from ...models import Task
from ...policy import check_priority
from ...webapi import json_response, read_json_object
from ..accounts import principal_of, require_owner_or_admin
from ..keys import CLUSTER, CONTROL
from .tasks import PendingQueue, task_view


async def _batch(request: web.Request) -> tuple[int, list[Task]]:
    batch_id = parse_id(request.match_info["batch_id"])
    tasks = await request.app[CONTROL].batch_tasks(batch_id)
    if not tasks:
        raise NotFound(f"no batch {batch_id}")
    return batch_id, tasks


async def kill_batch(request: web.Request) -> web.Response:
    """Kill every task of the batch that has not ended; the ended ones are left as they are."""
    batch_id, tasks = await _batch(request)
    principal = principal_of(request)
    for owner in {t.owner for t in tasks}:
        require_owner_or_admin(principal, owner, "kill tasks")
    killed = await request.app[CONTROL].kill_batch(tasks)
    after = await request.app[CONTROL].batch_tasks(batch_id)
    queue = PendingQueue(request.app[CLUSTER])
    return json_response(
        {
            "batch_id": str(batch_id),
            "killed": [str(i) for i in killed],
            "tasks": [task_view(t, principal, queue) for t in after],
        }
    )


async def set_batch_priority(request: web.Request) -> web.Response:
    """`POST /api/batches/{batch_id}/priority` {"priority": N}: every pending
    task of the batch gets it (the same rule as one task's: its owner may lower
    it, only an admin raise it). Tasks that left pending keep theirs."""
    batch_id, tasks = await _batch(request)
    principal = principal_of(request)
    for owner in {t.owner for t in tasks}:
        require_owner_or_admin(principal, owner, "change the priority of tasks")
    data = await read_json_object(request, {"priority"})
    if "priority" not in data:
        raise ValidationError("field 'priority' is required")
    priority = check_priority(data["priority"])
    changed = await request.app[CONTROL].set_batch_priority(tasks, priority, admin=principal.is_admin)
    done = set(changed)
    return json_response(
        {
            "batch_id": str(batch_id),
            "priority": priority,
            "changed": [str(i) for i in changed],
            "unchanged": [str(t.id) for t in tasks if t.id not in done],
        }
    )
