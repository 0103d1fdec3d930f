"""hakuriver.host.scheduler: the queue's order (priority, fair share, id) and
the invariants of the whole queue policy.

The property test plays a cluster over time with the real parts the Host
combines: the pure `Scheduler`, the `DependencyIndex` (a failed `--after`
dependency cancels its dependents, in cascade), per-user limits, and the
`FairShare` kept in step with the ledger. Random nodes; random tasks of
several users with cores, memory, GPUs, priorities, limits, durations,
dependencies and outcomes (some fail). After every pass it checks: no node
over-committed; no user over a limit; placements follow the queue's order
and no task skipped by the pass could have started after it (so a higher
priority, or a lighter user, is never passed over by one that fits less
well); the head of the queue (its first task that could not start) has a
reservation, and the earliest time it can start on that node is the same
with and without the tasks backfilled there in the pass (backfill never
delays it). At the end every task is final: none waits forever, on a
failed dependency or anything else.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakuriver.errors import ValidationError
from hakuriver.host.dependencies import AFTER, AFTER_ANY, DependencyIndex
from hakuriver.host.fairshare import FairShare
from hakuriver.host.scheduler import (
    UNLIMITED,
    Ledger,
    Placement,
    Scheduler,
    UserLimits,
    check_fits_ever,
    check_fits_limits,
    queue_key,
    queue_order,
)
from hakuriver.host.waiting import QueueOrder
from hakuriver.models import NodeResources, Task, TaskState
from hakuriver.policy import check_priority, check_priority_allowed

from .test_scheduler import G, _check_capacity, node, running, task

S = TaskState


def owned(t: Task, owner: str | None, priority: int = 0) -> Task:
    return dataclasses.replace(t, owner=owner, priority=priority)


# ---------------------------------------------------------------- examples


def test_higher_priority_goes_first_then_id():
    nodes = [node("a", cores=4)]
    pending = [owned(task(1, cores=4), "alice"), owned(task(2, cores=4), "bob", priority=5)]
    sched = Scheduler()
    assert [p.task_id for p in sched.schedule(pending, nodes, Ledger())] == [2]
    # Task 1 is now the head and holds the node's reservation.
    assert sched.last_stats.reserved == {1: "a"}


def test_a_negative_priority_waits_behind_everything_of_default_priority():
    queue = queue_order([owned(task(1), "a", -10), owned(task(3), "b"), owned(task(2), "c", 3)])
    assert [t.id for t in queue] == [2, 3, 1]


def test_fair_share_puts_the_lighter_user_first_within_a_priority():
    nodes = [node("a", cores=4)]
    pending = [owned(task(1, cores=4), "heavy"), owned(task(2, cores=4), "light")]
    usage = {"heavy": 1000.0, "light": 10.0}
    placements = Scheduler().schedule(pending, nodes, Ledger(), usage=usage)
    assert [p.task_id for p in placements] == [2]
    # Priority still wins over fair share.
    pending[0] = owned(pending[0], "heavy", priority=1)
    assert [p.task_id for p in Scheduler().schedule(pending, nodes, Ledger(), usage=usage)] == [1]
    # Without usage (fair share off) it is FIFO within a priority.
    pending[0] = owned(pending[0], "heavy", priority=0)
    assert [p.task_id for p in Scheduler().schedule(pending, nodes, Ledger())] == [1]


def test_the_head_in_the_new_order_is_protected_from_backfill():
    # The light user's 4-core task is the head; the heavy user's 1-core task
    # (earlier by id) may not take a core the head needs.
    nodes = [node("a", cores=4)]
    ledger = Ledger.from_tasks([running(1, "a", cores=1)])
    pending = [owned(task(2, cores=1), "heavy"), owned(task(3, cores=4), "light")]
    sched = Scheduler()
    assert sched.schedule(pending, nodes, ledger, usage={"heavy": 50.0}) == []
    assert sched.last_stats.reserved[3] == "a"
    assert sched.last_stats.reasons[3] == "reserved: head of queue on a (waiting for 4 free cores)"
    assert sched.last_stats.reasons[2].startswith("reserved: ")  # kept off by the head's reservation


def test_limits_keep_the_queue_order_within_one_user():
    nodes = [node("a", cores=8)]
    pending = [owned(task(1), "alice"), owned(task(2), "alice", priority=5), owned(task(3), "bob")]
    limits = {"alice": UserLimits(max_running=1)}
    sched = Scheduler()
    placements = sched.schedule(pending, nodes, Ledger(), limits=lambda o: limits.get(o or "", UNLIMITED))
    assert [p.task_id for p in placements] == [2, 3]  # alice's higher priority one took her one slot
    assert sched.last_stats.reasons[1] == "limit: max-running (1 of 1 running)"


def test_priority_range_and_who_may_raise():
    assert check_priority(-1000) == -1000 and check_priority(1000) == 1000
    for bad in (1001, -1001, True, "5", 1.5):
        with pytest.raises(ValidationError):
            check_priority(bad)
    check_priority_allowed(0, admin=False)
    check_priority_allowed(-5, admin=False)
    check_priority_allowed(1000, admin=True)
    check_priority_allowed(100, admin=False, current=500)  # lowering what an admin gave it
    with pytest.raises(Exception, match="only an admin may raise"):
        check_priority_allowed(1, admin=False)
    with pytest.raises(Exception, match="only an admin may raise"):
        check_priority_allowed(600, admin=False, current=500)


# ---------------------------------------------------------------- the simulation

USERS = ("u0", "u1", "u2")

node_spec = st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([4 * G, 16 * G]), st.sampled_from([0, 1, 2, 4]))
limit_spec = st.builds(
    UserLimits,
    max_cores=st.sampled_from([0, 0, 2, 4, 8]),
    max_gpus=st.sampled_from([0, 0, 1, 2]),
    max_running=st.sampled_from([0, 0, 1, 2, 3]),
)
task_spec = st.tuples(
    st.integers(0, len(USERS) - 1),  # owner
    st.sampled_from([1, 1, 2, 3, 4]),  # cores
    st.sampled_from([None, None, G, 6 * G]),  # memory
    st.sampled_from([0, 0, 0, 1, 2]),  # GPU count
    st.sampled_from([0, 0, 0, 5, -5, 100]),  # priority
    st.integers(1, 6),  # duration
    st.booleans(),  # fails
    st.lists(st.tuples(st.integers(1, 40), st.sampled_from((AFTER, AFTER_ANY))), max_size=2),  # dependencies
    st.integers(0, 4),  # arrival time
)


class Cluster:
    """What the Host keeps around the pure scheduler, over simulated time."""

    def __init__(self, nodes: list[NodeResources], limits: dict[str, UserLimits], half_life: float):
        self.nodes = nodes
        self.limits = limits
        self.sched = Scheduler()
        self.ledger = Ledger()
        self.fairshare = FairShare(half_life, gpu_weight=4)
        self.deps = DependencyIndex()
        self.tasks: dict[int, Task] = {}
        self.after: dict[int, tuple[list[int], list[int]]] = {}
        self.state: dict[int, TaskState] = {}
        self.duration: dict[int, int] = {}
        self.fails: dict[int, bool] = {}
        self.active: dict[int, tuple[Task, Placement]] = {}
        self.ends_at: dict[int, float] = {}

    def limits_of(self, owner: str | None) -> UserLimits:
        return self.limits.get(owner or "", UNLIMITED)

    def submit(self, t: Task, duration: int, fails: bool, after: list[int], after_any: list[int]) -> None:
        self.tasks[t.id], self.duration[t.id], self.fails[t.id] = t, duration, fails
        self.after[t.id] = (after, after_any)
        self.state[t.id] = S.PENDING
        self.deps.add(t.id, after, after_any)
        self.settle([(d, self.state[d]) for d in self.deps.waiting_for(t.id) if self.state[d].is_final])

    def settle(self, ended: list[tuple[int, TaskState]]) -> None:
        work = deque(ended)
        while work:
            task_id, state = work.popleft()
            for doomed, _reason in self.deps.resolve(task_id, state).cancel:
                self.deps.forget(doomed)
                if self.state[doomed] is S.PENDING:
                    self.state[doomed] = S.CANCELLED
                    work.append((doomed, S.CANCELLED))

    def end_due(self, now: float) -> None:
        for tid in sorted(t for t, at in self.ends_at.items() if at <= now):
            del self.ends_at[tid]
            del self.active[tid]
            self.ledger.release(tid)
            self.state[tid] = S.FAILED if self.fails[tid] else S.COMPLETED
            self.deps.forget(tid)
            self.settle([(tid, self.state[tid])])

    def pass_at(self, now: float) -> None:
        self.fairshare.sync(self.ledger.holds(), now)
        usage = self.fairshare.snapshot(now)
        queue = [self.tasks[t] for t, s in self.state.items() if s is S.PENDING and not self.deps.blocked(t)]
        placements = self.sched.schedule(queue, self.nodes, self.ledger, limits=self.limits_of, usage=usage)
        stats = self.sched.last_stats
        for p in placements:
            after, after_any = self.after[p.task_id]
            assert all(self.state[d] is S.COMPLETED for d in after), "started before an --after dependency completed"
            assert all(self.state[d].is_final for d in after_any), "started before an --after-any dependency ended"
            self.state[p.task_id] = S.RUNNING
            self.active[p.task_id] = (self.tasks[p.task_id], p)
            self.ends_at[p.task_id] = now + self.duration[p.task_id]

        _check_capacity(self.nodes, self.active)
        self.check_limits()
        order = {t.id: i for i, t in enumerate(queue_order(queue, usage))}
        # Placements follow the queue's order (priority, then fair share, then id).
        assert [p.task_id for p in placements] == sorted((p.task_id for p in placements), key=order.__getitem__)
        keys = [queue_key(self.tasks[p.task_id], usage) for p in placements]
        assert keys == sorted(keys)
        # A task said to wait for resources could not start now, reservations
        # aside: no task after it took a place it fitted.
        reasons = stats.reasons
        for t in queue:
            if self.state[t.id] is S.PENDING and reasons[t.id].startswith("resources:"):
                assert not self.fits_now(t), f"task {t.id} fits after the pass: {reasons[t.id]}"
        self.check_head(queue, usage, placements, now)

    def fits_now(self, t: Task) -> bool:
        return bool(Scheduler().schedule([t], self.nodes, self.ledger_copy()))

    def ledger_copy(self) -> Ledger:
        ledger = Ledger()
        for t, p in self.active.values():
            ledger.hold_placement(t.id, p.node, cores=t.cores, memory=t.memory, numa=p.numa, gpus=p.gpus, owner=t.owner)
        return ledger

    def check_limits(self) -> None:
        for user, lim in self.limits.items():
            mine = [(t, p) for t, p in self.active.values() if t.owner == user]
            assert not lim.max_running or len(mine) <= lim.max_running
            assert not lim.max_cores or sum(t.cores for t, _ in mine) <= lim.max_cores
            assert not lim.max_gpus or sum(len(p.gpus) for _, p in mine) <= lim.max_gpus

    def check_head(self, queue, usage, placements, now: float) -> None:
        """The head (first in order not placed and not held by a limit) could
        not start anywhere (so every task placed after it in the order, of
        lower priority or a heavier user, took nothing it could use now); it
        has a reservation, and the tasks backfilled onto that node in this
        pass do not move the earliest time it can start there."""
        stats = self.sched.last_stats
        waiting = [
            t for t in queue_order(queue, usage) if self.state[t.id] is S.PENDING and t.id not in self._held(stats)
        ]
        if not waiting:
            return
        head = waiting[0]
        assert not self.fits_now(head), f"head {head.id} fits after the pass: {stats.reasons[head.id]}"
        assert head.id in stats.reserved, stats.reasons[head.id]
        reserved = stats.reserved[head.id]
        head_rank = queue_key(head, usage)
        backfilled = {
            p.task_id for p in placements if p.node == reserved and queue_key(self.tasks[p.task_id], usage) > head_rank
        }
        with_backfill = self.earliest_start(head, reserved, set(), now)
        without = self.earliest_start(head, reserved, backfilled, now)
        assert with_backfill == without, f"backfill {sorted(backfilled)} delays head {head.id}"

    @staticmethod
    def _held(stats) -> set[int]:
        return {tid for tid, why in stats.reasons.items() if why.startswith("limit:")}

    def earliest_start(self, head: Task, hostname: str, leave_out: set[int], now: float) -> float:
        """When `head` could start on `hostname` if nothing else were placed:
        the first end time after which it fits among the tasks still holding."""
        target = next(n for n in self.nodes if n.hostname == hostname)
        holding = [(t, p) for tid, (t, p) in self.active.items() if p.node == hostname and tid not in leave_out]
        for at in sorted({now} | {self.ends_at[t.id] for t, _ in holding}):
            ledger = Ledger()
            for t, p in holding:
                if self.ends_at[t.id] > at:
                    ledger.hold_placement(t.id, p.node, cores=t.cores, memory=t.memory, numa=p.numa, gpus=p.gpus)
            if Scheduler().schedule([head], [target], ledger):
                return at
        raise AssertionError(f"head {head.id} never fits on its reserved node {hostname}")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes_spec=st.lists(node_spec, min_size=1, max_size=3),
    user_limits=st.lists(limit_spec, min_size=len(USERS), max_size=len(USERS)),
    specs=st.lists(task_spec, min_size=1, max_size=24),
    half_life=st.sampled_from([0.0, 3.0, 50.0]),
)
def test_queue_policy_invariants_over_time(nodes_spec, user_limits, specs, half_life):
    nodes = [node(f"n{i}", cores=c, memory=m, gpus=g) for i, (c, m, g) in enumerate(nodes_spec)]
    cluster = Cluster(nodes, dict(zip(USERS, user_limits, strict=True)), half_life)
    arrivals: dict[int, list[tuple]] = {}
    for spec in specs:
        arrivals.setdefault(spec[-1], []).append(spec)
    next_id = 1
    now = 0.0
    for _step in range(400):
        cluster.end_due(now)
        for owner, cores, memory, gpus, priority, duration, fails, deps, _at in arrivals.pop(int(now), []):
            t = owned(task(next_id, cores=cores, memory=memory, gpu_count=gpus), USERS[owner], priority)
            try:  # what Cluster.submit refuses never enters the queue
                check_fits_ever(None, cores, memory, gpus, nodes)
                check_fits_limits(cores, gpus, cluster.limits_of(t.owner), t.owner)
            except Exception:
                continue
            known = [d for d, _ in deps if d < next_id and d in cluster.tasks]
            kinds = dict(deps)
            after = sorted({d for d in known if kinds[d] == AFTER})
            after_any = sorted({d for d in known if kinds[d] == AFTER_ANY and d not in after})
            cluster.submit(t, duration, fails, after, after_any)
            next_id += 1
        cluster.pass_at(now)
        if not arrivals and not cluster.active and not any(s is S.PENDING for s in cluster.state.values()):
            break
        # Next event: a task's end or an arrival.
        upcoming = [at for at in cluster.ends_at.values()] + [float(a) for a in arrivals]
        assert upcoming, (
            "tasks wait with nothing running and nothing to come: "
            f"{ {t: cluster.sched.last_stats.reasons.get(t) for t, s in cluster.state.items() if s is S.PENDING} }"
        )
        now = min(upcoming)
    # None waits forever: every task ended, and one whose --after failed was cancelled.
    assert all(s.is_final for s in cluster.state.values()), cluster.state
    for tid, (after, _any) in cluster.after.items():
        if any(cluster.state[d] is not S.COMPLETED for d in after):
            assert cluster.state[tid] is S.CANCELLED


def test_queue_positions_say_how_many_later_tasks_fair_share_put_ahead():
    pending = [
        owned(task(1), "heavy"),
        owned(task(2), "heavy"),
        owned(task(3), "light"),
        owned(task(4), "light"),
        owned(task(5), "heavy", priority=1),
    ]
    order = QueueOrder(pending, {"heavy": 100.0, "light": 1.0})
    assert [order.position(i) for i in (5, 3, 4, 1, 2)] == [1, 2, 3, 4, 5]
    # 1 and 2 are behind light's later 3 and 4; 5 is ahead by priority, not fair share.
    assert [order.passed_by_fairshare(i) for i in (1, 2, 3, 4, 5)] == [2, 2, 0, 0, 0]
    fifo = QueueOrder(pending)
    assert [fifo.passed_by_fairshare(i) for i in (1, 2, 3, 4, 5)] == [0] * 5
    assert fifo.position(99) is None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.sampled_from(["a", "b", "c"]), st.integers(-1, 1)), unique_by=lambda x: x[0]
    )
)
def test_passed_by_fairshare_counts_later_tasks_ahead(specs):
    """The Fenwick count equals the plain definition: same priority, larger id, earlier in the queue."""
    pending = [owned(task(i), owner, priority=pri) for i, owner, pri in specs]
    usage = {"a": 5.0, "b": 1.0, "c": 3.0}
    order = QueueOrder(pending, usage)
    ordered = sorted(pending, key=lambda t: order.position(t.id))
    for k, t in enumerate(ordered):
        expected = sum(1 for u in ordered[:k] if u.priority == t.priority and u.id > t.id)
        assert order.passed_by_fairshare(t.id) == expected
