"""Retention on a live Host (`database.retain_days`): an old final task and its
log files go when the Host starts, through its real SQLite file; a running
task, a pending one waiting on it, and a recent final task stay, whatever
their age, and the purged task is gone from the API and from history."""

from __future__ import annotations

import os
import sqlite3
import time

from hakuriver import naming
from hakuriver.client import ApiError
from tests.harness.polling import apoll

from .conftest import ClusterFactory

DAY = 86_400.0


async def test_a_restarted_host_purges_old_final_tasks_only(inproc_factory: ClusterFactory) -> None:
    inproc = await inproc_factory(config_overrides={"database": {"retain_days": 1}})
    await inproc.add_runner("n1")
    old = await inproc.submit(["fake", "exit", "0"])
    recent = await inproc.submit(["fake", "exit", "3"])
    for task_id in (old, recent):
        await inproc.wait_state(task_id, "completed", "failed")
    running = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(running, "running")
    waiting = await inproc.submit(["fake", "exit", "0"], after=[running])
    shared = inproc.shared
    logs = [naming.stdout_path(str(shared), int(old)), naming.stderr_path(str(shared), int(old))]
    for path in logs:  # the fake executor writes none; the Host must remove what a real one would
        with open(path, "w") as fh:
            fh.write("output\n")

    await inproc.stop_host()
    # Age every task by ten days; only `old` finished more than a day ago.
    ago = time.time() - 10 * DAY
    with sqlite3.connect(inproc.db_file) as conn:
        conn.execute("UPDATE tasks SET submitted_at=?, started_at=?", (ago, ago))
        conn.execute("UPDATE tasks SET finished_at=? WHERE id=?", (ago + 60, int(old)))
    conn.close()
    await inproc.start_host()

    async def purged() -> bool:
        # The rows go first, then (in a thread) the files.
        if any(os.path.lexists(p) for p in logs):
            return False
        try:
            await inproc.client.get_task(old)
        except ApiError as e:
            return e.status == 404
        return False

    await apoll(purged, timeout=20, interval=0.05, what="the start-up purge to remove the old task and its logs")
    for task_id, state in ((recent, "failed"), (running, "running"), (waiting, "pending")):
        assert (await inproc.client.get_task(task_id))["state"] == state
    listed = {t["task_id"] for t in (await inproc.client.list_tasks(limit=100))["tasks"]}
    assert listed == {recent, running, waiting}, listed
    # The dependency of the waiting task survived the purge: it still starts once `running` ends.
    await inproc.client.kill(running)
    final = await inproc.wait_state(waiting, "cancelled", "completed")
    assert final["state"] == "cancelled", final  # `after` a killed task: can never start
