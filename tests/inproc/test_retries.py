"""Retries end to end: the real Host and Runner apps, real SQLite files, the fake
executor. A node that stops heartbeating loses its task; with `--retries` the
task runs again elsewhere, and the first runner, when it comes back, cannot
touch the new run. The retry state survives a Host restart."""

from __future__ import annotations

import asyncio
import io

from hakuriver.cli.task import stream_logs
from hakuriver.runner.keys import STATE
from tests.harness.polling import apoll

from .cluster import FAST_LIVENESS, InProcCluster, InProcRunner
from .conftest import ClusterFactory


async def outbox_empty(runner: InProcRunner) -> None:
    assert runner.app is not None
    state = runner.app[STATE]
    await apoll(lambda: state.outbox_ids() == [], timeout=20, what=f"{runner.name}'s results to be delivered")


async def lose_first_run(cluster: InProcCluster, retries: int) -> tuple[str, InProcRunner]:
    """A task runs on n1 (its end held back), then n1's runner stops: n1 goes offline."""
    n1 = await cluster.add_runner("n1", hold_end=True, keep_tasks_on_close=True)
    task_id = await cluster.submit(["fake", "exit", "0"], retries=retries)
    await cluster.wait_state(task_id, "running")
    await n1.stop()
    await cluster.wait_node("n1", online=False)
    return task_id, n1


async def test_a_lost_task_runs_again_on_another_node_and_the_old_runner_cannot_touch_it(
    inproc_factory: ClusterFactory,
) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    task_id, n1 = await lose_first_run(cluster, retries=1)
    task = await cluster.client.get_task(task_id)
    assert (task["state"], task["attempt"], task["node"]) == ("pending", 2, None)
    [lost] = task["attempts"]
    assert (lost["attempt"], lost["state"], lost["node"]) == (1, "lost", "n1")
    assert lost["error"] == "node n1 stopped heartbeating"

    n2 = await cluster.add_runner("n2", hold_end=True)
    task = await cluster.wait_state(task_id, "running")
    assert (task["node"], task["attempt"]) == ("n2", 2)

    # n1's runner comes back and delivers attempt 1's result: `completed`, for
    # the task id that now runs attempt 2 on n2. The Host must ignore it.
    n1.docker.release_end(task_id)
    await n1.start()
    await cluster.wait_node("n1", online=True)
    await outbox_empty(n1)
    assert await n1.listed_tasks() == {}
    task = await cluster.client.get_task(task_id)
    assert (task["state"], task["node"], task["attempt"]) == ("running", "n2", 2)

    n2.docker.release_end(task_id)
    [task] = (await cluster.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["node"], task["exit_code"], task["attempt"]) == ("completed", "n2", 0, 2)
    assert [(a["attempt"], a["state"], a["node"]) for a in task["attempts"]] == [(1, "lost", "n1")]


async def test_without_retries_a_lost_task_stays_lost(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    task_id, _ = await lose_first_run(cluster, retries=0)
    task = await cluster.wait_state(task_id, "lost")
    assert (task["attempt"], task["retries"], task["attempts"]) == (1, 0, [])
    await cluster.add_runner("n2")
    assert await cluster.still_pending(task_id) is False
    assert (await cluster.client.get_task(task_id))["state"] == "lost"


async def test_the_retry_survives_a_host_restart(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    task_id, _ = await lose_first_run(cluster, retries=2)
    await cluster.stop_host()
    await cluster.start_host()
    task = await cluster.client.get_task(task_id)
    assert (task["state"], task["attempt"], task["retries"]) == ("pending", 2, 2)
    assert [(a["attempt"], a["state"], a["node"]) for a in task["attempts"]] == [(1, "lost", "n1")]
    await cluster.add_runner("n2")
    [task] = (await cluster.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["node"], task["attempt"]) == ("completed", "n2", 2)


async def test_a_start_failure_is_retried_on_the_same_node_when_it_is_the_only_one(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    reply = await inproc.client.submit(["fake", "fail-start"], retries=2)
    [task_id] = reply["task_ids"]
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    # Every attempt ran (the runner took each newer attempt) and failed to start.
    assert (task["state"], task["attempt"], task["exit_code"]) == ("failed", 3, None)
    assert [(a["attempt"], a["state"], a["node"]) for a in task["attempts"]] == [
        (1, "failed", "n1"),
        (2, "failed", "n1"),
    ]
    assert all(a["error"] for a in task["attempts"])


async def test_each_array_task_retries_on_its_own(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    reply = await inproc.client.submit(["fake", "exit", "4"], retries=1, retry_on_exit=True, array="0-2")
    tasks = (await inproc.client.wait(reply["task_ids"], timeout=20))["tasks"]
    assert [(t["state"], t["attempt"], len(t["attempts"])) for t in tasks] == [("failed", 2, 1)] * 3
    assert {t["array_index"] for t in tasks} == {0, 1, 2}


async def test_usage_counts_the_time_of_earlier_attempts(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    task_id, _ = await lose_first_run(cluster, retries=1)
    await cluster.add_runner("n2")
    await cluster.client.wait([task_id], timeout=20)
    by_node = {row["name"]: row for row in (await cluster.client.usage(by="node"))["rows"]}
    assert set(by_node) == {"n1", "n2"}  # the lost attempt ran on n1 and counts there
    assert (by_node["n1"]["tasks"], by_node["n2"]["tasks"]) == (0, 1)  # the task itself once
    assert by_node["n1"]["hours"] > 0


async def test_following_a_task_goes_on_with_its_next_attempts_own_log(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    reply = await inproc.client.submit(["fake", "exit", "3"], retries=1, retry_on_exit=True)
    [task_id] = reply["task_ids"]
    await inproc.wait_state(task_id, "running")
    out, note = io.BytesIO(), io.StringIO()
    follower = asyncio.ensure_future(
        stream_logs(inproc.client, task_id, follow=True, interval=0.02, out=out, note=note)
    )
    try:
        await apoll(lambda: out.getvalue() != b"", timeout=20, what="attempt 1's output to be followed")
        runner.docker.release_end(task_id)  # attempt 1 ends (exit 3), attempt 2 runs and ends too
        state = await asyncio.wait_for(follower, timeout=60)
    finally:
        follower.cancel()
    assert (state, (await inproc.client.get_task(task_id))["attempt"]) == ("failed", 2)
    # Both attempts' output, each from its own file's start, and a note where one ends.
    banner = f"fake task {task_id}: fake exit 3\n".encode()
    assert out.getvalue() == banner * 2
    assert note.getvalue() == f"task {task_id} was retried: attempt 2's own output follows\n"
