"""Why each pending task waits, and where it stands in the queue.

The scheduling pass records one short reason per pending task it looked at
(`scheduler.PassStats.reasons`); `WaitBoard` keeps the latest pass's reasons
in memory only (bounded by the scheduler's `max_reasons`, replaced by each
pass, never stored) and answers the task views of the API:

- `pending_reason`: the reason of the latest pass; `no node is online` when
  the pass had no node to look at; `position: not examined yet` for a task
  the pass did not reach (just submitted, or beyond `max_examined`).
- `position`: 1-based place in the pending queue in the order the pass
  walks it (`scheduler.ordering`: priority, then the owners' fair-share
  usage, then id), with the fair-share usage as of the answer. Backfill,
  limits and dependencies mean tasks do not always start in that order.
- `passed_by_fairshare`: how many tasks submitted after it fair share put
  ahead of it (same priority, owners with less recent usage): why a task is
  behind later ones. Public like the order itself; the usage figures are not.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

from ..models import Task
from .scheduler import Usage, queue_order

NO_NODE_ONLINE = "no node is online"
NOT_EXAMINED = "position: not examined yet"


class WaitBoard:
    def __init__(self) -> None:
        self._reasons: Mapping[int, str] = {}
        self._no_nodes = False

    def record(self, reasons: Mapping[int, str]) -> None:
        """The reasons of the pass that just ran (the board keeps this mapping)."""
        self._reasons = reasons
        self._no_nodes = False

    def record_no_nodes(self) -> None:
        """A pass found no node online: every pending task waits for one."""
        self._reasons = {}
        self._no_nodes = True

    def reason(self, task_id: int) -> str:
        """Why pending task `task_id` waits (see the module doc)."""
        why = self._reasons.get(task_id)
        if why is not None:
            return why
        return NO_NODE_ONLINE if self._no_nodes else NOT_EXAMINED


class QueueOrder:
    """Positions in the pending queue, sorted once for a whole answer, and
    for each task how many tasks fair share put ahead of it: tasks of the same
    priority submitted after it (so of other users, whose usage is lower)."""

    def __init__(self, pending: Iterable[Task], usage: Usage | None = None):
        self._positions: dict[int, int] = {}
        self._passed_by: dict[int, int] = {}
        seen: dict[int, list[int]] = {}  # priority -> sorted ids placed ahead so far
        for i, t in enumerate(queue_order(pending, usage), start=1):
            self._positions[t.id] = i
            ahead = seen.setdefault(t.priority, [])
            later_ahead = len(ahead) - bisect.bisect_right(ahead, t.id)
            if later_ahead:
                self._passed_by[t.id] = later_ahead
            bisect.insort(ahead, t.id)

    def position(self, task_id: int) -> int | None:
        return self._positions.get(task_id)

    def passed_by_fairshare(self, task_id: int) -> int:
        """Tasks of the same priority, submitted after `task_id`, ahead of it by fair share."""
        return self._passed_by.get(task_id, 0)
