"""The Host's cluster state: what it believes, and every guarded change to it.

`Cluster` owns what the Host believes: the nodes it knows and what they offer,
the resource ledger, the pending queue, the lock, and every guarded state
transition. Submitting and waiting act on it here. Four modules drive it from
outside, and it never imports them:
- `dispatch`: the scheduling pass and sending tasks to runners;
- `liveness`: registration, heartbeat reconciliation and the offline sweep;
- `reports`: runners' reports of their tasks' states;
- `control`: users' kill, pause, resume and priority.

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
- The one way back to `pending` is a retry (`--retries`, host/retries.py):
  `transition` turns an ending the task's retries cover into one guarded
  write that records the attempt and requeues the task, so it is never seen
  final in between; every ending from a runner or a dispatch names the
  attempt it is about, and an earlier attempt's never touches a later one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from ..config import Config
from ..errors import Conflict, NotFound
from ..ids import IdGenerator
from ..models import NodeResources, Target, Task, TaskRequest, TaskState
from .db import Database, Drain, NodeRecord
from .dependencies import AFTER, DependencyIndex
from .fairshare import FairShare
from .retries import RetryFences, should_retry
from .runner_client import RunnerClient, RunnerRejected, RunnerUnreachable
from .scheduler import UNLIMITED, Ledger, PendingQueue, Used, UserLimits, check_fits_ever, check_fits_limits
from .waiting import WaitBoard

log = logging.getLogger(__name__)


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
        self.pending = PendingQueue()
        """The tasks waiting for a place, by id, kept for the pass's order."""
        self.deps = DependencyIndex()
        """The pending tasks that wait for others (`--after`): the pass skips them."""
        self.waits = WaitBoard()
        """Why each pending task waits (the latest scheduling pass; memory only)."""
        self.fairshare = FairShare(config.scheduler.half_life_seconds, config.scheduler.fairshare_gpu_weight)
        """Each user's decayed recent usage, for the queue's order (`host/fairshare.py`)."""
        self.nodes: dict[str, NodeRecord] = {}
        self.resources: dict[str, NodeResources] = {}
        """What each node offers; changes only when it registers again."""
        self.started_at = clock()
        self._kick = asyncio.Event()
        self._changed = asyncio.Condition()
        self.revision = 0
        """Counts `notify_changed` calls: the dashboard's live updates look at it."""
        self._background: set[asyncio.Task[Any]] = set()
        self.drains: dict[str, Drain] = {}
        """Nodes an admin drained (no new task is placed there). Kept apart from
        `nodes`, which registrations and heartbeats replace."""
        self.fences = RetryFences()
        """Nodes that may still hold an earlier attempt of a retried task (`--retries`)."""
        self.retried_from: dict[int, str] = {}
        """A retried pending task -> the node of its previous attempt: chosen
        last among the nodes where it fits (memory only)."""
        self.controlled_at: dict[int, float] = {}
        """When each task was last paused or resumed here: a heartbeat built before
        that must not undo it (see `liveness`)."""
        self.on_transition: Callable[[Task | None, Task], None] | None = None
        """Told each transition `transition` applied: (the task as last read
        when the caller passed it, else None; the task after). The metrics."""

    # ------------------------------------------------------------------ start
    async def load(self) -> list[Task]:
        """Rebuild in-memory state from the database after a (re)start.

        Returns the tasks caught in `assigning`: the dispatcher sends them
        again, since they may or may not have reached their runner."""
        self.started_at = self.clock()
        self.nodes = {n.hostname: n for n in await self.db.list_nodes()}
        self.resources = {name: n.resources for name, n in self.nodes.items()}
        self.drains = {name: n.drain for name, n in self.nodes.items() if n.drain is not None}
        holding = await self.db.load_holding()
        self.ledger = Ledger.from_tasks(holding)
        if self.fairshare.enabled:
            now = self.clock()
            fs = self.fairshare
            totals = await self.db.usage_totals(
                finished_since=fs.window_start(now), now=now, half_life=fs.half_life, gpu_weight=fs.gpu_weight
            )
            fs.rebuild_totals(totals, holding, now)
        self.pending = PendingQueue(await self.db.load_pending())
        # A retried task's previous node may still hold the old run: fenced
        # again until that node's first heartbeat says otherwise.
        self.fences, self.retried_from = RetryFences(), {}
        for task_id, node in (await self.db.previous_attempt_nodes()).items():
            self.fences.add(task_id, node)
            self.retried_from[task_id] = node
        await self._load_dependencies()
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
        self.drains.pop(hostname, None)
        log.warning(
            "node %s forgotten by an admin; the next runner to register under that name is bound to it", hostname
        )

    async def drain_node(self, hostname: str, *, reason: str, by: str) -> NodeRecord:
        """Place no new task on `hostname`; what holds resources there ends
        normally. Draining a drained node replaces its reason (and who, when)."""
        drain = Drain(at=self.clock(), by=by, reason=reason)
        record = await self.db.set_node_drain(hostname, drain)
        if record is None:
            raise NotFound(f"no node {hostname}")
        # Under the lock: a pass running now decided with the old set; the
        # next one (after this) sees the drain.
        async with self.lock:
            self.drains[hostname] = drain
        record = self._remember_drain(record)
        log.warning("node %s drained by %s: %s", hostname, by, reason or "no reason given")
        return record

    async def resume_node(self, hostname: str, *, by: str) -> NodeRecord:
        """Undo a drain: `hostname` gets new tasks again (idempotent)."""
        record = await self.db.set_node_drain(hostname, None)
        if record is None:
            raise NotFound(f"no node {hostname}")
        was = self.drains.pop(hostname, None)
        record = self._remember_drain(record)
        if was is not None:
            log.warning("node %s resumed by %s", hostname, by)
        self.kick()  # tasks waiting for it may start now
        return record

    def _remember_drain(self, stored: NodeRecord) -> NodeRecord:
        """The in-memory node with the drain just stored (its heartbeat, which
        lives in memory, may be newer than the stored one)."""
        seen = self.nodes.get(stored.hostname)
        record = stored if seen is None else dataclasses.replace(seen, drain=stored.drain)
        self.nodes[stored.hostname] = record
        return record

    def holding_tasks(self, hostname: str) -> list[int]:
        """Ids of the tasks holding resources on `hostname` (assigning, running, paused)."""
        return [h.task_id for h in self.ledger.holds_on(hostname)]

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
        after = list(dict.fromkeys(req.after))
        after_any = [d for d in dict.fromkeys(req.after_any) if d not in after]
        if after or after_any:
            await self._check_dependencies_exist(after + after_any)
        slots = self._task_slots(targets, req.array)
        ids = self.ids.next_many(len(slots))
        tasks = [
            Task(
                id=task_id,
                batch_id=batch_id,
                state=TaskState.PENDING,
                command=list(req.commands[index] if req.commands and index is not None else req.command),
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
                time_limit=req.time_limit,
                retries=req.retries,
                retry_on_exit=req.retry_on_exit,
                after=after,
                after_any=after_any,
                array_index=index,
                array_max_running=req.array_max_running,
                priority=req.priority,
            )
            for task_id, (target, index) in zip(ids, slots, strict=True)
        ]
        await self.db.insert_tasks(tasks)
        for task in tasks:
            self.pending.add(task)
        if after or after_any:
            for task in tasks:
                self.deps.add(task.id, after, after_any)
        if after or after_any:
            # Registered first, read second: a dependency that ends after this
            # read finds the dependents in the index; one that ended before
            # (even during the insert) is seen here. None is missed.
            await self._resolve_against_stored({t.id for t in tasks})
            for task in tasks:
                task.waiting_for = self.deps.waiting_for(task.id)
                stored = await self.db.get_task(task.id) if task.id not in self.pending else None
                if stored is not None:  # cancelled at once: its dependency had failed already
                    task.state, task.error, task.finished_at = stored.state, stored.error, stored.finished_at
        self.kick()
        return batch_id, tasks

    @staticmethod
    def _task_slots(targets: list[Target | None], array: tuple[int, ...]) -> list[tuple[Target | None, int | None]]:
        """One task per target, or for an array (at most one target, checked at
        submission) one per index."""
        if array:
            return [(targets[0], index) for index in array]
        return [(target, None) for target in targets]

    # ----------------------------------------------------------- dependencies
    async def _check_dependencies_exist(self, ids: list[int]) -> None:
        """NotFound naming every id that is no task. Every task is visible to
        every user (see `api.tasks.task_view`), so depending on another user's
        task is allowed: it reveals nothing and controls nothing. A pending
        task exists: only the others are read."""
        unknown = [i for i in ids if i not in self.pending]
        states = await self.db.task_states(unknown) if unknown else {}
        missing = [str(i) for i in unknown if i not in states]
        if missing:
            raise NotFound(f"cannot depend on unknown task(s): {', '.join(missing)}")

    async def _load_dependencies(self) -> None:
        """Rebuild `self.deps` from the database (Host start), then settle what
        ended while nobody settled it (a crash between a task's end and its
        dependents' cancellation)."""
        self.deps = DependencyIndex()
        by_task: dict[int, tuple[list[int], list[int]]] = {}
        for task_id, dep, kind in await self.db.load_waiting_dependencies():
            if task_id in self.pending:
                after, after_any = by_task.setdefault(task_id, ([], []))
                (after if kind == AFTER else after_any).append(dep)
        for task_id, (after, after_any) in by_task.items():
            self.deps.add(task_id, after, after_any)
        await self._resolve_against_stored(set(by_task))

    async def _resolve_against_stored(self, waiters: set[int]) -> None:
        """Apply the stored states of what `waiters` wait for (to every task
        waiting on them: an ended task's dependents are settled whoever asks)."""
        # A dependency still pending here has not ended, and its ending (a
        # transition, or the cancelling cascade below) leaves `pending` and
        # settles its waiters in one step after its write, so it will find these
        # waiters, registered before this call: only the others are read.
        deps = {d for w in waiters for d in self.deps.waiting_for(w) if d not in self.pending}
        if not deps:
            return
        states = await self.db.task_states(deps)
        # Tasks are never deleted, so a vanished one is as good as lost.
        ended = [(dep, states.get(dep, TaskState.LOST), None) for dep in sorted(deps)]
        await self.settle_dependents(ended)

    async def settle_dependents(self, ended: Iterable[tuple[int, TaskState, int | None]]) -> None:
        """Tasks reached final states, given as (task_id, state, only): update
        their dependents (just `only` when not None). Released ones are
        scheduled on the next pass; doomed ones end `cancelled`, and their own
        dependents are settled in turn (a work list, not recursion: chains may
        be long)."""
        work = deque(ended)
        released = cancelled = False
        while work:
            task_id, state, only = work.popleft()
            if not state.is_final:
                continue
            if only is None:
                self.deps.forget(task_id)  # it no longer waits itself (killed while pending)
            outcome = self.deps.resolve(task_id, state, only=only)
            released = released or bool(outcome.released)
            for doomed, reason in outcome.cancel:
                # Straight to the database, not self.transition: a pending task
                # holds nothing in the ledger, and this loop settles the cascade.
                after = await self.db.transition(doomed, TaskState.CANCELLED, now=self.clock(), error=reason)
                self.deps.forget(doomed)
                self.pending.pop(doomed, None)
                if after is not None:
                    cancelled = True
                    log.info("task %s cancelled: %s", doomed, reason)
                    work.append((doomed, TaskState.CANCELLED, None))
        if cancelled:
            await self.notify_changed()
        if released:
            self.kick()

    async def describe_dependencies(self, tasks: Iterable[Task]) -> None:
        """Fill in each task's `after`, `after_any` (stored) and `waiting_for`
        (from the index) for its JSON form, and its earlier `attempts`."""
        tasks = list(tasks)
        retried = [t.id for t in tasks if t.attempt > 1]
        earlier = await self.db.attempts_of(retried) if retried else {}
        for task in tasks:
            task.attempts = earlier.get(task.id, [])
        stored = await self.db.dependencies_of(t.id for t in tasks)
        for task in tasks:
            deps = stored.get(task.id, [])
            task.after = [d for d, kind in deps if kind == AFTER]
            task.after_any = [d for d, kind in deps if kind != AFTER]
            task.waiting_for = self.deps.waiting_for(task.id) if task.state is TaskState.PENDING else []

    # ----------------------------------------------------------- transitions
    async def transition(
        self,
        task_id: int,
        new: TaskState,
        *,
        current: Task | None = None,
        attempt: int | None = None,
        **fields: Any,
    ) -> Task | None:
        """Guarded transition with ledger upkeep; None when the guard refused it.

        Pass `current` (the task as last read) when `new` may *enter* a
        holding state from a non-holding one (lost -> running): it is held in
        the ledger before the write, so no concurrent pass can give its
        resources away.

        `attempt`: apply only to that attempt of the task (`--retries`): the
        end of an earlier attempt never touches a newer one. An ending that
        the task's retries cover (`retries.should_retry`) puts it back to
        `pending` instead, with its attempt recorded (the result is then the
        pending task).
        """
        if new in (TaskState.LOST, TaskState.FAILED):
            task = current if current is not None and current.id == task_id else await self.db.get_task(task_id)
            if task is not None and (attempt is None or task.attempt == attempt):
                if should_retry(task, new, fields.get("exit_code")):
                    retried = await self._retry(task, new, fields.get("exit_code"), fields.get("error"))
                    if retried is not None:
                        return retried
                attempt = task.attempt  # whatever happened meanwhile, end at most this attempt
        pre_held = False
        if new.holds_resources and current is not None and current.node and not current.state.holds_resources:
            pre_held = self.ledger.hold(current)
        after = await self.db.transition(task_id, new, now=self.clock(), attempt=attempt, **fields)
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
        if self.on_transition is not None:
            try:
                self.on_transition(current, after)
            except Exception:
                log.exception("a transition observer failed")
        if after.state.is_final:
            self.controlled_at.pop(task_id, None)
            self.retried_from.pop(task_id, None)
            self.fences.forget(task_id)  # it is placed nowhere again; reconciliation kills an old run
            await self.settle_dependents([(task_id, after.state, None)])
        return after

    async def _retry(self, task: Task, ended: TaskState, exit_code: int | None, error: str | None) -> Task | None:
        """Record `task`'s current attempt as ended `ended` and put it back to
        `pending` (host/retries.py); None when the guard refused (it ended or
        was retried meanwhile). Not final, so its dependents keep waiting."""
        after = await self.db.requeue(task.id, task.attempt, ended, now=self.clock(), exit_code=exit_code, error=error)
        if after is None:
            return None
        self.requeued(after, task.node)
        log.info(
            "task %s attempt %d ended %s on %s (%s); retrying as attempt %d of %d",
            task.id,
            task.attempt,
            ended,
            task.node,
            error or f"exit code {exit_code}",
            after.attempt,
            after.retries + 1,
        )
        return after

    def requeued(self, task: Task, node: str | None) -> None:
        """`task` is pending again after its attempt on `node` ended: it holds
        nothing, waits to be placed, and `node` (which may still hold the old
        run) is fenced off until it lets go."""
        self.ledger.release(task.id)
        self.controlled_at.pop(task.id, None)
        self.fences.add(task.id, node)
        if node:
            self.retried_from[task.id] = node
        self.pending.add(task)

    async def finish(
        self,
        task_id: int,
        state: TaskState,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        attempt: int | None = None,
    ) -> Task | None:
        """Move a task to a final state (or retry it), waking waiters and the
        scheduler. `attempt`: only if the task is still at that attempt."""
        task = await self.transition(task_id, state, attempt=attempt, exit_code=exit_code, error=error)
        if task is not None:
            await self.notify_changed()
            self.kick()
        return task

    async def notify_changed(self) -> None:
        """Wake every `wait_final` so it looks again."""
        self.revision += 1
        async with self._changed:
            self._changed.notify_all()

    # ------------------------------------------------------------ to runners
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
