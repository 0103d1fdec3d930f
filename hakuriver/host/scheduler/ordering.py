"""The order of the pending queue: priority, then fair share, then submission.

1. Higher `Task.priority` first (`--priority`, `policy.PRIORITY_MIN..MAX`).
2. Among equal priorities, the owner with less decayed recent usage first
   (`host/fairshare.py`; `usage` maps an owner to it, a missing owner counts
   0). With fair share off `usage` is empty and this step ties.
3. Then by task id: submission order, so one user's tasks of one priority
   keep their FIFO order.

The scheduling pass walks the queue in this order (the first task that
cannot start is the head backfill protects), and the task views number the
positions by it (`host/waiting.py`). The Host's pass gets it from
`pending.PendingQueue` without a sort; `queue_order` is the definition it
keeps to. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ...models import Task

Usage = Mapping[str | None, float]
"""Each owner's decayed usage (core-second equivalents); missing: 0."""


def queue_key(task: Task, usage: Usage) -> tuple[int, float, int]:
    """The sort key of `task` in the pending queue (smaller goes first)."""
    return (-task.priority, usage.get(task.owner, 0.0) if usage else 0.0, task.id)


def queue_order(tasks: Iterable[Task], usage: Usage | None = None) -> list[Task]:
    """`tasks` in queue order (see the module doc)."""
    used = usage or {}
    return sorted(tasks, key=lambda t: queue_key(t, used))
