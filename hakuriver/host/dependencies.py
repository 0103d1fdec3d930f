"""Task dependencies: which pending tasks wait for which others. Pure: no I/O.

A task submitted with `after` (`--after ID,...`) starts only once every named
task ended `completed`; with `after_any` (`--after-any ID,...`) once every
named task reached a final state, whichever. Both may be given: both sets
must be satisfied.

Rules the Host keeps (see `Cluster.submit` and `Cluster.settle_dependents`):
- A dependency must name a task that exists when the dependent is submitted.
  Task ids are handed out at submit, after that check, so a task can never
  depend on itself or on a later task: the graph has no cycles.
- Any user may depend on any task, another user's included: every task's
  state is public (`GET /api/tasks/{id}`, like squeue), and a dependency
  only reads when the other task ended; it gives no control over it.
- When an `after` dependency ends in a final state other than `completed`
  (failed, killed, killed_oom, lost, cancelled), the dependent can never
  start: it ends `cancelled` with the error "dependency ID ended STATE", and
  that cascades to its own dependents. LOST counts as an end here, as it does
  for every Host-side decision: a node that never comes back must not leave
  dependents pending forever; a lost task restored later does not bring
  back dependents already cancelled.
- A task waiting for a dependency is not in the scheduler's queue at all, so
  it is never the blocked "head" that backfill protects: it could not use a
  reservation (its start does not depend on free resources), and a
  reservation held for it would idle a node for as long as its dependencies
  run, which nothing bounds. Once released it takes its place in the queue
  by id like any other pending task.

`DependencyIndex` is the in-memory view the scheduling pass consults in O(1)
per task: each waiting task's unmet dependencies, and for each dependency the
tasks waiting on it, so a task's end finds its dependents without reading the
database. The Host rebuilds it from `task_dependencies` at start.
"""

from __future__ import annotations

from collections.abc import Iterable, KeysView
from dataclasses import dataclass, field

from ..models import TaskState
from ..policy import MAX_DEPENDENCIES

__all__ = ["AFTER", "AFTER_ANY", "MAX_DEPENDENCIES", "DependencyIndex", "Outcome", "satisfies", "unmet_reason"]

AFTER = "after"
AFTER_ANY = "after_any"


def unmet_reason(dep_id: int, state: TaskState) -> str:
    """The error of a task cancelled because dependency `dep_id` ended in `state`."""
    return f"dependency {dep_id} ended {state}"


def satisfies(kind: str, state: TaskState) -> bool | None:
    """Whether a dependency of `kind` in `state` is met (True), can never be
    met (False), or not yet (None)."""
    if not state.is_final:
        return None
    if kind == AFTER_ANY:
        return True
    return state is TaskState.COMPLETED


@dataclass
class _Waiter:
    after: set[int] = field(default_factory=set)
    after_any: set[int] = field(default_factory=set)
    doomed: str | None = None
    """Why it will be cancelled; it stays blocked until `forget`."""

    def unmet(self) -> set[int]:
        return self.after | self.after_any


@dataclass
class Outcome:
    """What a dependency's end changes: tasks now free to be scheduled, and
    tasks that must be cancelled (id, reason)."""

    released: list[int] = field(default_factory=list)
    cancel: list[tuple[int, str]] = field(default_factory=list)

    def extend(self, other: Outcome) -> None:
        self.released.extend(other.released)
        self.cancel.extend(other.cancel)


class DependencyIndex:
    """The pending tasks that wait on others, keyed both ways."""

    def __init__(self) -> None:
        self._waiting: dict[int, _Waiter] = {}
        self._by_dep: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._waiting

    def add(self, task_id: int, after: Iterable[int] = (), after_any: Iterable[int] = ()) -> None:
        """Register a pending task's dependencies (all unmet until resolved).
        A task with none is not registered: nothing holds it back."""
        w = _Waiter(set(after), set(after_any) - set(after))
        if not w.unmet():
            return
        self.forget(task_id)
        self._waiting[task_id] = w
        for dep in w.unmet():
            self._by_dep.setdefault(dep, set()).add(task_id)

    def waiting_ids(self) -> KeysView[int]:
        """The ids of the tasks that may not be scheduled yet (a live view)."""
        return self._waiting.keys()

    def blocked(self, task_id: int) -> bool:
        """Whether the task may not be scheduled yet."""
        return task_id in self._waiting

    def waiting_for(self, task_id: int) -> list[int]:
        """The dependencies the task still waits for, by id (empty when none)."""
        w = self._waiting.get(task_id)
        return sorted(w.unmet()) if w is not None else []

    def waited_on(self) -> set[int]:
        """Every task id some waiting task waits for."""
        return set(self._by_dep)

    def forget(self, task_id: int) -> None:
        """Drop a task that no longer waits (it ended: killed, cancelled)."""
        w = self._waiting.pop(task_id, None)
        if w is None:
            return
        for dep in w.unmet():
            waiters = self._by_dep.get(dep)
            if waiters is not None:
                waiters.discard(task_id)
                if not waiters:
                    del self._by_dep[dep]

    def resolve(self, dep_id: int, state: TaskState, *, only: int | None = None) -> Outcome:
        """Task `dep_id` is in `state`: update its dependents (or just `only`).

        A non-final state changes nothing. A dependent whose last unmet
        dependency this was is released; one whose `after` dependency failed is
        doomed: returned once in `cancel`, and kept blocked until `forget`.
        """
        outcome = Outcome()
        if not state.is_final:
            return outcome
        waiters = self._by_dep.get(dep_id, set())
        for task_id in sorted(waiters if only is None else waiters & {only}):
            w = self._waiting[task_id]
            for kind, deps in ((AFTER, w.after), (AFTER_ANY, w.after_any)):
                if dep_id not in deps:
                    continue
                if satisfies(kind, state):
                    deps.discard(dep_id)
                elif w.doomed is None:
                    w.doomed = unmet_reason(dep_id, state)
                    outcome.cancel.append((task_id, w.doomed))
            waiters.discard(task_id)
            if w.doomed is None and not w.unmet():
                del self._waiting[task_id]
                outcome.released.append(task_id)
        if not waiters:
            self._by_dep.pop(dep_id, None)
        return outcome
