"""Batch routes: kill every task of one batch (an `--array`, or the tasks of
one submission). Listing a batch is `GET /api/tasks?batch=ID`; waiting for
one is `POST /api/tasks/wait` with its task ids."""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound
from ...ids import parse_id
from ...models import Task
from ...webapi import json_response
from ..accounts import principal_of, require_owner_or_admin
from ..keys import CLUSTER
from .tasks import PendingQueue, task_view


async def _batch(request: web.Request) -> tuple[int, list[Task]]:
    batch_id = parse_id(request.match_info["batch_id"])
    tasks = await request.app[CLUSTER].batch_tasks(batch_id)
    if not tasks:
        raise NotFound(f"no batch {batch_id}")
    return batch_id, tasks


async def kill_batch(request: web.Request) -> web.Response:
    """Kill every task of the batch that has not ended; the ended ones are left as they are."""
    batch_id, tasks = await _batch(request)
    principal = principal_of(request)
    for owner in {t.owner for t in tasks}:
        require_owner_or_admin(principal, owner, "kill tasks")
    killed = await request.app[CLUSTER].kill_batch(tasks)
    after = await request.app[CLUSTER].batch_tasks(batch_id)
    queue = PendingQueue(request.app[CLUSTER])
    return json_response(
        {
            "batch_id": str(batch_id),
            "killed": [str(i) for i in killed],
            "tasks": [task_view(t, principal, queue) for t in after],
        }
    )
