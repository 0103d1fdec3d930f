"""SQL for tasks: insert, guarded transitions, placement, and the reads the
scheduler and the API make, dependencies included."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from ...models import (
    FINAL_STATES,
    REQUEUE_FROM,
    Task,
    TaskAttempt,
    TaskState,
    predecessors,
)
from .rows import _attempt_from_row, _chunks, _dumps, _task_from_row, _task_params
from .schema import _ATTEMPT_COLUMNS, _HOLDING_SQL, _TASK_COLUMNS
from .store import Counted, Store

REQUEUE_SETS = (
    "state='pending', attempt=attempt+1, node=NULL, numa=NULL, gpus_json='[]', assigned_at=NULL, "
    "started_at=NULL, finished_at=NULL, exit_code=NULL, error=NULL, output_error=NULL"
)
"""What a retry resets: the task is pending again with the next attempt number
and no placement; its ended attempt is in `task_attempts` by then."""

_TRANSITION_FIELDS = frozenset(
    {"node", "numa", "gpus", "assigned_at", "started_at", "finished_at", "exit_code", "error", "output_error"}
)


_INSERT_WIDTH = _TASK_COLUMNS.count(",") + 2
"""Placeholders of a task insert: every column, and updated_at."""


class TaskQueries(Store):
    """Tasks (mixed into `Database`)."""

    async def insert_tasks(self, tasks: Sequence[Task], now: float | None = None) -> None:
        """Insert new tasks, all or none (a duplicate id fails the whole call),
        with their dependencies (`Task.after`, `Task.after_any`) in the same
        transaction: a task is never stored without what it waits for."""
        if not tasks:
            return
        when = time.time() if now is None else now
        rows = [_task_params(t, when) for t in tasks]
        deps = [(t.id, int(d), "after") for t in tasks for d in t.after]
        deps += [(t.id, int(d), "after_any") for t in tasks for d in t.after_any if d not in t.after]

        added: dict[TaskState, int] = {}
        for t in tasks:
            added[t.state] = added.get(t.state, 0) + 1

        async def op(conn: aiosqlite.Connection) -> Counted:
            cursor = await conn.executemany(
                f"INSERT INTO tasks ({_TASK_COLUMNS}, updated_at) VALUES ({','.join('?' * _INSERT_WIDTH)})", rows
            )
            await cursor.close()
            if deps:
                cursor = await conn.executemany(
                    "INSERT INTO task_dependencies (task_id, depends_on, kind) VALUES (?, ?, ?)", deps
                )
                await cursor.close()
            return Counted(None, added)

        await self._write(op, atomic=len(rows) > 1 or bool(deps))

    async def transition(
        self,
        task_id: int,
        new_state: TaskState,
        *,
        now: float,
        allowed_from: frozenset[TaskState] | None = None,
        attempt: int | None = None,
        **fields: Any,
    ) -> Task | None:
        """Move a task to `new_state` if it is in one of `allowed_from`
        (default: every state `models.TRANSITIONS` allows into `new_state`).

        Returns the updated task, or None if the task does not exist or the guard
        failed (e.g. a late `completed` after `killed`: the stored state stays).

        `fields` may set node, numa, gpus, assigned_at, started_at, finished_at,
        exit_code, error, output_error. Unless given: entering ASSIGNING sets assigned_at=now;
        entering RUNNING or PAUSED sets started_at=now if it was unset; entering
        a final state sets finished_at=now; entering a non-final state clears
        finished_at and output_error; leaving LOST clears the "stopped
        heartbeating" error. With `attempt`, only if the task is at that
        attempt (`--retries`: an earlier attempt's end never touches a newer one).
        """
        new_state = TaskState(new_state)
        unknown = set(fields) - _TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition() got unexpected fields: {', '.join(sorted(unknown))}")
        allowed = predecessors(new_state) if allowed_from is None else frozenset(TaskState(s) for s in allowed_from)
        if not allowed:
            return None

        sets: list[str] = ["state=?", "updated_at=?"]
        params: list[Any] = [str(new_state), now]
        for name in ("node", "numa", "exit_code"):
            if name in fields:
                sets.append(f"{name}=?")
                params.append(fields[name])
        if "gpus" in fields:
            sets.append("gpus_json=?")
            params.append(_dumps([int(g) for g in (fields["gpus"] or ())]))
        if "assigned_at" in fields:
            sets.append("assigned_at=?")
            params.append(fields["assigned_at"])
        elif new_state == TaskState.ASSIGNING:
            sets.append("assigned_at=?")
            params.append(now)
        if "started_at" in fields:
            sets.append("started_at=?")
            params.append(fields["started_at"])
        elif new_state in (TaskState.RUNNING, TaskState.PAUSED):
            sets.append("started_at=COALESCE(started_at, ?)")
            params.append(now)
        if "finished_at" in fields:
            sets.append("finished_at=?")
            params.append(fields["finished_at"])
        elif new_state in FINAL_STATES:
            sets.append("finished_at=?")
            params.append(now)
        else:
            sets.append("finished_at=NULL")
        if "output_error" in fields:
            sets.append("output_error=?")
            params.append(fields["output_error"])
        elif new_state not in FINAL_STATES:
            sets.append("output_error=NULL")
        if "error" in fields:
            sets.append("error=?")
            params.append(fields["error"])
        else:
            sets.append("error=CASE WHEN state='lost' THEN NULL ELSE error END")
        params.append(int(task_id))
        params.extend(str(s) for s in sorted(allowed))
        attempt_guard = ""
        if attempt is not None:
            attempt_guard = " AND attempt=?"
            params.append(int(attempt))
        sql = (
            f"UPDATE tasks SET {', '.join(sets)} WHERE id=? AND state IN ({','.join('?' * len(allowed))})"
            f"{attempt_guard} RETURNING {_TASK_COLUMNS}"
        )

        async def op(conn: aiosqlite.Connection) -> Counted | None:
            # The state it leaves, for the in-memory counts (RETURNING sees only
            # the new row); same transaction, so nothing changes in between.
            before = list(await conn.execute_fetchall("SELECT state FROM tasks WHERE id=?", (int(task_id),)))
            rows = list(await conn.execute_fetchall(sql, params))
            if not rows:
                return None
            task = _task_from_row(None, rows[0])
            return Counted((task, rows[0]), {TaskState(before[0][0]): -1, task.state: 1} if before else {})

        with self._held.writing((int(task_id),)) as written:
            done = await self._write(op)
            if done is None:
                return None
            task, written[task.id] = done
            return task

    async def requeue(
        self,
        task_id: int,
        attempt: int,
        ended: TaskState,
        *,
        now: float,
        exit_code: int | None = None,
        error: str | None = None,
    ) -> Task | None:
        """Attempt `attempt` of the task ended `ended` and is retried: record
        it in `task_attempts` and put the task back to `pending` with the
        next attempt number, in one transaction (host/retries.py).

        Guarded: only a task in one of `models.REQUEUE_FROM`, at that very
        attempt, with a retry left; otherwise None and nothing is written (a
        late or repeated report, a kill that came first)."""
        marks = ",".join("?" * len(REQUEUE_FROM))
        guard = f"id=? AND attempt=? AND attempt<=retries AND state IN ({marks})"
        guard_params = (int(task_id), int(attempt), *sorted(str(s) for s in REQUEUE_FROM))

        async def op(conn: aiosqlite.Connection) -> Counted | None:
            # The state it leaves, for the in-memory counts.
            before = list(await conn.execute_fetchall(f"SELECT state FROM tasks WHERE {guard}", guard_params))
            if not before:
                return None
            await conn.execute_fetchall(
                f"""INSERT INTO task_attempts (task_id, {_ATTEMPT_COLUMNS})
                    SELECT id, attempt, node, started_at, ?, ?, ?, ? FROM tasks WHERE {guard}""",
                (now, str(TaskState(ended)), exit_code, error, *guard_params),
            )
            rows = list(
                await conn.execute_fetchall(
                    f"UPDATE tasks SET {REQUEUE_SETS}, updated_at=? WHERE {guard} RETURNING {_TASK_COLUMNS}",
                    (now, *guard_params),
                )
            )
            task = _task_from_row(None, rows[0])
            return Counted(task, {TaskState(before[0][0]): -1, TaskState.PENDING: 1})

        with self._held.writing((int(task_id),)):  # pending again: it holds nothing
            return await self._write(op, atomic=True)

    async def attempts_of(self, ids: Iterable[int]) -> dict[int, list[TaskAttempt]]:
        """Each task's earlier attempts (those that were retried), oldest
        first; tasks without any are left out."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, list[TaskAttempt]] = {}
        for chunk in _chunks(wanted):
            rows = await self._fetch(
                f"SELECT task_id, {_ATTEMPT_COLUMNS} FROM task_attempts "
                f"WHERE task_id IN ({','.join('?' * len(chunk))}) ORDER BY task_id, attempt",
                tuple(chunk),
                _attempt_from_row,
            )
            for task_id, attempt in rows:
                found.setdefault(task_id, []).append(attempt)
        return found

    async def previous_attempt_nodes(self) -> dict[int, str]:
        """Each retried pending task's previous attempt's node (what the Host
        fences and avoids after a restart, host/retries.py)."""
        rows = await self._fetch(
            "SELECT a.task_id, a.node FROM tasks t "
            "JOIN task_attempts a ON a.task_id = t.id AND a.attempt = t.attempt - 1 "
            "WHERE t.state='pending' AND t.attempt > 1 AND a.node IS NOT NULL",
            (),
            lambda _c, r: (r[0], r[1]),
        )
        return dict(rows)

    async def assign_many(
        self, placements: Iterable[tuple[int, str, int | None, Sequence[int]]], now: float
    ) -> list[int]:
        """pending -> assigning for many tasks in one transaction, each guarded.

        `placements` are `(task_id, node, numa, gpus)` (scheduler.Placement is
        one). Returns the ids actually moved, in the order given; a task that is
        no longer pending (killed meanwhile) is skipped.
        """
        seen: set[int] = set()
        rows: list[tuple[int, str, int | None, str]] = []
        for task_id, node, numa, gpus in placements:
            if task_id in seen:
                continue
            seen.add(task_id)
            rows.append((int(task_id), node, None if numa is None else int(numa), _dumps([int(g) for g in gpus])))
        if not rows:
            return []

        async def op(conn: aiosqlite.Connection) -> Counted:
            moved: dict[int, Any] = {}
            for chunk in _chunks(rows, 250):
                values = ",".join(["(?,?,?,?)"] * len(chunk))
                params: list[Any] = [now, now]
                for row in chunk:
                    params.extend(row)
                result = await conn.execute_fetchall(
                    f"""UPDATE tasks SET state='assigning', node=v.column2, numa=v.column3, gpus_json=v.column4,
                               assigned_at=?, updated_at=?, finished_at=NULL
                        FROM (VALUES {values}) AS v
                        WHERE tasks.id = v.column1 AND tasks.state = 'pending'
                        RETURNING {_TASK_COLUMNS}""",
                    params,
                )
                # The whole rows: the tasks' first reports read them from memory (`heldrows`).
                moved.update((r[0], r) for r in result)
            n = len(moved)
            return Counted(moved, {TaskState.PENDING: -n, TaskState.ASSIGNING: n})

        ids = [r[0] for r in rows]
        with self._held.writing(ids) as written:
            written.update(await self._write(op, atomic=True))
        return [i for i in ids if i in written]

    async def set_pending_priority(self, task_id: int, priority: int, now: float) -> bool:
        """Set a pending task's priority; False (nothing changed) when it is
        not pending (any more) or does not exist."""

        async def op(conn: aiosqlite.Connection) -> bool:
            rows = await conn.execute_fetchall(
                "UPDATE tasks SET priority=?, updated_at=? WHERE id=? AND state='pending' RETURNING id",
                (int(priority), now, int(task_id)),
            )
            return bool(list(rows))

        return await self._write(op)

    async def set_pending_priorities(self, task_ids: Sequence[int], priority: int, now: float) -> list[int]:
        """`set_pending_priority` for many tasks in one operation: the ids
        that were pending and changed, ascending."""
        wanted = sorted({int(i) for i in task_ids})

        async def op(conn: aiosqlite.Connection) -> list[int]:
            changed: list[int] = []
            for chunk in _chunks(wanted):
                rows = await conn.execute_fetchall(
                    f"UPDATE tasks SET priority=?, updated_at=? WHERE id IN ({','.join('?' * len(chunk))}) "
                    "AND state='pending' RETURNING id",
                    (int(priority), now, *chunk),
                )
                changed.extend(int(r[0]) for r in rows)
            return sorted(changed)

        return await self._write(op, atomic=len(wanted) > 1)

    # ----------------------------------------------------------------- tasks: reads

    async def get_task(self, task_id: int) -> Task | None:
        held = self._held.get(int(task_id))
        if held is not None:
            return _task_from_row(None, held)
        rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id=?", (int(task_id),), _task_from_row)
        return rows[0] if rows else None

    async def get_tasks(self, ids: Iterable[int]) -> list[Task]:
        """The tasks with these ids, in the order asked; unknown ids are left out.
        Those that hold resources come from memory (`heldrows`), the rest from the file."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Task] = {}
        unread: list[int] = []
        for task_id in wanted:
            held = self._held.get(task_id)
            if held is None:
                unread.append(task_id)
            else:
                found[task_id] = _task_from_row(None, held)
        for chunk in _chunks(unread):
            for task in await self._fetch(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
                _task_from_row,
            ):
                found[task.id] = task
        return [found[i] for i in wanted if i in found]

    async def list_tasks(
        self,
        states: Iterable[TaskState] | None = None,
        node: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        *,
        batch_id: int | None = None,
        owner: str | None = None,
        finished_since: float | None = None,
    ) -> list[Task]:
        """Newest first. Page with `before_id=<last id of the previous page>`.
        With `finished_since`, only tasks that finished at or after it."""
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = sorted({str(TaskState(s)) for s in states})
            if not wanted:
                return []
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if node is not None:
            where.append("node=?")
            params.append(node)
        if batch_id is not None:
            where.append("batch_id=?")
            params.append(int(batch_id))
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        if finished_since is not None:
            where.append("finished_at>=?")
            params.append(float(finished_since))
        if before_id is not None:
            where.append("id<?")
            params.append(int(before_id))
        limit = max(0, int(limit))
        params.append(limit)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks {clause}ORDER BY id DESC LIMIT ?", params, _task_from_row
        )

    async def count_tasks_by_state(self) -> dict[TaskState, int]:
        """Every state with its count (0 included): a scan of the whole table.
        The Host serves `task_counts()` (memory) instead."""
        rows = await self._fetch("SELECT state, COUNT(*) FROM tasks GROUP BY state", (), lambda _c, r: (r[0], r[1]))
        counts = {s: 0 for s in TaskState}
        for state, n in rows:
            counts[TaskState(state)] = n
        return counts

    async def load_pending(self) -> list[Task]:
        """Pending tasks, oldest (lowest id) first."""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state='pending' ORDER BY id", (), _task_from_row
        )

    async def dependencies_of(self, ids: Iterable[int]) -> dict[int, list[tuple[int, str]]]:
        """Each task's dependencies as (depends_on, kind), by depends_on;
        tasks without any are left out."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, list[tuple[int, str]]] = {}
        for chunk in _chunks(wanted):
            rows = await self._fetch(
                f"SELECT task_id, depends_on, kind FROM task_dependencies "
                f"WHERE task_id IN ({','.join('?' * len(chunk))}) ORDER BY task_id, depends_on",
                tuple(chunk),
                lambda _c, r: (r[0], r[1], r[2]),
            )
            for task_id, dep, kind in rows:
                found.setdefault(task_id, []).append((dep, kind))
        return found

    async def load_waiting_dependencies(self) -> list[tuple[int, int, str]]:
        """(task_id, depends_on, kind) of every pending task's dependencies:
        what `DependencyIndex` is rebuilt from at start."""
        return await self._fetch(
            "SELECT d.task_id, d.depends_on, d.kind FROM tasks t JOIN task_dependencies d ON d.task_id = t.id "
            "WHERE t.state='pending' ORDER BY d.task_id, d.depends_on",
            (),
            lambda _c, r: (r[0], r[1], r[2]),
        )

    async def task_states(self, ids: Iterable[int]) -> dict[int, TaskState]:
        """The state of each of these tasks that exists."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, TaskState] = {}
        for chunk in _chunks(wanted):
            rows = await self._fetch(
                f"SELECT id, state FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
                lambda _c, r: (r[0], r[1]),
            )
            found.update((task_id, TaskState(state)) for task_id, state in rows)
        return found

    async def load_holding(self) -> list[Task]:
        """Tasks that hold resources (assigning, running, paused), by id."""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state IN ({_HOLDING_SQL}) ORDER BY id", (), _task_from_row
        )
