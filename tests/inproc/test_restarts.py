"""Runner and Host restarts, and heartbeat reconciliation (lost -> restored).

The runners here use executors whose tasks outlive the runner process
(`keep_tasks_on_close`), as Docker containers and systemd units do.
"""

from __future__ import annotations

import sqlite3

import pytest

from hakuriver.runner.app import state_path
from tests.harness.polling import apoll

from .cluster import FAST_LIVENESS, InProcCluster, InProcRunner, StagedExecutor
from .conftest import ClusterFactory


async def runner_has(runner: InProcRunner, expected: dict[str, str]) -> None:
    async def check() -> bool:
        return await runner.listed_tasks() == expected

    await apoll(check, timeout=20, interval=0.05, what=f"runner {runner.name} to run exactly {expected}")


async def test_a_restarted_runner_re_adopts_its_tasks(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", keep_tasks_on_close=True)
    if (await inproc.client.node("n1"))["cores"] < 2:
        pytest.skip("two one-core tasks at once need a runner with 2 cores")
    running = await inproc.submit(["fake", "hang"])
    paused = await inproc.submit(["fake", "hang"])
    for task_id in (running, paused):
        await inproc.wait_state(task_id, "running")
    await inproc.client.pause(paused)

    await inproc.restart_runner("n1")

    # Re-adopted during start-up, before the runner serves its first request.
    assert await runner.listed_tasks() == {running: "running", paused: "paused"}
    for task_id, state in ((running, "running"), (paused, "paused")):
        task = await inproc.client.get_task(task_id)
        assert (task["state"], task["error"]) == (state, None), task
    assert sorted(runner.docker.specs) == sorted([int(running), int(paused)])  # not started again
    # The new runner process controls the adopted tasks.
    assert (await inproc.client.resume(paused))["state"] == "running"
    await runner_has(runner, {running: "running", paused: "running"})
    await inproc.client.kill(running)
    await inproc.client.kill(paused)
    await runner_has(runner, {})
    assert runner.docker.live == {}


async def test_a_task_that_ended_while_its_runner_was_down_is_reported(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", keep_tasks_on_close=True)
    task_id = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(task_id, "running")
    await runner.stop()
    await runner.docker.stop(runner.docker.handle(task_id), "SIGTERM")  # nobody watches: exit code 143
    await runner.start()
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["exit_code"], task["error"]) == ("failed", 143, "exited with code 143")
    assert await runner.listed_tasks() == {}


async def test_a_plain_fake_executor_is_re_adopted(inproc: InProcCluster) -> None:
    fake = StagedExecutor("n1", keep_tasks_on_close=True)  # named "fake", like FakeExecutor
    assert fake.name == "fake"
    runner = await inproc.add_runner("n1", executors={"docker": fake})
    task_id = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(task_id, "running")
    await inproc.restart_runner("n1")
    assert await runner.listed_tasks() == {task_id: "running"}


async def test_lost_when_heartbeats_stop_then_restored(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    runner = await cluster.add_runner("n1", keep_tasks_on_close=True)
    task_id = await cluster.submit(["fake", "hang"])
    await cluster.wait_state(task_id, "running")

    await runner.stop()
    assert (await cluster.wait_node("n1", online=False))["online"] is False
    task = await cluster.wait_state(task_id, "lost")
    assert task["error"] == "node n1 stopped heartbeating"
    assert (await cluster.client.node("n1"))["allocated"]["cores"] == 0

    await runner.start()  # the task ran on all along
    await cluster.wait_node("n1", online=True)
    task = await cluster.wait_state(task_id, "running")
    assert task["error"] is None
    assert (await cluster.client.node("n1"))["allocated"]["cores"] == 1
    await cluster.client.kill(task_id)
    await runner_has(runner, {})


async def test_a_task_the_runner_forgot_becomes_lost(inproc_factory: ClusterFactory) -> None:
    cluster = await inproc_factory(timing=FAST_LIVENESS)
    runner = await cluster.add_runner("n1")
    task_id = await cluster.submit(["fake", "hang"])
    await cluster.wait_state(task_id, "running")
    await runner.stop()  # the plain fake ends its tasks with the runner
    # The runner forgets its tasks but keeps its identity (a wiped identity
    # is a new runner, which the Host refuses while the node is online).
    state = sqlite3.connect(state_path(runner.config))
    with state:
        assert state.execute("DELETE FROM tasks").rowcount == 1
    state.close()
    await runner.start()
    task = await cluster.wait_state(task_id, "lost")
    assert task["error"] == "runner n1 no longer knows this task"
    assert (await cluster.client.node("n1"))["online"] is True


async def test_a_task_killed_while_its_runner_was_down_is_killed_when_it_returns(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", keep_tasks_on_close=True)
    task_id = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(task_id, "running")
    await runner.stop()
    assert (await inproc.client.kill(task_id))["state"] == "killed"  # the runner cannot be told now
    assert await runner.docker.recover(runner.docker.handle(task_id)) == "running"
    await runner.start()
    # It registers listing the task; the Host answers with a kill order.
    await runner_has(runner, {})
    assert runner.docker.live == {}
    assert (await inproc.client.get_task(task_id))["state"] == "killed"


async def test_a_result_reached_while_the_host_is_down_is_delivered_after(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    task_id = await inproc.submit(["fake", "exit", "5"])
    await inproc.wait_state(task_id, "running")
    await inproc.stop_host()
    runner.docker.release_end(task_id)  # the runner records the result; reporting it fails
    await apoll(lambda: runner.docker.live == {}, timeout=20, what="the task to end on the runner")
    await inproc.start_host()
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["exit_code"]) == ("failed", 5)
    assert (await inproc.client.node("n1"))["online"] is True
