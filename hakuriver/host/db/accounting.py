"""SQL for accounting over final tasks: usage sums and the retention purge."""

from __future__ import annotations

import math
import sqlite3
from typing import Any

import aiosqlite

from ...models import TaskState
from .rows import USAGE_GROUPS, UsageRow, _chunks
from .schema import _FINAL_SQL
from .store import Counted, Store

# Earlier attempts of retried tasks held resources too (`task_attempts`).
_USAGE_SPANS_SQL = (
    "SELECT owner, cores, MAX(json_array_length(gpus_json), gpu_count),"
    " COALESCE(assigned_at, started_at, finished_at), finished_at"
    f" FROM tasks WHERE finished_at >= ? AND state IN ({_FINAL_SQL}) AND node IS NOT NULL"
    " UNION ALL"
    " SELECT t.owner, t.cores, t.gpu_count, COALESCE(a.started_at, a.finished_at), a.finished_at"
    " FROM task_attempts a JOIN tasks t ON t.id = a.task_id"
    " WHERE a.finished_at >= ? AND a.node IS NOT NULL"
)
"""(owner, cores, GPUs, start, end) of the spans the fair share counts (see `usage_spans`)."""


def _usage_totals_in_thread(
    conn: sqlite3.Connection, spans_sql: str, params: tuple[float, float], now: float, half_life: float, weight: float
) -> dict[str | None, float]:
    """The database thread's part of `usage_totals`. The integral of
    r 2^(-(now - t)/h) from s to e is r/k (e^(-k (now - e)) - e^(-k (now - s))),
    k = ln 2 / h."""
    k = math.log(2) / half_life
    try:
        rows = conn.execute(
            f"""WITH spans(owner, cores, gpus, s, e) AS ({spans_sql})
                SELECT owner, SUM((cores + ? * COALESCE(gpus, 0)) * (exp(-? * (? - MIN(e, ?))) - exp(-? * (? - s))))
                FROM spans WHERE MIN(e, ?) > s GROUP BY owner""",
            (*params, weight, k, now, now, k, now, now),
        ).fetchall()
        return {owner: total / k for owner, total in rows if total and total > 0}
    except sqlite3.OperationalError as exc:
        if "no such function" not in str(exc):
            raise
    return _usage_totals_by_row(conn, spans_sql, params, now, k, weight)


def _usage_totals_by_row(
    conn: sqlite3.Connection, spans_sql: str, params: tuple[float, float], now: float, k: float, weight: float
) -> dict[str | None, float]:
    """`_usage_totals_in_thread` without SQLite's math functions: one row at a time."""
    totals: dict[str | None, float] = {}
    for owner, cores, gpus, start, end in conn.execute(spans_sql, params):
        end = min(float(end), now)
        if end > start:
            value = (cores + weight * (gpus or 0)) / k * (math.exp(-k * (now - end)) - math.exp(-k * (now - start)))
            totals[owner] = totals.get(owner, 0.0) + value
    return {owner: total for owner, total in totals.items() if total > 0}


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
        task that ran in that month. With `owner`, only that user's tasks.
        The earlier attempts of a retried task (`--retries`) add their time
        (on the node they ran on, with the task's cores and GPU count); `tasks`
        counts final tasks only, each once."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"usage by {by!r}")
        column = "owner" if by == "user" else "node"
        start = "started_at" if since is None else "MAX(started_at, ?)"
        a_start = "a.started_at" if since is None else "MAX(a.started_at, ?)"
        since_p: list[Any] = [] if since is None else [float(since)]
        where = [f"state IN ({_FINAL_SQL})", "started_at IS NOT NULL", "finished_at IS NOT NULL"]
        # Earlier attempts of retried tasks (`task_attempts`) used their node's
        # time too: they count, on the node they ran on, whatever the task's
        # state now; the task itself is counted once, when final.
        a_where = ["a.started_at IS NOT NULL", "a.finished_at IS NOT NULL"]
        params: list[Any] = list(since_p)
        a_params: list[Any] = list(since_p)
        if since is not None:
            where.append("finished_at >= ?")
            params.append(float(since))
            a_where.append("a.finished_at >= ?")
            a_params.append(float(since))
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
            a_where.append("t.owner = ?")
            a_params.append(owner)
        a_column = "t.owner" if by == "user" else "a.node"
        # One aggregate over the rows; a clock step back (finished before
        # started) counts as no time, never as negative hours.
        sql = (
            f"SELECT name, COUNT(task), SUM(cores * h), SUM(g * h), SUM(h) FROM ("
            f" SELECT {column} AS name, id AS task, cores, MAX(json_array_length(gpus_json), gpu_count) AS g,"
            f" MAX(finished_at - {start}, 0) / 3600.0 AS h"
            f" FROM tasks WHERE {' AND '.join(where)}"
            f" UNION ALL"
            f" SELECT {a_column} AS name, NULL AS task, t.cores, t.gpu_count AS g,"
            f" MAX(a.finished_at - {a_start}, 0) / 3600.0 AS h"
            f" FROM task_attempts a JOIN tasks t ON t.id = a.task_id WHERE {' AND '.join(a_where)})"
            f" GROUP BY name ORDER BY 3 DESC, 1"
        )
        return await self._fetch(
            sql,
            params + a_params,
            lambda _c, r: UsageRow(r[0], int(r[1]), float(r[2] or 0), float(r[3] or 0), float(r[4] or 0)),
        )

    async def usage_spans(self, *, finished_since: float) -> list[tuple[str | None, int, int, float, float]]:
        """(owner, cores, GPUs, start, end) of every final task that held
        resources and finished at or after `finished_since`, and of every
        earlier attempt of a retried task: the fair share's rebuild at Host
        start (`host/fairshare.py`). Start is when it was
        placed (else started); a range scan on `tasks_finished`."""
        return await self._fetch(
            _USAGE_SPANS_SQL,
            (float(finished_since), float(finished_since)),
            lambda _c, r: (r[0], int(r[1]), int(r[2] or 0), float(r[3]), float(r[4])),
        )

    async def usage_totals(
        self, *, finished_since: float, now: float, half_life: float, gpu_weight: float
    ) -> dict[str | None, float]:
        """Each owner's decayed usage at `now` of the spans `usage_spans`
        names: the sum of `fairshare.span_usage` (rate cores + `gpu_weight` x
        GPUs, from start to min(end, now), half-life `half_life`) over them,
        owners with none left out. Summed where the rows are, never holding
        them all (a million final tasks in a month): in SQL where SQLite has
        its math functions, else in the database thread, row by row."""
        self._check_open()
        args = (_USAGE_SPANS_SQL, (float(finished_since), float(finished_since)), now, half_life, gpu_weight)
        async with self._lock:
            totals: dict[str | None, float] = await self._in_thread(_usage_totals_in_thread, *args)
        return totals

    async def purge_final_tasks(self, finished_before: float, *, limit: int = 1000) -> dict[int, int]:
        """Delete up to `limit` final tasks that finished before
        `finished_before`, oldest first, and their dependency and attempt rows; return
        their ids, each with its last attempt (which log files it has,
        `naming.stdout_path`), oldest first. Never a task that is not final, and
        never one that a task which is not final depends on (its waiter still reads it)."""

        async def op(conn: aiosqlite.Connection) -> Counted:
            gone: dict[TaskState, int] = {}
            rows = await conn.execute_fetchall(
                f"""SELECT id, attempt FROM tasks
                    WHERE state IN ({_FINAL_SQL}) AND finished_at IS NOT NULL AND finished_at < ?
                      AND id NOT IN (
                        SELECT d.depends_on FROM task_dependencies d JOIN tasks w ON w.id = d.task_id
                        WHERE w.state NOT IN ({_FINAL_SQL}))
                    ORDER BY finished_at LIMIT ?""",
                (float(finished_before), max(0, int(limit))),
            )
            attempts = {int(r[0]): int(r[1]) for r in rows}
            ids = list(attempts)
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                await conn.execute(f"DELETE FROM task_attempts WHERE task_id IN ({marks})", tuple(chunk))
                await conn.execute(
                    f"DELETE FROM task_dependencies WHERE task_id IN ({marks}) OR depends_on IN ({marks})",
                    (*chunk, *chunk),
                )
                # The state guard again: nothing that is not final goes, whatever happened since.
                deleted = await conn.execute_fetchall(
                    f"DELETE FROM tasks WHERE id IN ({marks}) AND state IN ({_FINAL_SQL}) RETURNING state", tuple(chunk)
                )
                for (state,) in deleted:
                    gone[TaskState(state)] = gone.get(TaskState(state), 0) - 1
            return Counted(attempts, gone)

        return await self._write(op, atomic=True)
