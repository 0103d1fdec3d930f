"""Why each pending task waits, and where it stands in the queue.

The scheduling pass records one short reason per pending task it looked at
(`scheduler.PassStats.reasons`); `WaitBoard` keeps the latest pass's reasons
in memory only (bounded by the scheduler's `max_reasons`, replaced by each
pass, never stored) and answers the task views of the API:

- `pending_reason`: the reason of the latest pass; `no node is online` when
  the pass had no node to look at; `position: not examined yet` for a task
  the pass did not reach (just submitted, or beyond `max_examined`).
- `position`: 1-based place in the pending queue in FIFO (id) order. Backfill
  and limits mean tasks do not always start in that order.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping

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
    """Positions in the pending queue, sorted once for a whole answer."""

    def __init__(self, pending_ids: Iterable[int]):
        self._ids = sorted(pending_ids)

    def position(self, task_id: int) -> int | None:
        i = bisect.bisect_left(self._ids, task_id)
        return i + 1 if i < len(self._ids) and self._ids[i] == task_id else None
