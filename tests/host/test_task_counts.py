"""The database's in-memory task counts (`Store.task_counts`, which /api/health
and /metrics serve) stay equal to a COUNT over the table through every write
that changes a state: insert, transition, placement, the offline sweep, the
retention purge; a refused or failed write changes nothing."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from hakuriver.host.db import Database, DatabaseError, accounting
from hakuriver.host.fairshare import FairShare
from hakuriver.models import TaskState

from .test_db import make_task, node

S = TaskState


@pytest.fixture
async def db(tmp_path):
    database = await Database.open(tmp_path / "host.db")
    yield database
    await database.close()


async def agree(db: Database) -> dict[TaskState, int]:
    counted = await db.count_tasks_by_state()
    assert db.task_counts() == counted
    return {s: n for s, n in counted.items() if n}


async def test_counts_follow_every_kind_of_write(db, tmp_path):
    assert db.task_counts() is None  # only the Host loads them
    await db.insert_tasks([make_task(1), make_task(2, state=S.RUNNING, node="n1", started_at=1.0)])
    assert await db.load_task_counts() == await db.count_tasks_by_state()
    await db.upsert_node(node("n1"), now=0.0)
    await db.upsert_node(node("n2"), now=0.0)

    await db.insert_tasks([make_task(i) for i in range(3, 8)])
    assert await agree(db) == {S.PENDING: 6, S.RUNNING: 1}
    assert await db.assign_many([(3, "n2", None, ()), (4, "n2", None, ()), (99, "n2", None, ())], now=2.0) == [3, 4]
    assert await agree(db) == {S.PENDING: 4, S.ASSIGNING: 2, S.RUNNING: 1}
    assert (await db.transition(3, S.RUNNING, now=3.0)).state is S.RUNNING
    assert await db.transition(5, S.COMPLETED, now=3.0) is None  # refused by the guard
    assert await db.transition(12345, S.KILLED, now=3.0) is None  # no such task
    assert (await db.transition(5, S.KILLED, now=3.0)).state is S.KILLED
    assert await agree(db) == {S.PENDING: 3, S.ASSIGNING: 1, S.RUNNING: 2, S.KILLED: 1}

    # Many writes at once share group commits; the counts still add up.
    await asyncio.gather(*(db.transition(i, S.CANCELLED, now=4.0) for i in (1, 6, 7, 6, 7)))
    assert await agree(db) == {S.ASSIGNING: 1, S.RUNNING: 2, S.KILLED: 1, S.CANCELLED: 3}

    # A failed insert (a duplicate id) counts nothing, and its batch-mates still do.
    results = await asyncio.gather(
        db.insert_tasks([make_task(8), make_task(1)]), db.insert_tasks([make_task(9)]), return_exceptions=True
    )
    assert isinstance(results[0], DatabaseError) and results[1] is None
    assert await agree(db) == {S.PENDING: 1, S.ASSIGNING: 1, S.RUNNING: 2, S.KILLED: 1, S.CANCELLED: 3}

    # The offline sweep: n1's running task and n2's assigning and running ones become lost.
    offline = await db.mark_nodes_offline(["n1", "n2"], now=100.0)
    assert {h for h, _ in offline} == {"n1", "n2"}
    assert await agree(db) == {S.PENDING: 1, S.LOST: 3, S.KILLED: 1, S.CANCELLED: 3}

    # The retention purge removes final tasks from the counts.
    purged = await db.purge_final_tasks(finished_before=50.0)
    assert sorted(purged) == [1, 5, 6, 7]
    assert await agree(db) == {S.PENDING: 1, S.LOST: 3}

    # A reopened database counts afresh to the same numbers.
    await db.close()
    again = await Database.open(tmp_path / "host.db")
    try:
        await again.load_task_counts()
        assert await agree(again) == {S.PENDING: 1, S.LOST: 3}
    finally:
        await again.close()


async def test_counts_follow_retries(db):
    """A retry (`requeue`, and the offline sweep's retry) moves a task back to pending."""
    await db.load_task_counts()
    await db.upsert_node(node("n1"), now=0.0)
    await db.insert_tasks(
        [make_task(i, state=S.RUNNING, node="n1", started_at=1.0, retries=1) for i in (20, 21)] + [make_task(22)]
    )
    assert (await db.requeue(20, 1, S.FAILED, now=2.0, exit_code=None, error="runner error")).state is S.PENDING
    assert await db.requeue(20, 1, S.FAILED, now=2.0) is None  # the same report again: refused
    assert await agree(db) == {S.PENDING: 2, S.RUNNING: 1}
    # n1 stops heartbeating: task 21 has a retry left, so it is pending again, not lost.
    offline = await db.mark_nodes_offline(["n1"], now=100.0)
    assert offline == [("n1", [21])]
    assert await agree(db) == {S.PENDING: 3}


async def test_a_node_heard_from_while_the_sweep_waited_stays_online(db):
    """The sweep names stale nodes from memory; the write asks again when it runs."""
    await db.load_task_counts()
    await db.upsert_node(node("n1"), now=0.0)
    await db.insert_tasks([make_task(30, state=S.RUNNING, node="n1", started_at=1.0)])
    assert await db.mark_nodes_offline(["n1"], now=100.0, still_stale=lambda _h: False) == []
    assert (await db.get_node("n1")).online
    assert await agree(db) == {S.RUNNING: 1}
    assert await db.mark_nodes_offline(["n1"], now=100.0, still_stale=lambda _h: True) == [("n1", [30])]
    assert await agree(db) == {S.LOST: 1}


async def test_the_fair_share_rebuild_counts_earlier_attempts(db):
    """`usage_spans` (the rebuild at Host start) holds a retried task's earlier run too."""
    await db.upsert_node(node("n1"), now=0.0)
    await db.insert_tasks([make_task(40, state=S.RUNNING, node="n1", started_at=10.0, retries=1)])
    await db.requeue(40, 1, S.FAILED, now=70.0, error="runner error")  # attempt 1: 10 -> 70
    await db.assign_many([(40, "n1", None, ())], now=100.0)
    await db.transition(40, S.RUNNING, now=100.0)
    await db.transition(40, S.COMPLETED, now=130.0)  # attempt 2: 100 -> 130
    spans = sorted((start, end) for _o, _c, _g, start, end in await db.usage_spans(finished_since=0.0))
    assert spans == [(10.0, 70.0), (100.0, 130.0)], spans


async def test_usage_totals_sum_what_the_spans_are_worth_in_sql_and_row_by_row(db):
    """The rebuild at Host start sums each owner's decayed usage where the rows
    are (`usage_totals`), never holding a month of final tasks in memory: in
    SQL, and row by row where SQLite has no math functions. Both equal the
    fair share's own sum over `usage_spans`, earlier attempts included."""
    rng = random.Random(7)
    await db.upsert_node(node("n1"), now=0.0)
    now, tasks = 1_000_000.0, []
    for i in range(1, 201):
        start = rng.uniform(0, now)
        tasks.append(
            make_task(
                i,
                state=rng.choice([S.COMPLETED, S.FAILED, S.KILLED]),
                node="n1",
                started_at=start,
                finished_at=min(now + 500.0, start + rng.uniform(0, 50_000)),  # some end after `now`
                owner=rng.choice(["alice", "bob", None]),
                cores=rng.randint(1, 8),
                gpu_count=rng.randint(0, 2),
            )
        )
    await db.insert_tasks(tasks)
    await db.insert_tasks([make_task(300, state=S.RUNNING, node="n1", started_at=10.0, retries=1, owner="carol")])
    await db.requeue(300, 1, S.FAILED, now=70_000.0, error="runner error")  # an earlier attempt, then pending

    fs = FairShare(half_life=86_400.0, gpu_weight=10.0)
    since = 0.0
    fs.rebuild(await db.usage_spans(finished_since=since), [], now)
    expected = fs.snapshot(now)
    got = await db.usage_totals(finished_since=since, now=now, half_life=fs.half_life, gpu_weight=fs.gpu_weight)
    assert set(got) == set(expected) == {"alice", "bob", None, "carol"}
    for owner, value in expected.items():
        assert got[owner] == pytest.approx(value, rel=1e-9)
    k = math.log(2) / fs.half_life  # the row-by-row path, as it runs without SQLite's exp()
    by_row = await db._in_thread(
        accounting._usage_totals_by_row, accounting._USAGE_SPANS_SQL, (since, since), now, k, fs.gpu_weight
    )
    assert set(by_row) == set(expected)
    for owner, value in expected.items():
        assert by_row[owner] == pytest.approx(value, rel=1e-9)
