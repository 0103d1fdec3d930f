"""Dispatch: the scheduling pass and sending placed tasks to their runners.

The `Dispatcher` waits for the cluster's kicks (a submit, a task ending, a
node coming back), runs one pass of the pure `Scheduler` over the pending
queue under the cluster lock, writes the placements (pending -> assigning),
and sends the placed tasks to their runners after the lock is released,
one request per node (`Dispatcher.send`). A
burst of events shares one pass (`PASS_COALESCE_SECONDS`), while a lone
event on a quiet Host runs its pass at once (`coalesce_delay`), and after a pass
the loop rests three times as long as it took (at most
`PASS_MAX_REST_SECONDS`), so that a deep queue under a stream of submits
costs a bounded share of the Host's time. Each pass first
brings the fair share (`host/fairshare.py`) up to date with the ledger, and
the pending queue hands the pass its tasks by priority, fair share and id.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..models import SYSTEMD_CONTAINER, NodeResources, RunnerReport, Task, TaskState
from ..parsing import parse_mount
from ..runrequest import RunRequest
from .cluster import Cluster
from .reports import Reports
from .runner_client import SEND_ALONE, STARTED, RunnerRejected, RunnerUnreachable, started
from .scheduler import LimitsOf, Scheduler

log = logging.getLogger(__name__)

PASS_REST_FACTOR = 3.0
"""After a pass of T seconds the next one starts no sooner than 3 T later."""
PASS_MAX_REST_SECONDS = 0.5
"""The longest rest after a pass: a deep queue still sees a pass twice a second."""
SATURATED_PASS_SECONDS = 5.0
"""While no node has a core free, the scheduler runs at most this often (to
give new tasks their reasons and positions); a freed core runs it at once."""
PASS_COALESCE_SECONDS = 0.005
"""How long a scheduling pass waits after the first event, to batch a burst."""
PASS_QUIET_SECONDS = 0.02
"""A Host is quiet when no pass has found tasks pending for this long: the next
event's pass then runs at once (a burst's first event; a lone submit)."""


def coalesce_delay(now: float, busy_at: float) -> float:
    """How long the pass after an event at `now` waits for more events to share
    it, given when the latest pass that found tasks pending began (`busy_at`):
    PASS_COALESCE_SECONDS while the Host is busy, nothing once it is quiet, so a
    single task is never held for a burst that is not coming."""
    return PASS_COALESCE_SECONDS if now - busy_at < PASS_QUIET_SECONDS else 0.0


class Dispatcher:
    def __init__(
        self,
        cluster: Cluster,
        unix_user_of: Callable[[str | None], str | None] = lambda _name: None,
        limits_of: LimitsOf | None = None,
        reports: Reports | None = None,
    ):
        self.cluster = cluster
        self.reports = reports if reports is not None else Reports(cluster)
        """Applies the `running` reports that come in runners' answers to orders."""
        self.scheduler = Scheduler()
        self.unix_user_of = unix_user_of
        self.limits_of = limits_of
        """Each owner's effective limits (`Accounts.effective_limits`); None: nobody is limited."""
        self._full_pass_at = float("-inf")
        """When the latest pass that walked the whole queue began (the loop's monotonic clock)."""
        self._busy_at = float("-inf")
        """When the latest pass that found tasks pending began (same clock): `coalesce_delay`."""
        self._kick_later = False
        self.on_pass: Callable[[float], None] | None = None
        """Told each completed pass's seconds (the metrics)."""

    def resume(self, assigning: list[Task]) -> None:
        """Send again the tasks a Host restart caught in `assigning`. Runners
        accept a task id idempotently, so sending twice loses nothing."""
        self.send(assigning)

    def send(self, tasks: list[Task]) -> None:
        """Send placed tasks to their runners in the background: one request
        per node (`dispatch_many`), not one per task."""
        by_node: dict[str, list[Task]] = {}
        for task in tasks:
            by_node.setdefault(task.node or "", []).append(task)
        for node_tasks in by_node.values():
            self.cluster.spawn(self.dispatch_many(node_tasks))

    async def schedule_loop(self) -> None:
        cluster = self.cluster
        while True:
            await cluster.kicked()
            # While busy, let a burst of submits and reports land before looking:
            # one pass over the queue then serves them all, instead of one each.
            delay = coalesce_delay(asyncio.get_running_loop().time(), self._busy_at)
            if delay:
                await asyncio.sleep(delay)
            cluster.clear_kick()
            try:
                began = time.perf_counter()
                await self.schedule_once()
                took = time.perf_counter() - began
                if self.on_pass is not None:
                    self.on_pass(took)
            except Exception:
                log.exception("scheduling pass failed; retrying on the next event")
                await asyncio.sleep(1.0)
                cluster.kick()
                continue
            # A pass costs in proportion to the queue. Under a stream of submits
            # a kick is always waiting, so rest in proportion too: passes then
            # take at most a quarter of the loop, however deep the queue, and
            # the submits and heartbeats keep the rest (bench/scheduling.py).
            await asyncio.sleep(min(PASS_MAX_REST_SECONDS, PASS_REST_FACTOR * took))

    async def schedule_once(self) -> list[Task]:
        cluster = self.cluster
        # Every pass (even with nothing pending: a task just ended) brings the
        # fair share up to date with the ledger: no database read.
        cluster.fairshare.sync(cluster.ledger.holds(), cluster.clock())
        if not cluster.pending:
            return []
        self._busy_at = asyncio.get_running_loop().time()
        async with cluster.lock:
            online = cluster.online_resources()
            if not online:
                # Rare (every node down): the order is still shown.
                usage = cluster.fairshare.snapshot(cluster.clock())
                cluster.waits.record_no_nodes(cluster.pending.ordered(usage))
                return []
            loop = asyncio.get_running_loop()
            waited = loop.time() - self._full_pass_at
            if self._saturated(online) and waited < SATURATED_PASS_SECONDS:
                # No node has a core free, so no task can start, whatever was
                # submitted: the pass would only redo the reasons. It runs
                # again as soon as a task lets go of resources (its kick finds
                # a core free), or SATURATED_PASS_SECONDS after the last one,
                # for new tasks' reasons and positions.
                if not self._kick_later:
                    self._kick_later = True
                    loop.call_later(SATURATED_PASS_SECONDS - waited, self._late_kick)
                return []
            began = loop.time()
            # Tasks waiting for a dependency are passed over, not placed
            # behind: they cannot start however much is free, so they must not
            # be the head that backfill reserves for (host/dependencies.py).
            # A retried task waits while a node that may still hold its earlier
            # attempt is online (host/retries.py): a runner holds one run per id.
            fenced = {t: self._fence_holder(t) for t in cluster.fences.fenced_ids()} if cluster.fences else {}
            # The queue comes in its order (priority, fair share, id) from
            # the pending queue's buckets, not from a sort of every task.
            usage = cluster.fairshare.snapshot(cluster.clock())
            # Passed over by the scheduler, not filtered out of the whole
            # queue first: a pass that stops early never looks at most of
            # them. A copy, since the positions are made from it later.
            skip = frozenset(cluster.deps.waiting_ids()).union(t for t, holder in fenced.items() if holder)
            # The scheduler holds each placement in the ledger as it decides.
            placements = self.scheduler.schedule(
                cluster.pending.ordered(usage),
                online,
                cluster.ledger,
                limits=self.limits_of,
                drained=cluster.drains.keys(),
                avoid=cluster.retried_from,
                usage=usage,
                in_order=True,
                skip=skip,
                # Under a backlog, a pass stops once nothing more can start
                # (every node full, or a one-core task found no place); one
                # walks the whole queue at least every
                # SATURATED_PASS_SECONDS, for new tasks' reasons.
                stop_when_full=waited < SATURATED_PASS_SECONDS,
            )
            stats = self.scheduler.last_stats
            if not stats.stopped_full:
                self._full_pass_at = began
            reasons = stats.reasons
            for task_id, holder in fenced.items():
                if holder and task_id in cluster.pending:
                    reasons[task_id] = f"retry: waiting for node {holder!r} to let go of the earlier attempt"
            cluster.waits.record(reasons, stats.order, walked=stats.walked if stats.stopped_full else None, hidden=skip)
            if not placements:
                return []
            now = cluster.clock()
            moved = set(
                await cluster.db.assign_many([(p.task_id, p.node, p.numa, list(p.gpus)) for p in placements], now)
            )
            dispatched = []
            for p in placements:
                task = cluster.pending.pop(p.task_id, None)
                if task is None or p.task_id not in moved:
                    cluster.ledger.release(p.task_id)  # killed meanwhile
                    continue
                cluster.retried_from.pop(p.task_id, None)
                task.state = TaskState.ASSIGNING
                task.node, task.numa, task.gpus, task.assigned_at = p.node, p.numa, list(p.gpus), now
                dispatched.append(task)
            cluster.fairshare.sync(cluster.ledger.holds(), now)  # they accrue from their placement
        self.send(dispatched)
        return dispatched

    def _fence_holder(self, task_id: int) -> str | None:
        """An online node that may still hold an earlier attempt of the task, or None."""
        nodes = self.cluster.nodes
        return next((n for n in sorted(self.cluster.fences.fenced(task_id)) if n in nodes and nodes[n].online), None)

    def _late_kick(self) -> None:
        self._kick_later = False
        self.cluster.kick()

    def _saturated(self, online: list[NodeResources]) -> bool:
        """Every node that may take work has all its cores held (every task needs one)."""
        cluster = self.cluster
        return all(
            cluster.ledger.usage_record(n.hostname).cores >= n.cores for n in online if n.hostname not in cluster.drains
        )

    def run_request(self, task: Task) -> RunRequest:
        """What the runner is told: the task, its placement, the admin's extra
        mounts, and who submitted it (their Unix account as of now)."""
        mounts = tuple(task.mounts)
        if task.container != SYSTEMD_CONTAINER:
            mounts += tuple(parse_mount(m) for m in self.cluster.config.docker.additional_mounts)
        return RunRequest(
            task_id=task.id,
            command=tuple(task.command),
            container=task.container or self.cluster.config.docker.default_container_name,
            env=dict(task.env),
            cores=task.cores,
            memory=task.memory,
            gpus=tuple(task.gpus),
            numa=task.numa,
            mounts=mounts,
            privileged=task.privileged,
            user=task.owner or "",
            unix_user=self.unix_user_of(task.owner),
            time_limit=task.time_limit,
            batch_id=task.batch_id if task.array_index is not None else None,
            array_index=task.array_index,
            attempt=task.attempt,
        )

    async def dispatch_many(self, tasks: list[Task]) -> None:
        """Send tasks placed on one node in one request (`RunnerClient.run_tasks`);
        each task's refusal or lost answer fails that task as `dispatch` would.
        A single task, and each task the runner could not take in a batch (an
        older runner without the route), goes alone (`dispatch`)."""
        cluster = self.cluster
        node = cluster.nodes.get(tasks[0].node or "")
        if len(tasks) == 1 or node is None or not cluster.runners.batches_to(node):
            await asyncio.gather(*(self.dispatch(task) for task in tasks))
            return
        outcomes = await cluster.runners.run_tasks(node, [self.run_request(task).to_json() for task in tasks])
        alone = []
        ended = []
        running = []
        for task, outcome in zip(tasks, outcomes, strict=True):
            if outcome == STARTED:
                running.append(task)
            elif outcome is SEND_ALONE:
                alone.append(task)
            elif isinstance(outcome, RunnerRejected):
                ended.append((task, f"runner {node.hostname} refused the task: {outcome.message}"))
            elif isinstance(outcome, RunnerUnreachable):
                ended.append((task, f"dispatch to {node.hostname} failed: {outcome}"))
        await asyncio.gather(
            self._started(node.hostname, running),
            *(self.dispatch(task) for task in alone),
            *(cluster.finish(task.id, TaskState.FAILED, error=error, attempt=task.attempt) for task, error in ended),
        )

    async def _started(self, node_name: str, tasks: list[Task]) -> None:
        """The runner answered the order of `tasks` once they had started: their
        `running` reports came with the answer, applied as if sent on their own
        (`Reports`: a task killed or moved meanwhile is left as it is)."""
        if not tasks:
            return
        reports = [RunnerReport(task.id, TaskState.RUNNING, attempt=task.attempt) for task in tasks]
        try:
            outcomes = await self.reports.apply_reports(node_name, reports)
        except Exception:  # the task is dispatched: its runner's heartbeat says it runs
            log.exception("applying the running state in %s's answer failed", node_name)
            return
        for task, outcome in zip(tasks, outcomes, strict=True):
            if isinstance(outcome, Exception):  # killed or retried meanwhile: as a late report
                log.debug("task %s: the running state in %s's answer was not applied: %s", task.id, node_name, outcome)

    async def dispatch(self, task: Task) -> None:
        cluster = self.cluster
        node = cluster.nodes.get(task.node or "")
        if node is None:
            await cluster.finish(
                task.id, TaskState.FAILED, error=f"node {task.node} vanished before dispatch", attempt=task.attempt
            )
            return
        try:
            answer = await cluster.runners.run_task(node, self.run_request(task).to_json())
        except RunnerRejected as exc:
            await cluster.finish(
                task.id,
                TaskState.FAILED,
                error=f"runner {node.hostname} refused the task: {exc.message}",
                attempt=task.attempt,
            )
        except RunnerUnreachable as exc:
            # The runner may have received it (a timeout after sending); its
            # heartbeat will list the task if so, and a final state here makes
            # the Host ask it to kill the task again. Nothing runs untracked.
            await cluster.finish(
                task.id, TaskState.FAILED, error=f"dispatch to {node.hostname} failed: {exc}", attempt=task.attempt
            )
        else:
            if started(answer):
                await self._started(node.hostname, [task])
