"""Retention (`database.retain_days`, host/retention.py): old final tasks and
their log files go; tasks that are not final, recent ones, tasks a waiting
task depends on, and files a log link points to stay."""

from __future__ import annotations

import contextlib
import dataclasses
import os

from hakuriver import naming
from hakuriver.config import Config, config_from_dict
from hakuriver.host.db import Database
from hakuriver.host.retention import purge_once
from hakuriver.models import TaskState
from tests.host.test_usage import T0, H, task

DAY = 24 * H
NOW = T0 + 100 * DAY


def config(tmp_path, retain_days: int) -> Config:
    shared = tmp_path / "shared"
    for sub in ("task_outputs", "task_errors"):
        (shared / sub).mkdir(parents=True, exist_ok=True)
    return config_from_dict(
        {
            "paths": {"shared_dir": str(shared)},
            "database": {"db_file": str(tmp_path / "h.db"), "retain_days": retain_days},
        }
    )


def write_logs(cfg: Config, *ids: int) -> None:
    for task_id in ids:
        for path in (
            naming.stdout_path(cfg.paths.shared_dir, task_id),
            naming.stderr_path(cfg.paths.shared_dir, task_id),
        ):
            with open(path, "w") as f:
                f.write("log\n")


async def test_a_purge_removes_only_old_final_tasks_and_their_logs(tmp_path):
    cfg = config(tmp_path, retain_days=30)
    db = await Database.open(cfg.database.db_file)
    try:
        old = NOW - 40 * DAY
        tasks = [
            # Old, final: goes, with the log files of all eleven attempts it had.
            dataclasses.replace(task(1, "alice", "n1", TaskState.COMPLETED, start=old), attempt=11, retries=10),
            task(2, "alice", "n1", TaskState.FAILED, start=old, hours=2),  # old, final: goes
            task(3, "bob", "n1", TaskState.COMPLETED, start=NOW - 10 * DAY),  # recent: stays
            # Old but running (an end time on it, as a damaged row might have): stays.
            dataclasses.replace(task(4, "bob", "n1", TaskState.RUNNING, start=old), finished_at=old + H),
            task(5, "bob", None, TaskState.PENDING, hours=None, start=old),  # old but pending: stays
            task(6, "bob", "n1", TaskState.COMPLETED, start=old),  # old, but task 7 waits on it: stays
            dataclasses.replace(task(7, "bob", None, TaskState.PENDING, hours=None, start=old), after=[6]),
        ]
        await db.insert_tasks(tasks)
        write_logs(cfg, *range(1, 8))
        # Later attempts' own files (`--retries`), with gaps (attempts that wrote nothing), up to the last one.
        shared = cfg.paths.shared_dir
        earlier = [naming.stdout_path(shared, t, n) for t in (1, 3) for n in (3, 11)]
        earlier += [naming.stderr_path(shared, 1, 10), naming.stderr_path(shared, 3, 10)]
        for path in earlier:
            with open(path, "w") as f:
                f.write("an earlier attempt\n")
        # A log that is a link to a file outside: the link goes, its target stays.
        outside = tmp_path / "precious"
        outside.write_text("keep me")
        os.unlink(naming.stdout_path(cfg.paths.shared_dir, 2))
        os.symlink(outside, naming.stdout_path(cfg.paths.shared_dir, 2))

        assert sorted(await purge_once(cfg, db, now=NOW)) == [1, 2]
        assert sorted(t.id for t in await db.list_tasks(limit=100)) == [3, 4, 5, 6, 7]
        for task_id in (1, 2):
            assert not os.path.lexists(naming.stdout_path(cfg.paths.shared_dir, task_id))
            assert not os.path.lexists(naming.stderr_path(cfg.paths.shared_dir, task_id))
        for task_id in range(3, 8):
            assert os.path.exists(naming.stdout_path(cfg.paths.shared_dir, task_id))
        assert [p for p in earlier if os.path.lexists(p)] == [p for p in earlier if "/3." in p]
        assert outside.read_text() == "keep me"
        assert (await db.dependencies_of([7])) == {7: [(6, "after")]}

        # Nothing more to purge now; once task 7 is final, task 6 may go too.
        assert await purge_once(cfg, db, now=NOW) == []
        await db.transition(7, TaskState.CANCELLED, now=NOW - 35 * DAY)
        assert sorted(await purge_once(cfg, db, now=NOW)) == [6, 7]
        assert await db.dependencies_of([7]) == {}
    finally:
        await db.close()


async def test_retain_days_zero_keeps_everything(tmp_path):
    cfg = config(tmp_path, retain_days=0)
    assert cfg.database.retain_days == 0
    db = await Database.open(cfg.database.db_file)
    try:
        await db.insert_tasks([task(1, "alice", "n1", TaskState.COMPLETED, start=T0)])
        assert await purge_once(cfg, db, now=NOW) == []
        assert [t.id for t in await db.list_tasks()] == [1]
    finally:
        await db.close()


def test_retain_days_must_be_a_whole_non_negative_number(tmp_path):
    import pytest

    from hakuriver.errors import ConfigError

    for bad in (-1, "7d", 1.5):
        with pytest.raises(ConfigError, match="retain_days"):
            config(tmp_path, bad)  # type: ignore[arg-type]


async def test_the_loop_purges_at_start_and_survives_a_failed_purge(tmp_path, caplog):
    import asyncio

    from hakuriver.host.retention import retention_loop
    from tests.harness.polling import apoll

    cfg = config(tmp_path, retain_days=1)
    db = await Database.open(cfg.database.db_file)
    calls = 0
    real = db.purge_final_tasks

    async def flaky(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("disk on fire")
        return await real(*args, **kwargs)

    db.purge_final_tasks = flaky  # type: ignore[method-assign]
    loop = None
    try:
        await db.insert_tasks([task(1, "alice", "n1", TaskState.COMPLETED, start=T0)])
        loop = asyncio.create_task(retention_loop(cfg, db, interval=0.01))

        async def purged() -> bool:
            return calls >= 2 and await db.get_task(1) is None

        await apoll(purged, timeout=10, what="the second purge")
        assert "retention purge failed" in caplog.text
    finally:
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        await db.close()
