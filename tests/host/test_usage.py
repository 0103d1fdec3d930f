"""Accounting sums (`Database.usage`, `GET /api/usage`): core-hours and
GPU-hours of final tasks by user and by node, with `since`, over rows whose
start and end times are known."""

from __future__ import annotations

import sqlite3

import pytest

from hakuriver.errors import ValidationError
from hakuriver.host.db import MIGRATIONS, SCHEMA_VERSION, Database
from hakuriver.models import Task, TaskState
from hakuriver.parsing import parse_since

H = 3600.0
T0 = 1_700_000_000.0  # in the past: `--since 1d` leaves all of it out


def task(
    task_id: int,
    owner: str | None,
    node: str | None,
    state: TaskState,
    *,
    cores: int = 1,
    hours: float | None = 1.0,
    start: float = T0,
    gpus: list[int] | None = None,
    gpu_count: int = 0,
) -> Task:
    """A task that ran from `start` for `hours` (None: it never started)."""
    return Task(
        id=task_id,
        batch_id=task_id,
        state=state,
        command=["true"],
        cores=cores,
        memory=None,
        container=None,
        env={},
        mounts=[],
        privileged=False,
        target=None,
        node=node,
        gpus=list(gpus or []),
        gpu_count=gpu_count,
        submitted_at=start - 60,
        started_at=None if hours is None else start,
        finished_at=None if hours is None or not state.is_final else start + hours * H,
        owner=owner,
    )


HISTORY = [
    # alice: 4 cores for 2 h on n1, then 2 cores + 2 GPUs (ids) for 1 h on n2.
    task(1, "alice", "n1", TaskState.COMPLETED, cores=4, hours=2),
    task(2, "alice", "n2", TaskState.FAILED, cores=2, hours=1, start=T0 + 10 * H, gpus=[0, 1]),
    # bob: 1 core + 1 GPU (count only, as a cancelled-while-assigning task) for 30 min on n2.
    task(3, "bob", "n2", TaskState.KILLED, cores=1, hours=0.5, start=T0 + 20 * H, gpu_count=1),
    # bob: timed out after 3 h on n1, 8 cores.
    task(4, "bob", "n1", TaskState.TIMEOUT, cores=8, hours=3, start=T0 + 30 * H),
    # Not counted: still running; cancelled before it started.
    task(5, "alice", "n1", TaskState.RUNNING, cores=16, hours=5, start=T0 + 40 * H),
    task(6, "bob", None, TaskState.CANCELLED, cores=16, hours=None),
]


@pytest.fixture
async def database(tmp_path):
    db = await Database.open(tmp_path / "host.db")
    await db.insert_tasks(HISTORY)
    try:
        yield db
    finally:
        await db.close()


def sums(rows) -> dict[str | None, tuple[int, float, float]]:
    return {r.name: (r.tasks, round(r.core_hours, 6), round(r.gpu_hours, 6)) for r in rows}


async def test_usage_by_user_and_by_node(database):
    by_user = await database.usage(by="user")
    assert sums(by_user) == {"alice": (2, 8 + 2, 2), "bob": (2, 0.5 + 24, 0.5)}
    # Largest core-hours first.
    assert [r.name for r in by_user] == ["bob", "alice"]
    assert {r.name: r.hours for r in by_user} == {"alice": 3.0, "bob": 3.5}
    assert sums(await database.usage(by="node")) == {"n1": (2, 8 + 24, 0), "n2": (2, 2 + 0.5, 2 + 0.5)}
    assert sums(await database.usage(by="node", owner="alice")) == {"n1": (1, 8, 0), "n2": (1, 2, 2)}
    assert await database.usage(owner="nobody") == []


async def test_since_counts_only_the_time_after_it(database):
    # From T0 + 1h: task 1 counts its second hour only; the others are whole.
    assert sums(await database.usage(since=T0 + H)) == {"alice": (2, 4 + 2, 2), "bob": (2, 24.5, 0.5)}
    # After task 1 ended: it is left out.
    assert sums(await database.usage(since=T0 + 5 * H)) == {"alice": (1, 2, 2), "bob": (2, 24.5, 0.5)}
    # Mid-way through task 4 (started T0+30h, 3 h): its last hour.
    assert sums(await database.usage(since=T0 + 32 * H)) == {"bob": (1, 8, 0)}
    assert await database.usage(since=T0 + 100 * H) == []


async def test_a_clock_step_back_counts_no_time(tmp_path):
    db = await Database.open(tmp_path / "host.db")
    try:
        odd = task(1, "carol", "n1", TaskState.COMPLETED, cores=4, hours=-1)
        await db.insert_tasks([odd])
        assert sums(await db.usage()) == {"carol": (1, 0, 0)}
    finally:
        await db.close()


def test_the_migration_adds_an_index_on_finished_at(tmp_path):
    path = tmp_path / "fresh.db"
    raw = sqlite3.connect(path)
    for script in MIGRATIONS:
        raw.executescript(script)
    plan = raw.execute("EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE finished_at >= 1").fetchall()
    raw.close()
    assert SCHEMA_VERSION == len(MIGRATIONS)
    assert any("tasks_finished" in str(row) for row in plan), plan


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7d", 1000.0 * H - 7 * 24 * H), ("24h", 976.0 * H), ("90m", 1000.0 * H - 5400), ("1700000000", 1.7e9)],
)
def test_parse_since_relative_and_epoch(text, expected):
    assert parse_since(text, now=1000.0 * H) == expected


def test_parse_since_iso_dates():
    import datetime

    assert parse_since("2026-11-01", 0) == datetime.datetime(2026, 11, 1).timestamp()
    assert parse_since("2026-11-01T12:00", 0) == datetime.datetime(2026, 11, 1, 12).timestamp()
    assert (
        parse_since("2026-11-01T12:00+00:00", 0) == datetime.datetime(2026, 11, 1, 12, tzinfo=datetime.UTC).timestamp()
    )


@pytest.mark.parametrize(
    "text", ["", "yesterday", "7", "7w", "2026-13-01", "-5d", "1" * 40, "20261101", "2026-11-01T25:00"]
)
def test_parse_since_refuses_what_it_cannot_read(text):
    with pytest.raises(ValidationError, match="invalid date"):
        parse_since(text, 0)
