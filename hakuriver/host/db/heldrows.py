"""The stored rows of the tasks that hold resources, kept in memory.

A runner's report is about a task that holds resources on its node
(assigning, running, paused), and the Host reads that task before it applies
the report (`Reports.apply_reports`). That read was a trip through the
database thread for every batch of reports: a hand-off to the thread and
back, on a machine where the event loop and the thread contend for the GIL.
`HeldRows` answers it from memory instead, with exactly what the database
holds, because it only ever holds what a completed write of this process
returned:

- A write that may change a task's row `begin`s by forgetting the row (so a
  read meanwhile goes to the database, and waits for the write as before),
  and `end`s by keeping what the write returned (`RETURNING`), if the task
  still holds resources and no other write of it was queued since (writes
  apply in the order queued, so the last one queued has the last word).
- A write whose rows are not known before it runs (a node marked offline)
  forgets every row (`forget_all`); writes begun before it keep nothing.
- Nothing else writes the `tasks` table while the Host has it open: the Host
  is its only writer (a second process is refused a lock; an offline
  restore happens with the Host stopped).

Reads never fill it: a row read may be overtaken by a write queued while
the read waited. The rows of the tasks a pass places come from that pass's
write (`assign_many`), so a task's first report already finds its row.
Everything here runs on the event loop; the database thread never touches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from ...models import HOLDING_STATES

_STATE_COLUMN = 2
"""Where `state` is in a row of `schema._TASK_COLUMNS` (rows._task_from_row reads it there too)."""


class HeldRows:
    """See the module docstring."""

    __slots__ = ("_rows", "_writing", "_epoch")

    def __init__(self) -> None:
        self._rows: dict[int, Sequence[Any]] = {}
        self._writing: dict[int, int] = {}
        """Task id -> writes of it queued and not yet ended."""
        self._epoch = 0

    def begin(self, ids: Iterable[int]) -> int:
        """A write of these tasks is about to be queued; returns its token for `end`."""
        rows, writing = self._rows, self._writing
        for task_id in ids:
            rows.pop(task_id, None)
            writing[task_id] = writing.get(task_id, 0) + 1
        return self._epoch

    def end(self, ids: Iterable[int], token: int, written: Mapping[int, Sequence[Any]]) -> None:
        """The write `begin` returned `token` for ended: `written` are the rows it
        returned (nothing when it failed or its guard refused)."""
        rows, writing = self._rows, self._writing
        for task_id in ids:
            left = writing.get(task_id, 1) - 1
            if left > 0:
                writing[task_id] = left
                continue  # a later write of it is queued: that one has the last word
            writing.pop(task_id, None)
            row = written.get(task_id)
            if row is not None and token == self._epoch and row[_STATE_COLUMN] in HOLDING_STATES:
                rows[task_id] = row

    @contextmanager
    def writing(self, ids: Sequence[int]) -> Iterator[dict[int, Sequence[Any]]]:
        """`begin` and `end` around one write: the caller puts the rows the
        write returned into the dict it is given (left empty when it failed)."""
        token = self.begin(ids)
        written: dict[int, Sequence[Any]] = {}
        try:
            yield written
        finally:
            self.end(ids, token, written)

    def forget_all(self) -> None:
        """A write is about to change rows nobody can name before it runs."""
        self._rows.clear()
        self._epoch += 1

    def get(self, task_id: int) -> Sequence[Any] | None:
        return self._rows.get(task_id)

    def __len__(self) -> int:
        return len(self._rows)
