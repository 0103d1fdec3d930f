"""hakuriver.host.dependencies: the index of waiting tasks, and its invariants
with the real Scheduler (property tests).

The simulation plays the Host's part the way `Cluster` does: a submitted task
is registered, then resolved against the states its dependencies have now; a
task's end resolves its dependents; a doomed dependent is cancelled, which
resolves its own dependents in turn (a work list); a Host restart rebuilds
the index from the pending tasks' stored dependencies and resolves it against
the stored states. The scheduling pass sees only the tasks the index does not
block.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hakuriver.host.dependencies import AFTER, AFTER_ANY, DependencyIndex, satisfies, unmet_reason
from hakuriver.host.scheduler import Ledger, Scheduler
from hakuriver.models import FINAL_STATES, TRANSITIONS, NodeResources, Task, TaskState, predecessors

S = TaskState
ENDINGS = (S.COMPLETED, S.COMPLETED, S.FAILED, S.KILLED, S.KILLED_OOM, S.LOST)
"""How a started task may end (completed twice as likely)."""


# ------------------------------------------------------------------ examples
def test_cancelled_is_final_and_entered_from_pending_only() -> None:
    assert S.CANCELLED in FINAL_STATES and S.CANCELLED.is_final
    assert predecessors(S.CANCELLED) == {S.PENDING}
    assert TRANSITIONS[S.CANCELLED] == frozenset()


@pytest.mark.parametrize(
    "kind, state, expected",
    [
        (AFTER, S.COMPLETED, True),
        (AFTER, S.FAILED, False),
        (AFTER, S.LOST, False),
        (AFTER, S.CANCELLED, False),
        (AFTER, S.RUNNING, None),
        (AFTER_ANY, S.FAILED, True),
        (AFTER_ANY, S.CANCELLED, True),
        (AFTER_ANY, S.PENDING, None),
    ],
)
def test_satisfies(kind: str, state: TaskState, expected: bool | None) -> None:
    assert satisfies(kind, state) is expected


def test_a_task_waits_for_all_and_is_released_by_the_last() -> None:
    index = DependencyIndex()
    index.add(10, after=[1, 2], after_any=[3])
    assert index.blocked(10) and index.waiting_for(10) == [1, 2, 3]
    assert index.resolve(1, S.COMPLETED).released == []
    assert index.resolve(3, S.FAILED).released == []  # after_any: any end will do
    assert index.resolve(2, S.RUNNING).released == []  # not an end
    assert index.waiting_for(10) == [2]
    assert index.resolve(2, S.COMPLETED).released == [10]
    assert not index.blocked(10) and len(index) == 0 and index.waited_on() == set()


def test_a_failed_after_dependency_dooms_once_and_keeps_it_blocked() -> None:
    index = DependencyIndex()
    index.add(10, after=[1, 2])
    outcome = index.resolve(1, S.KILLED)
    assert outcome.cancel == [(10, "dependency 1 ended killed")] and outcome.released == []
    assert index.blocked(10)  # until the Host has written `cancelled`
    assert index.resolve(2, S.FAILED).cancel == []  # doomed once, with the first reason
    index.forget(10)
    assert len(index) == 0 and index.waited_on() == set()


def test_a_dependency_in_both_lists_counts_as_after() -> None:
    index = DependencyIndex()
    index.add(10, after=[1], after_any=[1])
    assert index.resolve(1, S.FAILED).cancel == [(10, unmet_reason(1, S.FAILED))]


def test_a_task_without_dependencies_is_not_registered() -> None:
    index = DependencyIndex()
    index.add(10)
    assert not index.blocked(10) and len(index) == 0


def test_resolve_only_one_waiter() -> None:
    index = DependencyIndex()
    index.add(10, after=[1])
    index.add(11, after=[1])
    assert index.resolve(1, S.COMPLETED, only=11).released == [11]
    assert index.blocked(10) and index.resolve(1, S.COMPLETED).released == [10]


# ------------------------------------------------------------------ the simulation
@dataclass
class Sim:
    """The Host's dependency bookkeeping around the real Scheduler."""

    node: NodeResources
    deps: dict[int, tuple[list[int], list[int]]]
    """Each task's (after, after_any), as stored."""
    cores: dict[int, int]
    state: dict[int, TaskState] = field(default_factory=dict)
    error: dict[int, str] = field(default_factory=dict)
    index: DependencyIndex = field(default_factory=DependencyIndex)
    ledger: Ledger = field(default_factory=Ledger)
    scheduler: Scheduler = field(default_factory=Scheduler)
    running: list[int] = field(default_factory=list)
    started: list[int] = field(default_factory=list)

    def submit(self, task_id: int) -> None:
        self.state[task_id] = S.PENDING
        after, after_any = self.deps[task_id]
        self.index.add(task_id, after, after_any)
        self._resolve_stored(self.index.waiting_for(task_id))

    def _resolve_stored(self, deps: list[int]) -> None:
        self.settle([(d, self.state[d]) for d in deps if self.state[d].is_final])

    def settle(self, ended: list[tuple[int, TaskState]]) -> None:
        work = deque(ended)
        while work:
            task_id, state = work.popleft()
            self.index.forget(task_id)
            for doomed, reason in self.index.resolve(task_id, state).cancel:
                self.index.forget(doomed)
                if self.state[doomed] is S.PENDING:  # the guarded write
                    self.state[doomed] = S.CANCELLED
                    self.error[doomed] = reason
                    work.append((doomed, S.CANCELLED))

    def schedule(self) -> int:
        queue = [self._task(t) for t, s in self.state.items() if s is S.PENDING and not self.index.blocked(t)]
        placed = self.scheduler.schedule(queue, [self.node], self.ledger)
        for p in placed:
            self.check_may_start(p.task_id)
            self.state[p.task_id] = S.RUNNING
            self.running.append(p.task_id)
            self.started.append(p.task_id)
        return len(placed)

    def end(self, task_id: int, state: TaskState) -> None:
        self.running.remove(task_id)
        self.ledger.release(task_id)
        self.state[task_id] = state
        self.settle([(task_id, state)])

    def kill_pending(self, task_id: int) -> None:
        self.state[task_id] = S.KILLED
        self.settle([(task_id, S.KILLED)])

    def restart(self) -> None:
        """The Host restarts: the index is rebuilt from what is stored."""
        self.index = DependencyIndex()
        waiting = [t for t, s in self.state.items() if s is S.PENDING]
        for t in waiting:
            self.index.add(t, *self.deps[t])
        self._resolve_stored(sorted({d for t in waiting for d in self.index.waiting_for(t)}))

    def check_may_start(self, task_id: int) -> None:
        after, after_any = self.deps[task_id]
        assert self.state[task_id] is S.PENDING
        for d in after:
            assert self.state[d] is S.COMPLETED, f"task {task_id} started before --after {d} completed"
        for d in after_any:
            assert self.state[d].is_final, f"task {task_id} started before --after-any {d} ended"

    def _task(self, task_id: int) -> Task:
        return Task(
            id=task_id,
            batch_id=task_id,
            state=S.PENDING,
            command=["true"],
            cores=self.cores[task_id],
            memory=None,
            container=None,
            env={},
            mounts=[],
            privileged=False,
            target=None,
        )


@st.composite
def workloads(draw: st.DrawFn) -> tuple[dict[int, tuple[list[int], list[int]]], dict[int, int], dict[int, TaskState]]:
    n = draw(st.integers(1, 14))
    deps: dict[int, tuple[list[int], list[int]]] = {}
    for t in range(1, n + 1):
        earlier = list(range(1, t))
        chosen = draw(st.lists(st.sampled_from(earlier), max_size=4, unique=True)) if earlier else []
        kinds = [draw(st.sampled_from((AFTER, AFTER_ANY))) for _ in chosen]
        deps[t] = (
            [d for d, k in zip(chosen, kinds, strict=True) if k == AFTER],
            [d for d, k in zip(chosen, kinds, strict=True) if k == AFTER_ANY],
        )
    cores = {t: draw(st.integers(1, 4)) for t in deps}
    endings = {t: draw(st.sampled_from(ENDINGS)) for t in deps}
    return deps, cores, endings


@settings(max_examples=150, deadline=None)
@given(workloads(), st.integers(0, 2**32), st.integers(2, 6))
def test_no_task_starts_early_and_none_waits_forever(workload, seed: int, node_cores: int) -> None:
    """Invariants, whatever the order of submits, ends, kills and restarts:
    - a task starts only after each --after dependency completed and each
      --after-any dependency ended (checked at every placement);
    - a task is cancelled exactly when one of its --after dependencies ended
      otherwise, and its error names that dependency and how it ended;
    - once everything has settled, no task is left pending: none waits forever
      on a dependency that failed, and the index is empty.
    """
    deps, cores, endings = workload
    rng = random.Random(seed)
    sim = Sim(
        NodeResources("n1", "http://n1:8001", cores=node_cores, memory=1 << 40),
        deps,
        {t: min(c, node_cores) for t, c in cores.items()},
    )
    unsubmitted = deque(sorted(deps))
    for _ in range(10 * len(deps) + 10):
        action = rng.choice(("submit", "submit", "schedule", "end", "end", "kill", "restart"))
        if action == "submit" and unsubmitted:
            sim.submit(unsubmitted.popleft())
        elif action == "schedule":
            sim.schedule()
        elif action == "end" and sim.running:
            task_id = rng.choice(sim.running)
            sim.end(task_id, endings[task_id])
        elif action == "kill" and rng.random() < 0.2:
            pending = [t for t, s in sim.state.items() if s is S.PENDING]
            if pending:
                sim.kill_pending(rng.choice(pending))
        elif action == "restart" and rng.random() < 0.3:
            sim.restart()
    # Let it run to the end: submit the rest, then schedule and end until quiet.
    while unsubmitted:
        sim.submit(unsubmitted.popleft())
    while sim.schedule() or sim.running:
        while sim.running:
            task_id = sim.running[0]
            sim.end(task_id, endings[task_id])

    assert [t for t, s in sim.state.items() if s is S.PENDING] == []
    assert len(sim.index) == 0 and sim.index.waited_on() == set()
    for t, state in sim.state.items():
        after, _ = deps[t]
        failed = [d for d in after if sim.state[d] is not S.COMPLETED]
        if state is S.CANCELLED:
            assert t not in sim.started
            dep = int(sim.error[t].split()[1])
            assert dep in failed and sim.error[t] == unmet_reason(dep, sim.state[dep])
        elif t in sim.started:
            assert failed == []


@settings(max_examples=100, deadline=None)
@given(workloads())
def test_a_failure_cancels_exactly_the_after_descendants(workload) -> None:
    """Submit everything, fail task 1 before anything else ends: the tasks that
    reach it through --after edges only are cancelled; --after-any edges stop
    the cascade."""
    deps, cores, _ = workload
    sim = Sim(NodeResources("n1", "http://n1:8001", cores=8, memory=1 << 40), deps, cores)
    for t in sorted(deps):
        sim.submit(t)
    sim.schedule()
    if 1 not in sim.running:
        return
    sim.end(1, S.FAILED)
    doomed = {1}
    for t in sorted(deps):  # ids are topological: dependencies are older
        if any(d in doomed for d in deps[t][0]):
            doomed.add(t)
    cancelled = {t for t, s in sim.state.items() if s is S.CANCELLED}
    assert cancelled == doomed - {1}
