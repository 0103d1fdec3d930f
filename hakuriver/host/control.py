"""Users' commands on tasks that exist: kill, pause and resume, priority,
and the same for every task of a batch.

Each acts on the cluster through its guarded transitions. Kill and priority
changes take the cluster's lock, so they never land in the middle of a
scheduling pass's decisions (a task killed while a pass writes its placement
is never dispatched); pause and resume ask the task's runner first and record
the new state once it has answered.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import Conflict, HakuRiverError, NotFound
from ..models import Task, TaskState
from ..parsing import MAX_ARRAY_TASKS
from ..policy import MAX_TARGETS, check_priority_allowed
from .cluster import Cluster
from .runner_client import RunnerRejected, RunnerUnreachable


class TaskControl:
    """Kill, pause, resume and priority for `cluster`'s tasks (see the module docstring)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster

    async def kill(self, task_id: int) -> Task:
        async with self.cluster.lock:
            task = await self.cluster.db.get_task(task_id)
            if task is None:
                raise NotFound(f"no task {task_id}")
            if task.state.is_final:
                raise Conflict(f"task {task_id} already ended: {task.state}")
            after = await self.cluster.transition(task_id, TaskState.KILLED, error="killed by request")
            if after is None:  # raced with another final report
                current = await self.cluster.db.get_task(task_id)
                raise Conflict(f"task {task_id} already ended: {current.state if current else 'gone'}")
        await self.cluster.notify_changed()
        self.cluster.kick()
        if task.state is not TaskState.PENDING and after.node:
            # Forward whenever the task may be running there (assigning too).
            # If the runner cannot be reached, its next heartbeat lists the
            # task and the Host answers with a kill order.
            self.cluster.spawn(self.cluster.forward(after.node, task_id, "kill"))
        return after

    async def set_priority(self, task_id: int, priority: int, *, admin: bool = True) -> Task:
        """Change a pending task's priority; the next pass orders the queue by
        it. Conflict once it left pending. Who may (`policy.check_priority_allowed`)
        is checked again here, under the lock, against the priority the task
        has now: an admin's lowering in between is never undone by its owner."""
        async with self.cluster.lock:  # not in the middle of a pass's decisions
            queued = self.cluster.pending.get(task_id)
            if queued is not None:
                check_priority_allowed(priority, admin=admin, current=queued.priority)
            if not await self.cluster.db.set_pending_priority(task_id, priority, self.cluster.clock()):
                current = await self.cluster.db.get_task(task_id)
                if current is None:
                    raise NotFound(f"no task {task_id}")
                raise Conflict(f"task {task_id} is {current.state}: only a pending task's priority can change")
            if task_id in self.cluster.pending:
                self.cluster.pending.set_priority(task_id, priority)
        self.cluster.kick()
        stored = await self.cluster.db.get_task(task_id)
        if stored is None:  # purged meanwhile: impossible for a pending task, but say so
            raise NotFound(f"no task {task_id}")
        return stored

    async def set_batch_priority(self, tasks: Iterable[Task], priority: int, *, admin: bool) -> list[int]:
        """`set_priority` for every pending task of one batch at once; the ids
        changed. The rule of `policy.check_priority_allowed` holds for each
        task, checked under the lock against its priority now: one task an
        admin raised above what its owner may set refuses the whole call
        (nothing changes), as it would refuse it alone."""
        async with self.cluster.lock:
            queued = [self.cluster.pending[t.id] for t in tasks if t.id in self.cluster.pending]
            for task in queued:
                check_priority_allowed(priority, admin=admin, current=task.priority)
            changed = await self.cluster.db.set_pending_priorities(
                [t.id for t in queued], priority, self.cluster.clock()
            )
            for task_id in changed:
                if task_id in self.cluster.pending:
                    self.cluster.pending.set_priority(task_id, priority)
        self.cluster.kick()
        return changed

    async def batch_tasks(self, batch_id: int) -> list[Task]:
        """Every task of batch `batch_id`, oldest first (empty: no such batch)."""
        tasks = await self.cluster.db.list_tasks(batch_id=batch_id, limit=MAX_ARRAY_TASKS + MAX_TARGETS)
        return sorted(tasks, key=lambda t: t.id)

    async def kill_batch(self, tasks: Iterable[Task]) -> list[int]:
        """Kill the given tasks of one batch that have not ended; the ids killed.
        Pending ones first and newest first, so that the resources a killed
        running task frees never start another task of the batch meanwhile."""
        order = sorted(
            (t for t in tasks if not t.state.is_final),
            key=lambda t: (t.state is not TaskState.PENDING, -t.id),
        )
        killed = []
        for task in order:
            try:
                await self.kill(task.id)
            except Conflict:  # it ended meanwhile
                continue
            killed.append(task.id)
        return sorted(killed)

    async def pause(self, task_id: int) -> Task:
        return await self._pause_resume(task_id, "pause", TaskState.RUNNING, TaskState.PAUSED)

    async def resume(self, task_id: int) -> Task:
        return await self._pause_resume(task_id, "resume", TaskState.PAUSED, TaskState.RUNNING)

    async def _pause_resume(self, task_id: int, action: str, need: TaskState, becomes: TaskState) -> Task:
        task = await self.cluster.db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.state is not need:
            raise Conflict(
                f"cannot {action} task {task_id}: it is {task.state}, and only a {need} task can be {action}d"
            )
        node = self.cluster.nodes.get(task.node or "")
        if node is None:
            raise Conflict(f"task {task_id} has no known node")
        # Heartbeats leave the task's running/paused state to this call while it is
        # in flight, and for a while after (see liveness).
        self.cluster.controlled_at[task_id] = self.cluster.clock()
        try:
            await self.cluster.runners.control(node, task_id, action)
        except RunnerRejected as exc:
            raise Conflict(f"runner {node.hostname} could not {action} task {task_id}: {exc.message}") from None
        except RunnerUnreachable as exc:
            raise HakuRiverError(
                f"could not {action} task {task_id}: {exc}", code="runner_unreachable", status=502
            ) from None
        after = await self.cluster.transition(task_id, becomes)
        if after is None:
            current = await self.cluster.db.get_task(task_id)
            # A heartbeat that saw the runner's new state may record it before this
            # answer does: the action took effect, so it is no conflict.
            if current is None or current.state is not becomes:
                raise Conflict(f"task {task_id} changed to {current.state if current else 'gone'} meanwhile")
            after = current
        self.cluster.controlled_at[task_id] = self.cluster.clock()
        await self.cluster.notify_changed()
        return after
