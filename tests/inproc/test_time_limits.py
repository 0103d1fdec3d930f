"""Time limits end to end: Host API -> RunRequest -> the Runner's supervisor -> `timeout`.

The real Host and Runner apps with the fake backend (which the supervisor
stops itself: it has no limits of its own). The limit is the Runner's to
keep: a Host that is down meanwhile learns `timeout` when it comes back.
"""

from __future__ import annotations

from typing import Any

import pytest

from hakuriver.client import ApiError
from tests.harness.polling import apoll

from .cluster import InProcCluster
from .conftest import ClusterFactory

GRACE = 0.3


async def test_a_task_at_its_limit_ends_timeout(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    task_id = await inproc.submit(["fake", "hang"], time_limit="1s")
    assert (await inproc.client.get_task(task_id))["time_limit"] == 1
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["exit_code"], task["error"]) == ("timeout", 143, "time limit 1s reached")
    # started_at is when the Host heard of the start, a moment after the runner counted from.
    assert task["finished_at"] - task["started_at"] > 0.5
    assert runner.docker.specs[int(task_id)].time_limit == 1
    assert runner.docker.signals == [(int(task_id), "SIGTERM")]
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == 0
    # A limit the task stays within changes nothing.
    quick = await inproc.submit(["fake", "exit", "0"], time_limit=3600)
    [done] = (await inproc.client.wait([quick], timeout=20))["tasks"]
    assert (done["state"], done["time_limit"]) == ("completed", 3600)
    # The state filter knows it.
    assert [t["task_id"] for t in (await inproc.client.list_tasks(state="timeout"))["tasks"]] == [task_id]


async def test_a_task_that_ignores_sigterm_is_killed_after_the_grace(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(config_overrides={"runner": {"timeout_grace": GRACE}})
    runner = await cluster.add_runner("n1")
    task_id = await cluster.submit(["fake", "stubborn"], time_limit="0:01")
    [task] = (await cluster.client.wait([task_id], timeout=20))["tasks"]
    assert task["state"] == "timeout" and task["exit_code"] == 137
    assert task["error"] == f"time limit 1s reached; killed {GRACE:g}s after SIGTERM"
    assert runner.docker.signals == [(int(task_id), "SIGTERM"), (int(task_id), "SIGKILL")]


async def test_the_limit_holds_while_the_host_is_down(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    task_id = await inproc.submit(["fake", "hang"], time_limit=2)
    await inproc.wait_state(task_id, "running")
    await inproc.stop_host()
    # Nobody could tell the runner anything now; it stops the task on its own.
    await apoll(lambda: runner.docker.live == {}, timeout=20, interval=0.05, what="the runner to stop the task")
    assert runner.docker.signals == [(int(task_id), "SIGTERM")]
    await inproc.start_host()
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["error"]) == ("timeout", "time limit 2s reached")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("90", "give a unit"),
        (0, "at least one second"),
        ("31d", "longer than 30d"),
        ("1:60", "up to 59"),
        (True, "wrong type"),
        ([1], "wrong type"),
        (1.5, "wrong type"),
    ],
)
async def test_bad_time_limits_are_refused_at_submit(inproc: InProcCluster, value: Any, words: str) -> None:
    with pytest.raises(ApiError) as err:
        await inproc.client.submit(["fake", "hang"], time_limit=value)
    assert err.value.status == 400 and words in err.value.message, err.value.message
    assert (await inproc.client.list_tasks())["tasks"] == []
