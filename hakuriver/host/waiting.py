"""Why each pending task waits, and where it stands in the queue.

The scheduling pass records one short reason per pending task it looked at
(`scheduler.PassStats.reasons`); `WaitBoard` keeps the latest pass's reasons
in memory only (never stored) and answers the task views of the API. Each
pass that walks the whole queue replaces them; one that stopped early lays
what it said over them, so the tasks it did not reach keep their older
reasons. They are bounded by the scheduler's `max_reasons` plus the tasks
the passes that stopped early reached since the latest full walk:

- `pending_reason`: the reason of the latest pass that reached the task (a
  pass stops once nothing more can start, `Scheduler.schedule`'s
  `stop_when_full`; the dispatcher walks the whole queue at least every
  `SATURATED_PASS_SECONDS`); `no node is online` when
  the pass had no node to look at; `position: not examined yet` for a task
  the pass did not reach (just submitted, or beyond `max_examined`).
- `position`: 1-based place in the pending queue in the order the latest
  pass walked it (`scheduler.ordering`: priority, then the owners' fair-share
  usage, then id). Null for a task that pass did not see (submitted since,
  or waiting for a dependency or a retry fence). Backfill, limits and
  dependencies mean tasks do not always start in that order. The positions
  are worked out at most once per pass, and only when a view asks: an answer
  never sorts the queue.
- `passed_by_fairshare`: how many tasks submitted after it fair share put
  ahead of it (same priority, owners with less recent usage): why a task is
  behind later ones. Public like the order itself; the usage figures are not.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from ..models import Task
from .scheduler import Usage, queue_order

NO_NODE_ONLINE = "no node is online"
NOT_EXAMINED = "position: not examined yet"
INLINE_ORDER = 2000
"""Queues up to this long get their positions on the event loop (under a millisecond or two)."""


class WaitBoard:
    def __init__(self) -> None:
        self._reasons: Mapping[int, str] = {}
        """The reasons of the latest pass that walked the whole queue."""
        self._since: dict[int, str | None] = {}
        """What the passes that stopped early said since, over `_reasons`:
        a reason, or None for a task one reached and gave none."""
        self._no_nodes = False
        self._walked: Sequence[Task] = ()
        self._hidden: AbstractSet[int] = frozenset()
        self._order: QueueOrder | None = None

    def record(
        self,
        reasons: dict[int, str],
        order: Sequence[Task] = (),
        *,
        walked: int | None = None,
        hidden: AbstractSet[int] = frozenset(),
    ) -> None:
        """The reasons of the pass that just ran, and the queue in the order it
        walked it (the board keeps both; the positions are made when asked).
        `walked`: the pass stopped after that many tasks of `order` (every
        node was full); each task it did not reach keeps the reason it had,
        so a backlog's reasons are as old as the latest pass that reached
        them, never lost. None: the pass went through the whole queue.
        `hidden`: tasks of `order` the pass passed over (waiting for a
        dependency or a retry fence): they get no position."""
        if walked is not None and walked < len(order) and (self._reasons or self._since):
            # Laid over the earlier reasons, which are neither copied nor
            # looked up down a deep queue: the pass costs what it walked.
            # Those of tasks that left the queue are never asked for, and go
            # with the next full walk.
            since = self._since
            for task in order[:walked]:
                since[task.id] = None  # reached: only this pass's reason counts
            since.update(reasons)
        else:
            self._reasons, self._since = reasons, {}
        self._no_nodes = False
        self._walked, self._hidden, self._order = order, hidden, None

    def record_no_nodes(self, order: Sequence[Task] = ()) -> None:
        """A pass found no node online: every pending task waits for one."""
        self._reasons, self._since = {}, {}
        self._no_nodes = True
        self._walked, self._hidden, self._order = order, frozenset(), None

    def reason(self, task_id: int) -> str:
        """Why pending task `task_id` waits (see the module doc)."""
        why = self._since[task_id] if task_id in self._since else self._reasons.get(task_id)
        if why is not None:
            return why
        return NO_NODE_ONLINE if self._no_nodes else NOT_EXAMINED

    def order_now(self) -> QueueOrder:
        """The positions of the latest pass if they are made already, else none
        (an answer never makes them on the event loop: see `order`)."""
        return self._order if self._order is not None else EMPTY_ORDER

    async def order(self) -> QueueOrder:
        """The positions of the latest pass, made once per pass. A long queue's
        are made in a thread (a Fenwick tree over 50,000 tasks takes a fifth of
        a second), so heartbeats go on meanwhile."""
        if self._order is not None:  # `record` clears it for each new pass
            return self._order
        walked = self._walked
        if len(walked) <= INLINE_ORDER:
            order = QueueOrder.from_ordered(walked, self._hidden)
        else:
            order = await asyncio.to_thread(QueueOrder.from_ordered, list(walked), self._hidden)
        if self._walked is walked:  # no newer pass meanwhile
            self._order = order
        return order


class QueueOrder:
    """Positions in the pending queue, and for each task how many tasks fair
    share put ahead of it: tasks of the same priority submitted after it (so
    of other users, whose usage is lower)."""

    def __init__(self, pending: Iterable[Task], usage: Usage | None = None):
        self._positions: dict[int, int] = {}
        self._passed_by: dict[int, int] = {}
        self._fill(queue_order(pending, usage))

    @classmethod
    def from_ordered(cls, ordered: Sequence[Task], hidden: AbstractSet[int] = frozenset()) -> QueueOrder:
        """From a queue already in queue order (a pass's `PassStats.order`),
        leaving out the tasks in `hidden`."""
        order = cls(())
        order._fill([t for t in ordered if t.id not in hidden] if hidden else ordered)
        return order

    def _fill(self, ordered: Sequence[Task]) -> None:
        groups: dict[int, list[Task]] = {}
        for i, t in enumerate(ordered, start=1):
            self._positions[t.id] = i
            groups.setdefault(t.priority, []).append(t)
        for members in groups.values():
            self._passed_by.update(_later_ahead(members))

    def position(self, task_id: int) -> int | None:
        return self._positions.get(task_id)

    def passed_by_fairshare(self, task_id: int) -> int:
        """Tasks of the same priority, submitted after `task_id`, ahead of it by fair share."""
        return self._passed_by.get(task_id, 0)


def _later_ahead(members: Sequence[Task]) -> dict[int, int]:
    """For tasks of one priority in queue order: how many with a larger id
    (submitted later) come before each. O(n log n), a Fenwick tree over the
    ids' ranks; nothing at all to do when the order is plain FIFO."""
    if all(a.id < b.id for a, b in itertools.pairwise(members)):
        return {}
    rank = {task_id: r for r, task_id in enumerate(sorted(t.id for t in members), start=1)}
    tree = [0] * (len(members) + 1)
    out: dict[int, int] = {}
    for seen, t in enumerate(members):
        r = rank[t.id]
        at_most, i = 0, r
        while i:
            at_most += tree[i]
            i -= i & -i
        if seen - at_most:
            out[t.id] = seen - at_most
        i = r
        while i < len(tree):
            tree[i] += 1
            i += i & -i
    return out


EMPTY_ORDER = QueueOrder(())
"""No positions known (yet)."""
