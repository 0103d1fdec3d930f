"""SQL for accounting over final tasks: usage sums and the retention purge."""

from __future__ import annotations

from typing import Any

import aiosqlite

from .rows import USAGE_GROUPS, UsageRow, _chunks
from .schema import _FINAL_SQL
from .store import Store


class AccountingQueries(Store):
    """Usage and purge (mixed into `Database`)."""

    async def usage(self, *, by: str = "user", since: float | None = None, owner: str | None = None) -> list[UsageRow]:
        """What final tasks used, summed by owner or by node, largest
        core-hours first: a task's hours are (finished - started) / 3600, its
        core-hours cores x hours, its GPU-hours its GPUs (the ids it held, or
        `gpu_count` if it holds none yet recorded) x hours. Only tasks that
        both started and finished count (one cancelled while pending used
        nothing). With `since`, only tasks that finished at or after it count,
        and only their time after it: a month's usage holds the part of a long
        task that ran in that month. With `owner`, only that user's tasks."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"usage by {by!r}")
        column = "owner" if by == "user" else "node"
        start = "started_at" if since is None else "MAX(started_at, ?)"
        params: list[Any] = [] if since is None else [float(since)]
        where = [f"state IN ({_FINAL_SQL})", "started_at IS NOT NULL", "finished_at IS NOT NULL"]
        if since is not None:
            where.append("finished_at >= ?")
            params.append(float(since))
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        # One aggregate over the rows; a clock step back (finished before
        # started) counts as no time, never as negative hours.
        sql = (
            f"SELECT {column}, COUNT(*), SUM(cores * h), SUM(g * h), SUM(h) FROM ("
            f" SELECT {column}, cores, MAX(json_array_length(gpus_json), gpu_count) AS g,"
            f" MAX(finished_at - {start}, 0) / 3600.0 AS h"
            f" FROM tasks WHERE {' AND '.join(where)})"
            f" GROUP BY {column} ORDER BY 3 DESC, 1"
        )
        return await self._fetch(
            sql, params, lambda _c, r: UsageRow(r[0], int(r[1]), float(r[2] or 0), float(r[3] or 0), float(r[4] or 0))
        )

    async def usage_spans(self, *, finished_since: float) -> list[tuple[str | None, int, int, float, float]]:
        """(owner, cores, GPUs, start, end) of every final task that held
        resources and finished at or after `finished_since`: the fair share's
        rebuild at Host start (`host/fairshare.py`). Start is when it was
        placed (else started); a range scan on `tasks_finished`."""
        sql = (
            "SELECT owner, cores, MAX(json_array_length(gpus_json), gpu_count),"
            " COALESCE(assigned_at, started_at, finished_at), finished_at"
            f" FROM tasks WHERE finished_at >= ? AND state IN ({_FINAL_SQL}) AND node IS NOT NULL"
        )
        return await self._fetch(
            sql,
            (float(finished_since),),
            lambda _c, r: (r[0], int(r[1]), int(r[2] or 0), float(r[3]), float(r[4])),
        )

    async def purge_final_tasks(self, finished_before: float, *, limit: int = 1000) -> list[int]:
        """Delete up to `limit` final tasks that finished before
        `finished_before`, oldest first, and their dependency rows; return
        their ids. Never a task that is not final, and never one that a task
        which is not final depends on (its waiter still reads it)."""

        async def op(conn: aiosqlite.Connection) -> list[int]:
            rows = await conn.execute_fetchall(
                f"""SELECT id FROM tasks
                    WHERE state IN ({_FINAL_SQL}) AND finished_at IS NOT NULL AND finished_at < ?
                      AND id NOT IN (
                        SELECT d.depends_on FROM task_dependencies d JOIN tasks w ON w.id = d.task_id
                        WHERE w.state NOT IN ({_FINAL_SQL}))
                    ORDER BY finished_at LIMIT ?""",
                (float(finished_before), max(0, int(limit))),
            )
            ids = [int(r[0]) for r in rows]
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                await conn.execute(
                    f"DELETE FROM task_dependencies WHERE task_id IN ({marks}) OR depends_on IN ({marks})",
                    (*chunk, *chunk),
                )
                # The state guard again: nothing that is not final goes, whatever happened since.
                await conn.execute(f"DELETE FROM tasks WHERE id IN ({marks}) AND state IN ({_FINAL_SQL})", tuple(chunk))
            return ids

        return await self._write(op, atomic=True)
