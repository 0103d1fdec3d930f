"""The Host's cluster state and the commands users give it.

`Cluster` owns what the Host believes: the nodes it knows and what they offer,
the resource ledger, the pending queue, the lock, and every guarded state
transition. Users' commands (submit, kill, pause, resume, wait) act on it
here. Two modules drive it from outside, and it never imports them:
- `dispatch`: the scheduling pass and sending tasks to runners;
- `liveness`: registration, heartbeat reconciliation and the offline sweep.

Invariants this module keeps:
- The database is the truth for task states; every change is a guarded
  update (`Database.transition`), so reports arriving late or twice can never
  overwrite a final state.
- `self.ledger` tracks the tasks in a holding state (assigning, running,
  paused). It is keyed by task id, so hold/release are idempotent, and it is
  only ever *conservative*: a task leaving a holding state is released after
  its database write, a task entering one (a lost task restored) is held
  before it. A scheduling pass can therefore never hand out resources that a
  task still holds, even while other writes are in flight.
- `self.lock` serialises only what must be atomic with placement decisions:
  the scheduling pass and kill (so a task killed while the pass writes its
  placement is never dispatched). Reports, heartbeats and liveness take no
  lock, so their database writes share group commits instead of queueing.
- Nothing awaits the network while holding `self.lock`: dispatch and
  forwarding to runners happen after it is released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ..config import Config
from ..errors import Conflict, HakuRiverError, NotFound, ValidationError
from ..ids import IdGenerator
from ..models import NodeResources, Target, Task, TaskRequest, TaskState
from .db import Database, NodeRecord
from .runner_client import RunnerClient, RunnerRejected, RunnerUnreachable
from .scheduler import UNLIMITED, Ledger, Used, UserLimits, check_fits_ever, check_fits_limits
from .waiting import WaitBoard

log = logging.getLogger(__name__)

RUNNER_REPORTABLE = frozenset(
    {
        TaskState.RUNNING,
        TaskState.PAUSED,
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.KILLED,
        TaskState.KILLED_OOM,
        TaskState.LOST,
    }
)
"""States a runner may report. LOST: the task's container vanished under the runner."""


class Cluster:
    """The Host's state; see the module docstring for its invariants."""

    def __init__(self, config: Config, db: Database, runners: RunnerClient, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.db = db
        self.runners = runners
        self.clock = clock
        self.ids = IdGenerator()
        self.lock = asyncio.Lock()
        self.ledger = Ledger()
        self.pending: dict[int, Task] = {}
        self.waits = WaitBoard()
        """Why each pending task waits (the latest scheduling pass; memory only)."""
        self.nodes: dict[str, NodeRecord] = {}
        self.resources: dict[str, NodeResources] = {}
        """What each node offers; changes only when it registers again."""
        self.started_at = clock()
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()
        self.controlled_at: dict[int, float] = {}
        """When each task was last paused or resumed here: a heartbeat built before
        that must not undo it (see `liveness`)."""

    # ------------------------------------------------------------------ start
    async def load(self) -> list[Task]:
        """Rebuild in-memory state from the database after a (re)start.

        Returns the tasks caught in `assigning`: the dispatcher sends them
        again, since they may or may not have reached their runner."""
        self.started_at = self.clock()
        self.nodes = {n.hostname: n for n in await self.db.list_nodes()}
        self.resources = {name: n.resources for name, n in self.nodes.items()}
        holding = await self.db.load_holding()
        self.ledger = Ledger.from_tasks(holding)
        self.pending = {t.id: t for t in await self.db.load_pending()}
        self.kick()
        return [t for t in holding if t.state is TaskState.ASSIGNING]

    def kick(self) -> None:
        """Ask for a scheduling pass: something was queued or freed."""
        self._kick.set()

    async def kicked(self) -> None:
        """Wait for the next `kick()` and consume it."""
        await self._kick.wait()

    def clear_kick(self) -> None:
        self._kick.clear()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background until it ends or the Host stops."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    def online_resources(self) -> list[NodeResources]:
        return [self.resources[name] for name, n in self.nodes.items() if n.online]

    def allocated(self, hostname: str) -> Used:
        """What the tasks holding resources on `hostname` use now."""
        return self.ledger.used(hostname)

    async def forget_node(self, hostname: str) -> None:
        """Drop a node and the runner identity bound to its name, so another
        runner may register under it. Refused while tasks hold resources there."""
        if hostname not in self.nodes:
            raise NotFound(f"no node {hostname}")
        holding = self.ledger.holds_on(hostname)
        if holding:
            raise Conflict(
                f"node {hostname} still has {len(holding)} task(s) holding resources "
                f"(e.g. {holding[0].task_id}); kill them or wait for them to end first"
            )
        await self.db.forget_node(hostname)
        self.nodes.pop(hostname, None)
        self.resources.pop(hostname, None)
        log.warning(
            "node %s forgotten by an admin; the next runner to register under that name is bound to it", hostname
        )

    # ------------------------------------------------------------- submitting
    async def submit(self, req: TaskRequest, *, owner: str, limits: UserLimits = UNLIMITED) -> tuple[int, list[Task]]:
        """Store the request's tasks `pending`. Refused when one could never run:
        on no known node, or over its owner's `limits` all by itself."""
        known = list(self.resources.values())
        targets: list[Target | None] = list(req.targets) or [None]
        for target in targets:
            check_fits_ever(target, req.cores, req.memory, req.gpus, known, req.container)
            check_fits_limits(req.cores, len(target.gpus) if target and target.gpus else req.gpus, limits, owner)
        now = self.clock()
        batch_id = self.ids.next()
        tasks = [
            Task(
                id=self.ids.next(),
                batch_id=batch_id,
                state=TaskState.PENDING,
                command=list(req.command),
                cores=req.cores,
                memory=req.memory,
                container=req.container,
                env=dict(req.env),
                mounts=list(req.mounts),
                privileged=req.privileged,
                target=target,
                gpu_count=len(target.gpus) if target else req.gpus,
                submitted_at=now,
                owner=owner,
            )
            for target in targets
        ]
        await self.db.insert_tasks(tasks)
        for task in tasks:
            self.pending[task.id] = task
        self.kick()
        return batch_id, tasks

    # ----------------------------------------------------------- transitions
    async def transition(
        self, task_id: int, new: TaskState, *, current: Task | None = None, **fields: Any
    ) -> Task | None:
        """Guarded transition with ledger upkeep; None when the guard refused it.

        Pass `current` (the task as last read) when `new` may *enter* a
        holding state from a non-holding one (lost -> running): it is held in
        the ledger before the write, so no concurrent pass can give its
        resources away.
        """
        pre_held = False
        if new.holds_resources and current is not None and current.node and not current.state.holds_resources:
            pre_held = self.ledger.hold(current)
        after = await self.db.transition(task_id, new, now=self.clock(), **fields)
        if after is None:
            if pre_held:
                self.ledger.release(task_id)
            return None
        if after.state.holds_resources:
            if after.node:
                self.ledger.hold(after)
        else:
            self.ledger.release(task_id)
        if after.state is not TaskState.PENDING:
            self.pending.pop(task_id, None)
        if after.state.is_final:
            self.controlled_at.pop(task_id, None)
        return after

    async def finish(
        self, task_id: int, state: TaskState, *, exit_code: int | None = None, error: str | None = None
    ) -> Task | None:
        """Move a task to a final state, waking waiters and the scheduler."""
        task = await self.transition(task_id, state, exit_code=exit_code, error=error)
        if task is not None:
            await self.notify_changed()
            self.kick()
        return task

    async def notify_changed(self) -> None:
        """Wake every `wait_final` so it looks again."""
        async with self._changed:
            self._changed.notify_all()

    async def apply_report(
        self,
        node_name: str,
        task_id: int,
        state: TaskState,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        output_error: str | None = None,
    ) -> Task:
        """A runner's report of a task's state. Returns the task as stored afterwards.
        A final report's `output_error` (the task's output files are incomplete)
        is stored with its state and exit code.

        Reports that the guards refuse (a late `completed` after `killed`)
        are acknowledged but change nothing.
        """
        if state not in RUNNER_REPORTABLE:
            raise ValidationError(f"runners cannot report state {state}")
        task = await self.db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.node != node_name:
            raise Conflict(f"task {task_id} is assigned to {task.node}, not {node_name}")
        changed = None
        if task.state is not state:
            fields: dict[str, Any] = {}
            if state.is_final:
                fields = {"exit_code": exit_code, "error": error, "output_error": output_error}
            changed = await self.transition(task_id, state, current=task, **fields)
        if changed is not None:
            await self.notify_changed()
            if not changed.state.holds_resources:
                self.kick()
            return changed
        return await self.db.get_task(task_id) or task

    # ---------------------------------------------------- kill/pause/resume
    async def kill(self, task_id: int) -> Task:
        async with self.lock:
            task = await self.db.get_task(task_id)
            if task is None:
                raise NotFound(f"no task {task_id}")
            if task.state.is_final:
                raise Conflict(f"task {task_id} already ended: {task.state}")
            after = await self.transition(task_id, TaskState.KILLED, error="killed by request")
            if after is None:  # raced with another final report
                current = await self.db.get_task(task_id)
                raise Conflict(f"task {task_id} already ended: {current.state if current else 'gone'}")
        await self.notify_changed()
        self.kick()
        if task.state is not TaskState.PENDING and after.node:
            # Forward whenever the task may be running there (assigning too).
            # If the runner cannot be reached, its next heartbeat lists the
            # task and the Host answers with a kill order.
            self.spawn(self.forward(after.node, task_id, "kill"))
        return after

    async def forward(self, hostname: str, task_id: int, action: str) -> None:
        """Send a control order to a node, best effort: heartbeat
        reconciliation repeats what did not arrive."""
        node = self.nodes.get(hostname)
        if node is None:
            return
        try:
            await self.runners.control(node, task_id, action)
        except (RunnerRejected, RunnerUnreachable) as exc:
            log.warning(
                "could not %s task %s on %s: %s (heartbeat reconciliation will retry)", action, task_id, hostname, exc
            )

    async def pause(self, task_id: int) -> Task:
        return await self._pause_resume(task_id, "pause", TaskState.RUNNING, TaskState.PAUSED)

    async def resume(self, task_id: int) -> Task:
        return await self._pause_resume(task_id, "resume", TaskState.PAUSED, TaskState.RUNNING)

    async def _pause_resume(self, task_id: int, action: str, need: TaskState, becomes: TaskState) -> Task:
        task = await self.db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.state is not need:
            raise Conflict(
                f"cannot {action} task {task_id}: it is {task.state}, and only a {need} task can be {action}d"
            )
        node = self.nodes.get(task.node or "")
        if node is None:
            raise Conflict(f"task {task_id} has no known node")
        try:
            await self.runners.control(node, task_id, action)
        except RunnerRejected as exc:
            raise Conflict(f"runner {node.hostname} could not {action} task {task_id}: {exc.message}") from None
        except RunnerUnreachable as exc:
            raise HakuRiverError(
                f"could not {action} task {task_id}: {exc}", code="runner_unreachable", status=502
            ) from None
        after = await self.transition(task_id, becomes)
        if after is None:
            current = await self.db.get_task(task_id)
            raise Conflict(f"task {task_id} changed to {current.state if current else 'gone'} meanwhile")
        self.controlled_at[task_id] = self.clock()
        await self.notify_changed()
        return after

    # --------------------------------------------------------------- waiting
    async def wait_final(self, task_ids: Iterable[int], timeout: float) -> list[Task]:
        """Return the tasks once all are final, or as they are when `timeout` passes."""
        ids = list(task_ids)
        deadline = asyncio.get_running_loop().time() + timeout
        async with self._changed:
            while True:
                tasks = await self.db.get_tasks(ids)
                if len(tasks) != len(set(ids)) or all(t.state.is_final for t in tasks):
                    return tasks
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return tasks
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    pass
