"""The runner's state file: handles before 'running', an outbox until acknowledged."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from hakuriver.models import ExitResult, TaskState
from hakuriver.runner.executors.base import Handle
from hakuriver.runner.state import MIGRATIONS, RunnerState

BIG = 2**62 + 12345  # a snowflake-sized id


def handle(task_id: int) -> Handle:
    return Handle(task_id=task_id, executor="docker", ref=f"c{task_id}", data={"stdout": "/s/o", "stderr": "/s/e"})


async def test_save_reopen_active(tmp_path):
    path = str(tmp_path / "sub" / "runner.db")
    st = await RunnerState.open(path)
    await st.save_task(handle(BIG), {"task_id": str(BIG), "command": ["echo", "x"]})
    await st.save_task(handle(7), {"task_id": "7"})
    assert await st.set_flags(BIG, paused=True) is True
    assert await st.set_flags(7, kill_requested=True) is True
    assert await st.set_flags(999, paused=True) is False
    await st.close()

    st = await RunnerState.open(path)
    active = await st.active()
    assert [a.task_id for a in active] == [7, BIG]
    by_id = {a.task_id: a for a in active}
    assert by_id[BIG].handle == handle(BIG)
    assert by_id[BIG].task == {"task_id": str(BIG), "command": ["echo", "x"]}
    assert (by_id[BIG].paused, by_id[BIG].kill_requested) == (True, False)
    assert (by_id[7].paused, by_id[7].kill_requested) == (False, True)
    # re-saving keeps the flags
    await st.save_task(handle(7), {"task_id": "7", "again": True})
    got = await st.get(7)
    assert got is not None and got.kill_requested and got.task["again"] is True
    await st.close()


async def test_outbox_survives_reopen_and_acknowledge_removes(tmp_path):
    path = str(tmp_path / "runner.db")
    st = await RunnerState.open(path)
    await st.save_task(handle(BIG), {"task_id": str(BIG)})
    await st.record_result(BIG, ExitResult(TaskState.FAILED, 3, "exited with code 3"), 1000.5)
    # a second observation does not overwrite the first
    await st.record_result(BIG, ExitResult(TaskState.COMPLETED, 0), 2000.0)
    await st.record_result(8, ExitResult(TaskState.KILLED_OOM, 137, "oom"), 999.0)  # never saved: still recorded
    assert await st.active() == []
    await st.close()

    st = await RunnerState.open(path)
    out = await st.outbox()
    assert [o.task_id for o in out] == [8, BIG]
    big = out[1]
    assert big.result == ExitResult(TaskState.FAILED, 3, "exited with code 3")
    assert big.finished_at == 1000.5
    assert big.handle == handle(BIG) and big.task == {"task_id": str(BIG)}
    assert out[0].handle is None
    await st.acknowledge(BIG)
    await st.acknowledge(BIG)
    assert [o.task_id for o in await st.outbox()] == [8]
    await st.close()


async def test_pragmas_and_schema_version(tmp_path):
    path = str(tmp_path / "runner.db")
    st = await RunnerState.open(path)
    await st.close()
    con = sqlite3.connect(path)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


async def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "runner.db")
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    con.commit()
    con.close()
    with pytest.raises(Exception, match="newer than this HakuRiver"):
        await RunnerState.open(path)


async def test_a_handle_stored_with_the_old_started_mark_reads_as_started(tmp_path):
    # Before Handle.started, the supervisor kept the mark in the backend's data.
    path = str(tmp_path / "runner.db")
    st = await RunnerState.open(path)
    await st.save_task(handle(7), {"task_id": "7"})
    await st.close()
    con = sqlite3.connect(path)
    old = {"task_id": "7", "executor": "docker", "ref": "c7", "data": {"stdout": "/s/o", "started": True}}
    con.execute("UPDATE tasks SET handle = ? WHERE task_id = 7", (json.dumps(old),))
    con.commit()
    con.close()
    st = await RunnerState.open(path)
    [active] = await st.active()
    assert active.handle.started is True
    assert active.handle.data == {"stdout": "/s/o"}
    assert Handle.from_json(active.handle.to_json()) == active.handle
    await st.close()


async def test_an_output_error_waits_in_the_outbox_across_an_upgrade_and_a_reopen(tmp_path):
    # A store from before output_error (schema 2) with a result already waiting.
    path = str(tmp_path / "runner.db")
    con = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        con.executescript(script)
    con.execute(
        "INSERT INTO outbox (task_id, state, exit_code, error, finished_at) VALUES (5, 'completed', 0, NULL, 1.0)"
    )
    con.commit()
    con.close()
    st = await RunnerState.open(path)
    flag = "stdout: No space left on device (ENOSPC) after 1M written"
    await st.record_result(BIG, ExitResult(TaskState.COMPLETED, 0, output_error=flag), 2.0)
    await st.close()
    st = await RunnerState.open(path)
    out = {o.task_id: o.result for o in await st.outbox()}
    assert out == {5: ExitResult(TaskState.COMPLETED, 0), BIG: ExitResult(TaskState.COMPLETED, 0, output_error=flag)}
    await st.close()


async def test_a_write_cancelled_anywhere_ends_whole_and_stays_cancelled(tmp_path):
    """A runner stopping cancels whatever write is under way (a kill's flag, a
    result moving to the outbox). Cancelled at any point, the write is done
    whole or not at all, the cancellation reaches the caller (a loop that
    swallowed it never stops), the next write works, and the outbox the
    runner keeps in memory says what the file says."""
    st = await RunnerState.open(str(tmp_path / "runner.db"))
    try:
        for turns in range(40):  # cancel after 0, 1, ... turns of the event loop
            task_id = 1000 + turns
            await st.save_task(handle(task_id), {"task_id": str(task_id)})
            writes = [
                asyncio.ensure_future(st.set_flags(task_id, kill_requested=True)),
                asyncio.ensure_future(st.record_result(task_id, ExitResult(TaskState.KILLED), 1.0)),
            ]
            for _ in range(turns):
                await asyncio.sleep(0)
            for write in writes:
                write.cancel()
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            for outcome in outcomes:
                assert outcome is None or isinstance(outcome, (bool, asyncio.CancelledError)), outcome
            in_file = {entry.task_id for entry in await st.outbox()}
            assert set(st.outbox_ids()) == in_file, (turns, st.outbox_ids(), in_file)
            # The store takes the next write (no transaction left open) and its effect shows.
            await st.record_result(task_id, ExitResult(TaskState.KILLED), 2.0)
            assert st.in_outbox(task_id)
            await st.acknowledge(task_id)
            assert not st.in_outbox(task_id)
            assert task_id not in {entry.task_id for entry in await st.outbox()}
    finally:
        await st.close()
