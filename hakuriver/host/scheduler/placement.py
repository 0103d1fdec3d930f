"""Placement (`Scheduler.schedule`): one pass over the pending queue.

The pass walks the queue in its order (`ordering`: priority, then fair
share, then submission); the first task that cannot start is the head.

A targeted task goes to its node (its NUMA node / GPU ids when named). An
untargeted task goes to the tightest-fitting online node: least free GPUs
left for a GPU task (a CPU-only task prefers nodes without GPUs), then least
cores left, then least memory left, then hostname. A GPU count gets the lowest
free ids (avoiding ids a blocked task is waiting for). Only nodes able to run
the task's kind are candidates (`NodeResources.refusal`: a node whose runner
says it has no Docker engine or no systemd for `--container NULL`); a node
that says nothing may run anything.

Backfill is conservative and needs no runtime estimates. A blocked task H
gets a reservation on one node: its target, or for an untargeted task the
online node where it fits by capacity and is closest to fitting now. A later
task S may use that node only if it cannot delay H: for every dimension
(node cores, node memory, cores/memory of H's NUMA node, H's GPU ids or GPU
count) S takes none of it or what stays free after S still covers H's need.
Since every task takes at least one core, a node whose reservation is short of
cores admits nothing; a task waiting only for GPU 0 lets CPU-only work use the
spare cores as long as its own cores and memory still fit.

A drained node (`drained`: an admin's `node drain`) gets no new task and no
reservation: a targeted task waits pending until the node is resumed (the
pass records it in `PassStats.drained`), an untargeted one goes elsewhere. The
node's running tasks keep their holds in the ledger and end normally.

Within one pass free capacity only shrinks and reservations only grow, so a
request shape that failed once fails again: later tasks of the same shape are
skipped in O(1). A pass fully evaluates at most `max_examined` tasks and makes
at most `max_reservations` reservations. Blocked tasks past that cap keep
their place in the queue without a reservation for this pass; as the tasks
ahead of them start they move into the reserved head of the queue, so every
task is protected before long, while nodes nobody reserved keep filling.

A pass asked to `stop_when_full` ends once no candidate node has a core
free (every task needs one, so nothing more can start), or once the
smallest request there is (one core, no memory, no GPU, no target) found no
place with every node a candidate: every later task asks for at least as
much of every dimension, reservations included. Under a backlog a pass then
costs what it placed, not the length of the queue. The tasks it
did not reach get no reason and no reservation from it (`PassStats.walked`
says where it stopped); the caller keeps their previous reasons.

Array limits (`Task.array_max_running`): an array's `%N` works like a
per-user `max_running` for its batch: while N tasks of the batch hold
resources (`Ledger.batch_running`), its other tasks are skipped with the
reason `limit: array max-running`, get no reservation and are never the
protected head.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ...models import NodeResources, Task
from .ledger import Ledger
from .limits import LimitsOf, OwnerGate
from .nodestate import NodeState
from .ordering import Usage, queue_order
from .reasons import wait_reason
from .requests import Request, never_fits_node, request_of

DEFAULT_MAX_EXAMINED = 1000
DEFAULT_MAX_RESERVATIONS = 128
DEFAULT_MAX_REASONS = 10_000
"""Most wait reasons one pass records (the rest read as `position`)."""
SMALLEST = (1, 0, None, None, (), 0)
"""The smallest `Request` but its kind: one core, nothing else, anywhere."""


class Placement(NamedTuple):
    """Where the scheduler put a task (a tuple, as `Database.assign_many` takes)."""

    task_id: int
    node: str
    numa: int | None
    gpus: tuple[int, ...]


@dataclass
class PassStats:
    pending: int = 0
    order: Sequence[Task] = ()
    """The queue in the order this pass walked it (`ordering.queue_order`),
    the tasks it was told to `skip` included."""
    examined: int = 0
    placed: int = 0
    reservations: int = 0
    skipped_same_shape: int = 0
    unreserved: int = 0
    """Blocked tasks left without a reservation because the cap was reached."""
    stopped_early: bool = False
    """True when `max_examined` ended the pass before the end of the queue."""
    stopped_full: bool = False
    """True when `stop_when_full` ended the pass: no node had a core left, or
    a task of the smallest request found no place."""
    walked: int = 0
    """How many tasks of `order` the pass went through before `stop_when_full`
    ended it; all of them otherwise (a pass `max_examined` ended included: the
    tasks past that cap read "not examined", they keep no older reason)."""
    reserved: dict[int, str] = field(default_factory=dict)
    """Blocked task id -> the node reserved for it."""
    drained: dict[int, str] = field(default_factory=dict)
    """Task id -> the drained node it is targeted at (it waits for a resume)."""
    limited: int = 0
    """Tasks held back by their owner's limits."""
    reasons: dict[int, str] = field(default_factory=dict)
    """Pending task id -> why it waits (see the module doc), for the tasks this
    pass looked at and did not place; at most `max_reasons` of them."""


class Scheduler:
    def __init__(
        self,
        *,
        max_examined: int = DEFAULT_MAX_EXAMINED,
        max_reservations: int = DEFAULT_MAX_RESERVATIONS,
        max_reasons: int = DEFAULT_MAX_REASONS,
    ):
        self.max_examined = max_examined
        self.max_reservations = max_reservations
        self.max_reasons = max_reasons
        self.last_stats = PassStats()
        self._requests: dict[int, Request] = {}
        """Each pending task's shape, from the previous pass (by task id)."""

    def schedule(
        self,
        pending: Iterable[Task],
        nodes: Sequence[NodeResources],
        ledger: Ledger,
        limits: LimitsOf | None = None,
        *,
        drained: Collection[str] = (),
        usage: Usage | None = None,
        avoid: Mapping[int, str] | None = None,
        stop_when_full: bool = False,
        in_order: bool = False,
        skip: Collection[int] = (),
    ) -> list[Placement]:
        """Place what fits now, in queue order (`ordering`: priority, then the
        owners' fair-share `usage`, then id) with conservative backfill.

        `nodes` are the online nodes; those named in `drained` get no
        placement and no reservation. Every placement is also held in
        `ledger`; if the caller then fails to record a placement (the task was
        killed meanwhile), it must `ledger.release(task_id)`. `limits` gives
        each owner's effective limits (None: nobody is limited). `avoid`: a
        task id -> a node it goes to only where no other fits (a retried
        task's previous node, host/retries.py). `stop_when_full`: end the
        pass once nothing more can start (see the module doc). `in_order`:
        `pending` is in queue order already (`PendingQueue.ordered` with the
        same `usage`), so the pass does not sort it again; a list is walked
        and kept as `PassStats.order` as it is (the caller hands it over).
        `skip`: ids the pass passes over as if they were not queued (no
        reason, never the head: tasks waiting for a dependency or a retry
        fence); they stay in `PassStats.order`, so only the tasks the pass
        reaches cost a look.
        """
        queue = (pending if isinstance(pending, list) else list(pending)) if in_order else queue_order(pending, usage)
        stats = PassStats(pending=len(queue), order=queue)
        self.last_stats = stats
        known: dict[int, Request] = self._requests
        requests: dict[int, Request] = {}
        self._requests = requests
        drained = frozenset(drained)
        # A drained node is no candidate at all: not for placement, and not for
        # a reservation (which would hold back work on a node nobody may use).
        states = [
            NodeState(n, ledger.usage_record(n.hostname))
            for n in sorted(nodes, key=lambda n: n.hostname)
            if n.hostname not in drained
        ]
        by_name = {s.name: s for s in states}
        placements: list[Placement] = []
        failed: set[Request] = set()
        shape_reason: dict[Request, str] = {}
        gate = OwnerGate(limits, ledger) if limits is not None else None
        reasons = stats.reasons

        def note(task_id: int, why: str) -> None:
            if len(reasons) < self.max_reasons:
                reasons[task_id] = why

        # Cores free on the nodes that may take work; placements only lower it
        # (never reaching 0 when the pass is not to stop).
        free_cores = sum(max(0, st.cores - st.usage.cores) for st in states) if stop_when_full else math.inf
        stats.walked = len(queue)
        for index, task in enumerate(queue):
            if free_cores <= 0:
                stats.stopped_full = True
                stats.walked = index
                break
            if task.id in ledger or task.id in skip:
                continue
            # A pending task's shape never changes: made once, kept across passes.
            req = known.get(task.id)
            if req is None:
                req = request_of(task.target, task.cores, task.memory, task.gpu_count, task.container)
            requests[task.id] = req
            if req.node is not None and req.node in drained:
                stats.drained[task.id] = req.node
                note(task.id, f"node {req.node!r} is drained")
                continue
            if task.array_max_running and ledger.batch_running(task.batch_id) >= task.array_max_running:
                # An array's `%N`: like a user limit, the task is skipped (no
                # reservation, not the protected head), so it delays nobody.
                stats.limited += 1
                note(task.id, f"limit: array max-running ({task.array_max_running} of batch {task.batch_id} running)")
                continue
            if gate is not None:
                # Before the shape cache: a shape that failed for one owner's
                # limit may fit for another owner.
                held_back = gate.refusal(task, req)
                if held_back is not None:
                    stats.limited += 1
                    note(task.id, held_back)
                    continue
            if req in failed:
                stats.skipped_same_shape += 1
                note(task.id, shape_reason[req])
                continue
            if stats.examined >= self.max_examined:
                stats.stopped_early = True
                break
            stats.examined += 1

            if req.node is not None:
                candidates = [by_name[req.node]] if req.node in by_name else []
            else:
                candidates = states
            # A node that says it cannot run this kind (its Docker engine down,
            # no systemd) gets none; a targeted task waits until it can.
            candidates = [st for st in candidates if st.res.refusal(req.kind) is None]
            best: tuple | None = None
            best_state: NodeState | None = None
            best_gpus: tuple[int, ...] = ()
            kept_by: str | None = None
            for st in candidates:
                gpus = st.fit(req)
                if gpus is None:
                    continue
                if st.reservations and not st.respects_reservations(req, gpus):
                    kept_by = kept_by or st.name
                    continue
                if req.node is not None:
                    best_state, best_gpus = st, gpus
                    break
                u = st.usage
                rank = (
                    avoid is not None and avoid.get(task.id) == st.name,
                    (len(st.gpu_ids) - len(u.gpus) - len(gpus)) if req.gpus_needed else (1 if st.gpu_ids else 0),
                    st.cores - u.cores - req.cores,
                    st.memory - u.memory - req.memory,
                    st.name,
                )
                if best is None or rank < best:
                    best, best_state, best_gpus = rank, st, gpus

            if best_state is not None:
                ledger.hold_placement(
                    task.id,
                    best_state.name,
                    cores=req.cores,
                    memory=req.memory,
                    numa=req.numa,
                    gpus=best_gpus,
                    owner=task.owner,
                    batch=task.batch_id,
                )
                placements.append(Placement(task.id, best_state.name, req.numa, best_gpus))
                stats.placed += 1
                free_cores -= req.cores
                continue

            failed.add(req)
            reserve_on = None
            if stats.reservations >= self.max_reservations:
                stats.unreserved += 1
            else:
                reserve_on = self._reservation_node(req, candidates)
                if reserve_on is not None:
                    reserve_on.reservations.append(req)
                    stats.reservations += 1
                    stats.reserved[task.id] = reserve_on.name
            why = wait_reason(req, candidates, by_name, kept_by, reserve_on)
            note(task.id, why)
            shape_reason[req] = f"position: behind task {task.id} (same request)" if reserve_on is not None else why
            if stop_when_full and req[:6] == SMALLEST and len(candidates) == len(states):
                # The smallest request there is found no place on any node:
                # every later task asks for at least as much of everything,
                # and within a pass free capacity only shrinks.
                stats.stopped_full = True
                stats.walked = index + 1
                break
        return placements

    @staticmethod
    def _reservation_node(req: Request, candidates: Sequence[NodeState]) -> NodeState | None:
        best: tuple | None = None
        chosen = None
        for st in candidates:
            if never_fits_node(req, st.res) is not None:
                continue  # it could never start here: reserving would block the node forever
            rank = (st.shortfall(req), 0 if (req.gpus_needed or not st.gpu_ids) else 1, st.name)
            if best is None or rank < best:
                best, chosen = rank, st
        return chosen
