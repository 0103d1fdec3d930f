"""The Host's orchestration: submissions, the scheduling pass, dispatch,
runner reports, kill/pause/resume, and node liveness.

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
from collections.abc import Callable, Iterable
from typing import Any

from ..config import Config
from ..errors import Conflict, HakuRiverError, NotFound
from ..ids import IdGenerator
from ..models import (
    SYSTEMD_CONTAINER,
    NodeResources,
    Target,
    Task,
    TaskRequest,
    TaskState,
)
from .db import Database, NodeRecord
from .runner_client import RunnerClient, RunnerRejected, RunnerUnreachable
from .scheduler import Ledger, Scheduler, check_fits_ever

log = logging.getLogger(__name__)

PASS_COALESCE_SECONDS = 0.005
"""How long a scheduling pass waits after the first event, to batch a burst."""

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
    def __init__(self, config: Config, db: Database, runners: RunnerClient, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.db = db
        self.runners = runners
        self.clock = clock
        self.ids = IdGenerator()
        self.scheduler = Scheduler()
        self.lock = asyncio.Lock()
        self.ledger = Ledger()
        self.pending: dict[int, Task] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self._resources: dict[str, NodeResources] = {}
        """What each node offers; changes only when it registers again."""
        self.started_at = clock()
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self._background: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ start
    async def load(self) -> None:
        """Rebuild in-memory state from the database after a (re)start."""
        self.started_at = self.clock()
        self.nodes = {n.hostname: n for n in await self.db.list_nodes()}
        self._resources = {name: n.resources for name, n in self.nodes.items()}
        holding = await self.db.load_holding()
        self.ledger = Ledger.from_tasks(holding)
        self.pending = {t.id: t for t in await self.db.load_pending()}
        # Tasks caught in `assigning` by a Host restart may or may not have
        # reached their runner. Runners accept a task id idempotently, so
        # sending again is safe and loses nothing.
        for task in holding:
            if task.state is TaskState.ASSIGNING:
                self._spawn(self._dispatch(task))
        self.kick()

    def kick(self) -> None:
        self._kick.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------- submitting
    def _known_resources(self) -> list[NodeResources]:
        return list(self._resources.values())

    async def submit(self, req: TaskRequest) -> tuple[int, list[Task]]:
        known = self._known_resources()
        targets: list[Target | None] = list(req.targets) or [None]
        for target in targets:
            check_fits_ever(target, req.cores, req.memory, req.gpus, known)
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
                target=str(target) if target else None,
                gpu_count=len(target.gpus) if target else req.gpus,
                submitted_at=now,
            )
            for target in targets
        ]
        await self.db.insert_tasks(tasks)
        for task in tasks:
            self.pending[task.id] = task
        self.kick()
        return batch_id, tasks

    # ------------------------------------------------------------- scheduling
    async def schedule_loop(self) -> None:
        while True:
            await self._kick.wait()
            # Let a burst of submits and reports land before looking: one pass
            # over the queue then serves them all, instead of one pass each.
            await asyncio.sleep(PASS_COALESCE_SECONDS)
            self._kick.clear()
            try:
                await self.schedule_once()
            except Exception:
                log.exception("scheduling pass failed; retrying on the next event")
                await asyncio.sleep(1.0)
                self.kick()

    async def schedule_once(self) -> list[Task]:
        if not self.pending:
            return []
        async with self.lock:
            online = [self._resources[name] for name, n in self.nodes.items() if n.online]
            if not online:
                return []
            queue = sorted(self.pending.values(), key=lambda t: t.id)
            # The scheduler holds each placement in the ledger as it decides.
            placements = self.scheduler.schedule(queue, online, self.ledger)
            if not placements:
                return []
            now = self.clock()
            moved = set(await self.db.assign_many([(p.task_id, p.node, p.numa, list(p.gpus)) for p in placements], now))
            dispatched = []
            for p in placements:
                task = self.pending.pop(p.task_id, None)
                if task is None or p.task_id not in moved:
                    self.ledger.release(p.task_id)  # killed meanwhile
                    continue
                task.state = TaskState.ASSIGNING
                task.node, task.numa, task.gpus, task.assigned_at = p.node, p.numa, list(p.gpus), now
                dispatched.append(task)
        for task in dispatched:
            self._spawn(self._dispatch(task))
        return dispatched

    def run_payload(self, task: Task) -> dict[str, Any]:
        mounts = [str(m) for m in task.mounts]
        if task.container != SYSTEMD_CONTAINER:
            mounts += list(self.config.docker.additional_mounts)
        return {
            "task_id": str(task.id),
            "command": task.command,
            "env": task.env,
            "cores": task.cores,
            "memory": task.memory,
            "gpus": task.gpus,
            "numa": task.numa,
            "container": task.container,
            "mounts": mounts,
            "privileged": task.privileged,
        }

    async def _dispatch(self, task: Task) -> None:
        node = self.nodes.get(task.node or "")
        if node is None:
            await self.finish(task.id, TaskState.FAILED, error=f"node {task.node} vanished before dispatch")
            return
        try:
            await self.runners.run_task(node.url, self.run_payload(task))
        except RunnerRejected as exc:
            await self.finish(
                task.id, TaskState.FAILED, error=f"runner {node.hostname} refused the task: {exc.message}"
            )
        except RunnerUnreachable as exc:
            # The runner may have received it (a timeout after sending); its
            # heartbeat will list the task if so, and a final state here makes
            # the Host ask it to kill the task again. Nothing runs untracked.
            await self.finish(task.id, TaskState.FAILED, error=f"dispatch to {node.hostname} failed: {exc}")

    # ----------------------------------------------------------- transitions
    async def _transition(
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
        return after

    async def finish(
        self, task_id: int, state: TaskState, *, exit_code: int | None = None, error: str | None = None
    ) -> Task | None:
        task = await self._transition(task_id, state, exit_code=exit_code, error=error)
        if task is not None:
            await self._changed_notify()
            self.kick()
        return task

    async def _changed_notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def apply_report(
        self, node_name: str, task_id: int, state: TaskState, *, exit_code: int | None = None, error: str | None = None
    ) -> Task:
        """A runner's report of a task's state. Returns the task as stored afterwards.

        Reports that the guards refuse (a late `completed` after `killed`)
        are acknowledged but change nothing.
        """
        if state not in RUNNER_REPORTABLE:
            raise HakuRiverError(f"runners cannot report state {state}", code="invalid", status=400)
        task = await self.db.get_task(task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        if task.node != node_name:
            raise Conflict(f"task {task_id} is assigned to {task.node}, not {node_name}")
        changed = None
        if task.state is not state:
            fields: dict[str, Any] = {}
            if state.is_final:
                fields = {"exit_code": exit_code, "error": error}
            changed = await self._transition(task_id, state, current=task, **fields)
        if changed is not None:
            await self._changed_notify()
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
            after = await self._transition(task_id, TaskState.KILLED, error="killed by request")
            if after is None:  # raced with another final report
                current = await self.db.get_task(task_id)
                raise Conflict(f"task {task_id} already ended: {current.state if current else 'gone'}")
        await self._changed_notify()
        self.kick()
        if task.state is not TaskState.PENDING:
            # Forward whenever the task may be running there (assigning too).
            # If the runner cannot be reached, its next heartbeat lists the
            # task and the Host answers with a kill order.
            self._spawn(self._forward(after, "kill"))
        return after

    async def _forward(self, task: Task, action: str) -> None:
        node = self.nodes.get(task.node or "")
        if node is None:
            return
        try:
            await self.runners.control(node.url, task.id, action)
        except (RunnerRejected, RunnerUnreachable) as exc:
            log.warning(
                "could not %s task %s on %s: %s (heartbeat reconciliation will retry)",
                action,
                task.id,
                node.hostname,
                exc,
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
            await self.runners.control(node.url, task_id, action)
        except RunnerRejected as exc:
            raise Conflict(f"runner {node.hostname} could not {action} task {task_id}: {exc.message}") from None
        except RunnerUnreachable as exc:
            raise HakuRiverError(
                f"could not {action} task {task_id}: {exc}", code="runner_unreachable", status=502
            ) from None
        after = await self._transition(task_id, becomes)
        if after is None:
            current = await self.db.get_task(task_id)
            raise Conflict(f"task {task_id} changed to {current.state if current else 'gone'} meanwhile")
        await self._changed_notify()
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

    # ----------------------------------------------------------------- nodes
    async def register(
        self, res: NodeResources, reported: list[dict[str, Any]], finishing: Iterable[int] = ()
    ) -> NodeRecord:
        record = await self.db.upsert_node(res, self.clock())
        self.nodes[record.hostname] = record
        self._resources[record.hostname] = record.resources
        kills = await self._reconcile(record.hostname, reported, list(finishing))
        for task_id in kills:
            self._spawn(self._forward_id(record, task_id, "kill"))
        self.kick()
        return record

    async def _forward_id(self, node: NodeRecord, task_id: int, action: str) -> None:
        try:
            await self.runners.control(node.url, task_id, action)
        except (RunnerRejected, RunnerUnreachable) as exc:
            log.warning("could not %s task %s on %s: %s", action, task_id, node.hostname, exc)

    async def heartbeat(
        self, hostname: str, stats: dict[str, Any], reported: list[dict[str, Any]], finishing: list[int]
    ) -> list[int]:
        """Record a heartbeat; returns task ids the runner must kill."""
        record = await self.db.record_heartbeat(hostname, stats, self.clock())
        if record is None:
            raise NotFound(f"node {hostname} is not registered", code="unknown_node")
        came_back = not self.nodes.get(hostname, record).online
        self.nodes[hostname] = record
        kills = await self._reconcile(hostname, reported, finishing)
        if came_back:
            log.info("node %s is back online", hostname)
            self.kick()
        return kills

    async def _reconcile(self, hostname: str, reported: list[dict[str, Any]], finishing: list[int]) -> list[int]:
        """Compare what a runner says it runs with what the Host believes."""
        kills: list[int] = []
        changed = False
        by_id = {int(r["task_id"]): TaskState(r["state"]) for r in reported}
        stored = {t.id: t for t in await self.db.get_tasks(list(by_id))} if by_id else {}
        for task_id, state in by_id.items():
            task = stored.get(task_id)
            if task is None:
                log.warning("node %s runs task %s, which this Host does not know; leaving it alone", hostname, task_id)
                continue
            if task.node != hostname:
                kills.append(task_id)
                continue
            if (
                task.state is TaskState.LOST
                or task.state is TaskState.ASSIGNING
                or (task.state in (TaskState.RUNNING, TaskState.PAUSED) and task.state is not state)
            ):
                if await self._transition(task_id, state, current=task, error=None) is not None:
                    changed = True
                    if task.state is TaskState.LOST:
                        log.info("task %s on %s restored from lost to %s", task_id, hostname, state)
            elif task.state.is_final:
                kills.append(task_id)
        # A holding task the runner neither runs nor is delivering a result
        # for was lost by it (its state store wiped, say). The grace covers
        # a heartbeat built just before the task started on the runner.
        grace = self.config.timing.heartbeat_timeout
        now = self.clock()
        known = set(by_id) | set(finishing)
        suspects = [h.task_id for h in self.ledger.holds_on(hostname) if h.task_id not in known]
        for task in await self.db.get_tasks(suspects) if suspects else []:
            if now - (task.assigned_at or now) < grace:
                continue
            if (
                await self._transition(task.id, TaskState.LOST, error=f"runner {hostname} no longer knows this task")
                is not None
            ):
                changed = True
        if changed:
            await self._changed_notify()
            self.kick()
        return kills

    async def check_liveness(self) -> list[tuple[str, list[int]]]:
        """Mark nodes offline whose heartbeats stopped; their tasks become lost.

        After a Host (re)start, every node gets a full timeout to heartbeat
        before anything is marked offline: the Host being down is not the
        runners' fault.
        """
        timeout = self.config.timing.heartbeat_timeout
        now = self.clock()
        if now < self.started_at + timeout:
            return []
        offline = await self.db.mark_nodes_offline(now - timeout, now=now)
        for hostname, task_ids in offline:
            log.warning(
                "node %s missed heartbeats for %.0fs: offline; %d task(s) lost", hostname, timeout, len(task_ids)
            )
            for task_id in task_ids:
                self.ledger.release(task_id)
            record = await self.db.get_node(hostname)
            if record is not None:
                self.nodes[hostname] = record
        if offline:
            await self._changed_notify()
            self.kick()
        return offline

    async def liveness_loop(self) -> None:
        interval = self.config.timing.cleanup_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_liveness()
            except Exception:
                log.exception("liveness sweep failed; retrying in %.0fs", interval)
