"""The in-memory rows of tasks that hold resources (`hakuriver.host.db.heldrows`)
against a real SQLite file: whatever `get_task`/`get_tasks` answer from memory
is what the file holds, after every kind of write, with writes in flight
and writes that fail or are refused; and a task's reports after its
placement read nothing from the file."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver.host.db import Database
from hakuriver.host.db.heldrows import HeldRows
from hakuriver.host.db.rows import _task_from_row
from hakuriver.host.db.schema import _TASK_COLUMNS
from hakuriver.host.db.store import Store
from hakuriver.models import Task, TaskState

from .test_db import make_task, node

S = TaskState


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await Database.open(tmp_path / "host.db")
    await database.upsert_node(node("n1"), now=10.0)
    await database.upsert_node(node("n2"), now=10.0)
    await database.load_task_counts()
    yield database
    await database.close()


def in_file(db: Database, ids: list[int]) -> dict[int, Task]:
    """The tasks as the file holds them, read by another connection."""
    conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
    try:
        marks = ",".join("?" * len(ids))
        rows = conn.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id IN ({marks})", ids).fetchall()
    finally:
        conn.close()
    return {row[0]: _task_from_row(None, row) for row in rows}


def counts_in_file(db: Database) -> dict[TaskState, int]:
    conn = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True)
    try:
        return {TaskState(s): n for s, n in conn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")}
    finally:
        conn.close()


async def agree(db: Database, ids: list[int]) -> None:
    """Every answer, from memory or not, is the file's; so are the per-state
    counts (`health`, `/metrics`), which the writes keep without a scan."""
    stored = in_file(db, ids)
    assert {t.id: t for t in await db.get_tasks(ids)} == stored
    for task_id in ids:
        assert await db.get_task(task_id) == stored.get(task_id)
    counts = db.task_counts()
    assert counts is not None and {s: n for s, n in counts.items() if n} == counts_in_file(db)


class Reads:
    """Counts the reads that went to the file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        fetch = Store._fetch
        reads = self

        async def counted(self: Store, *args: Any, **kwargs: Any) -> Any:
            reads.count += 1
            return await fetch(self, *args, **kwargs)

        monkeypatch.setattr(Store, "_fetch", counted)


async def test_a_placed_task_is_read_from_memory_until_it_ends(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    await db.insert_tasks([make_task(1), make_task(2)])
    assert await db.assign_many([(1, "n1", None, []), (2, "n2", 0, [])], now=20.0) == [1, 2]
    reads = Reads(monkeypatch)
    # What a report does: read the tasks, move them on, read again.
    assert [t.state for t in await db.get_tasks([1, 2])] == [S.ASSIGNING, S.ASSIGNING]
    assert (await db.transition(1, S.RUNNING, now=21.0)) is not None
    running = await db.get_task(1)
    assert running is not None and (running.state, running.started_at, running.node) == (S.RUNNING, 21.0, "n1")
    assert reads.count == 0
    await agree(db, [1, 2])
    # Once it ends it holds nothing: read from the file again.
    await db.transition(1, S.COMPLETED, now=22.0, exit_code=0)
    before = reads.count
    done = await db.get_task(1)
    assert done is not None and (done.state, done.exit_code) == (S.COMPLETED, 0)
    assert reads.count == before + 1
    await agree(db, [1, 2])


async def test_every_writer_leaves_memory_and_file_alike(db: Database) -> None:
    ids = list(range(1, 9))
    await db.insert_tasks([make_task(i, retries=1 if i in (3, 7) else 0) for i in ids])
    await db.assign_many([(i, "n1" if i % 2 else "n2", None, []) for i in ids], now=20.0)
    await agree(db, ids)
    for i in ids:
        await db.transition(i, S.RUNNING, now=21.0)
    await agree(db, ids)
    # A guard that refuses (running -> assigning is no move) changes nothing.
    assert await db.transition(1, S.ASSIGNING, now=22.0) is None
    # Another attempt's end never touches this one.
    assert await db.transition(2, S.COMPLETED, now=22.0, attempt=5) is None
    await db.transition(4, S.PAUSED, now=22.0)
    await db.transition(5, S.KILLED, now=22.0)
    # A retry puts the task back to pending with the next attempt.
    assert (await db.requeue(3, 1, S.FAILED, now=23.0, exit_code=1)) is not None
    await agree(db, ids)
    # A node marked offline: its tasks end lost, or are retried, in one write.
    assert [h for h, _ in await db.mark_nodes_offline(["n1"], now=24.0)] == ["n1"]
    await agree(db, ids)
    states = {t.id: t.state for t in await db.get_tasks(ids)}
    assert states[7] is S.PENDING and states[1] is S.LOST and states[4] is S.PAUSED


async def test_a_write_in_flight_is_read_from_the_file(db: Database) -> None:
    await db.insert_tasks([make_task(1)])
    await db.assign_many([(1, "n1", None, [])], now=20.0)
    # The write is queued, not committed: a read meanwhile waits for the
    # file, as without memory, and sees the write's outcome or what came before.
    write = asyncio.ensure_future(db.transition(1, S.RUNNING, now=21.0))
    await asyncio.sleep(0)
    seen = await db.get_task(1)
    assert seen is not None and seen.state in (S.ASSIGNING, S.RUNNING)
    assert (await write) is not None
    await agree(db, [1])


async def test_a_failed_write_keeps_nothing(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    await db.insert_tasks([make_task(1)])
    await db.assign_many([(1, "n1", None, [])], now=20.0)

    async def broken(self: Store, fn: Any, *, atomic: bool = False) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(Store, "_write", broken)
    with pytest.raises(sqlite3.OperationalError):
        await db.transition(1, S.RUNNING, now=21.0)
    monkeypatch.undo()
    reads = Reads(monkeypatch)
    task = await db.get_task(1)
    assert task is not None and task.state is S.ASSIGNING
    assert reads.count == 1  # forgotten at the write, so read from the file
    await agree(db, [1])


async def test_many_writes_at_once_in_any_order(db: Database) -> None:
    """Reports, retries and offline marks racing, as a busy Host makes them:
    memory and file agree when they settle and at every step between."""
    rng = random.Random(16)
    ids = list(range(1, 41))
    await db.insert_tasks([make_task(i, retries=rng.choice((0, 1, 2))) for i in ids])
    await db.assign_many([(i, rng.choice(("n1", "n2")), None, []) for i in ids], now=20.0)
    moves = [S.RUNNING, S.PAUSED, S.RUNNING, S.COMPLETED, S.FAILED, S.KILLED, S.LOST]
    for step in range(6):
        ops: list[Any] = []
        for i in rng.sample(ids, 25):
            move = rng.choice(moves)
            ops.append(db.transition(i, move, now=30.0 + step, attempt=rng.choice((None, 1, 2))))
            if rng.random() < 0.2:
                ops.append(db.requeue(i, 1, S.FAILED, now=30.0 + step))
            if rng.random() < 0.05:
                ops.append(db.mark_nodes_offline([rng.choice(("n1", "n2"))], now=30.0 + step))
            if rng.random() < 0.3:
                ops.append(db.get_tasks(rng.sample(ids, 5)))
        rng.shuffle(ops)
        await asyncio.gather(*ops)
        await agree(db, ids)
        pending = [t.id for t in await db.get_tasks(ids) if t.state is S.PENDING]
        if pending:
            await db.assign_many([(i, rng.choice(("n1", "n2")), None, []) for i in pending], now=40.0 + step)
            await agree(db, ids)


def test_of_two_writes_of_a_task_the_last_queued_has_the_last_word() -> None:
    held = HeldRows()
    first, second = held.begin([7]), held.begin([7])
    # The first write ended, and the second (queued after it) is still to
    # end: the first's row is already out of date.
    held.end([7], first, {7: (7, 1, "running")})
    assert held.get(7) is None
    held.end([7], second, {7: (7, 1, "paused")})
    assert held.get(7) == (7, 1, "paused")
    # A row that holds nothing is not kept; a write begun before a
    # forget_all keeps nothing either.
    held.end([7], held.begin([7]), {7: (7, 1, "completed")})
    assert held.get(7) is None
    token = held.begin([8])
    held.forget_all()
    held.end([8], token, {8: (8, 1, "running")})
    assert held.get(8) is None and len(held) == 0
