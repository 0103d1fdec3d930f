"""The fair share and priorities across a Host restart: priorities are stored;
decayed usage is rebuilt from the stored final tasks."""

from __future__ import annotations

import pytest

from hakuriver.host.fairshare import span_usage
from tests.harness.polling import apoll

from .conftest import ClusterFactory

DAY = 86400.0


async def test_usage_is_rebuilt_from_stored_tasks_and_priorities_kept(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(config_overrides={"scheduler": {"fairshare_half_life": "1d"}})
    await cluster.add_runner("n1")
    client = cluster.client
    admin = (await client.whoami())["name"]

    async def usage() -> float:
        rows = (await client.fairshare())["users"]
        return next((r["usage_core_hours"] for r in rows if r["name"] == admin), 0.0)

    task_id = await cluster.submit(["fake", "hang"], priority=7)
    await cluster.wait_state(task_id, "running")

    async def accrued() -> bool:
        return await usage() >= 0.0005

    await apoll(accrued, timeout=30, what="the running task's usage to accrue")
    await client.kill(task_id)
    ended = await cluster.wait_state(task_id, "killed")

    await cluster.stop_host()
    await cluster.start_host()
    expected = span_usage(ended["cores"], ended["assigned_at"], ended["finished_at"], ended["finished_at"], DAY) / 3600
    assert await usage() == pytest.approx(expected, rel=1e-3)
    assert (await client.get_task(task_id))["priority"] == 7

    # Every task of an array gets the submission's priority.
    array = await client.submit(["fake", "exit", "0"], array="0-2", priority=-3)
    assert [t["priority"] for t in array["tasks"]] == [-3, -3, -3]
    done = await client.wait(array["task_ids"], timeout=20)
    assert [t["priority"] for t in done["tasks"]] == [-3, -3, -3]
