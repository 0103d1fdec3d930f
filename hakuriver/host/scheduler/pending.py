"""The pending queue: the tasks waiting for a place, handed to each
scheduling pass in queue order (`ordering`) without sorting the whole queue.

The order is priority, then the owner's fair-share usage, then id. All of a
task's key but the id is shared by every pending task of one owner at one
priority, so the queue keeps the tasks in one bucket per (priority, owner).
A pass then sorts the few buckets by (priority, usage) and runs through each
in id order; only owners that tie on both are merged by id. A bucket is
kept in id order as tasks arrive (ids only grow, so a submit appends); a
task put back with an older id (a retry) marks its bucket to be sorted once,
at the next pass. With one user's tasks at one priority the order is the
bucket itself: no key is computed, nothing is compared.

`PendingQueue.ordered` returns exactly `queue_order(queue.values(), usage)`
(`tests/host/test_pending_queue.py` checks it over random histories). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, KeysView, ValuesView
from itertools import chain
from operator import attrgetter

from ...models import Task
from .ordering import Usage

_BY_ID = attrgetter("id")

_Key = tuple[int, str | None]
"""A bucket: (priority, owner)."""


class _Bucket:
    __slots__ = ("in_order", "last_id", "tasks")

    def __init__(self) -> None:
        self.tasks: dict[int, Task] = {}
        self.last_id = 0
        self.in_order = True

    def add(self, task: Task) -> None:
        if task.id < self.last_id:
            self.in_order = False  # sorted at the next `in_id_order`
        else:
            self.last_id = task.id
        self.tasks[task.id] = task

    def in_id_order(self) -> ValuesView[Task]:
        if not self.in_order:
            self.tasks = {t.id: t for t in sorted(self.tasks.values(), key=_BY_ID)}
            self.in_order = True
        return self.tasks.values()


class PendingQueue:
    """The pending tasks by id; reads like a read-only mapping (`in`, `[]`,
    `get`, `len`, iteration over the ids, `keys`, `values`, `items`).

    Changed only through `add`, `pop` and `set_priority`: a task's priority
    is its place in a bucket, so it must not be assigned behind the queue's
    back while the task is pending."""

    def __init__(self, tasks: Iterable[Task] = ()) -> None:
        self._tasks: dict[int, Task] = {}
        self._buckets: dict[_Key, _Bucket] = {}
        for task in tasks:
            self.add(task)

    # ------------------------------------------------------------- reading
    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __getitem__(self, task_id: int) -> Task:
        return self._tasks[task_id]

    def get(self, task_id: int, default: Task | None = None) -> Task | None:
        return self._tasks.get(task_id, default)

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[int]:
        return iter(self._tasks)

    def keys(self) -> KeysView[int]:
        return self._tasks.keys()

    def values(self) -> ValuesView[Task]:
        return self._tasks.values()

    def items(self) -> Iterable[tuple[int, Task]]:
        return self._tasks.items()

    # ------------------------------------------------------------ changing
    def add(self, task: Task) -> None:
        """Queue `task` (again): a task already queued under its id is replaced."""
        self.pop(task.id)
        self._tasks[task.id] = task
        key = (task.priority, task.owner)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket()
        bucket.add(task)

    def pop(self, task_id: int, default: Task | None = None) -> Task | None:
        """Take task `task_id` off the queue; `default` when it is not queued."""
        task = self._tasks.pop(task_id, None)
        if task is None:
            return default
        key = (task.priority, task.owner)
        bucket = self._buckets[key]
        del bucket.tasks[task_id]
        if not bucket.tasks:
            del self._buckets[key]
        return task

    def set_priority(self, task_id: int, priority: int) -> None:
        """Give queued task `task_id` a new priority (it moves to that bucket)."""
        task = self.pop(task_id)
        if task is None:
            raise KeyError(task_id)
        task.priority = priority
        self.add(task)

    # ------------------------------------------------------------- the order
    def ordered(self, usage: Usage | None = None) -> list[Task]:
        """Every queued task in queue order (`ordering.queue_order`)."""
        used = usage or {}
        groups: dict[tuple[int, float], list[_Bucket]] = {}
        for (priority, owner), bucket in self._buckets.items():
            groups.setdefault((-priority, used.get(owner, 0.0) if used else 0.0), []).append(bucket)
        out: list[Task] = []
        for key in sorted(groups):
            members = groups[key]
            if len(members) == 1:
                out.extend(members[0].in_id_order())
            else:
                # Owners tied on priority and usage: by id across them. Each
                # bucket is a sorted run already, so the sort only merges runs.
                out.extend(sorted(chain.from_iterable(b.in_id_order() for b in members), key=_BY_ID))
        return out
