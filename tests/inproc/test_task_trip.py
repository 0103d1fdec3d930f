"""The whole trip of a task, Host -> Runner -> executor -> Runner -> Host, in one event loop.

Each test drives the cluster through the typed HostClient, as a user's CLI
would, and checks what the user sees: states, exit codes, errors, logs.
"""

from __future__ import annotations

import pytest

from hakuriver.client import ApiError
from tests.harness.polling import apoll

from .cluster import InProcCluster, StagedExecutor


async def test_submit_pending_assigning_running_completed(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_start=True, hold_end=True)
    cores = (await inproc.client.node("n1"))["cores"]
    first = await inproc.submit(["fake", "exit", "0"], cores=cores, env={"GREETING": "hi"})
    # The runner accepted it; its executor has not started it yet.
    await inproc.wait_state(first, "assigning")
    # The node is full: a second full-node task waits in the queue.
    second = await inproc.submit(["fake", "exit", "0"], cores=cores)
    assert await inproc.still_pending(second)

    runner.docker.release_start(first)
    task = await inproc.wait_state(first, "running")
    assert task["node"] == "n1" and task["started_at"] >= task["assigned_at"] >= task["submitted_at"]
    assert await runner.listed_tasks() == {first: "running"}
    assert await inproc.still_pending(second)

    runner.docker.release_end(first)
    done = await inproc.client.wait([first], timeout=20)
    assert done["done"] is True
    [task] = done["tasks"]
    assert (task["state"], task["exit_code"], task["error"]) == ("completed", 0, None)
    assert task["finished_at"] >= task["started_at"]
    # What the executor was asked to run: the argv as given, the user's env, the cores.
    spec = runner.docker.specs[int(first)]
    assert spec.command == ("fake", "exit", "0") and spec.env == {"GREETING": "hi"} and spec.cores == cores
    assert spec.image == "hakuriver/inproc-env:base"
    # The task's output reached the shared dir and the logs API.
    data, _, state = await inproc.client.logs(first)
    assert data == f"fake task {first}: fake exit 0\n".encode() and state == "completed"
    data, _, _ = await inproc.client.logs(first, stream="stderr")
    assert data == f"fake task {first}: stderr\n".encode()

    # The freed node takes the queued task.
    await inproc.wait_state(second, "assigning")
    runner.docker.release_start(second)
    runner.docker.release_end(second)
    assert (await inproc.client.wait([second], timeout=20))["tasks"][0]["state"] == "completed"
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == 0


@pytest.mark.parametrize(
    ("command", "state", "exit_code", "error"),
    [
        (["fake", "exit", "3"], "failed", 3, "exited with code 3"),
        (["fake", "oom"], "killed_oom", 137, "out-of-memory"),
        (["fake", "fail-start"], "failed", None, "scripted start failure"),
    ],
)
async def test_failure_outcomes(
    inproc: InProcCluster, command: list[str], state: str, exit_code: int | None, error: str
) -> None:
    await inproc.add_runner("n1")
    task_id = await inproc.submit(command)
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert (task["state"], task["exit_code"]) == (state, exit_code)
    assert error in task["error"]
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == 0


async def test_null_tasks_go_to_the_systemd_executor(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    null_task = await inproc.submit(["fake", "exit", "0"], container="NULL")
    docker_task = await inproc.submit(["fake", "exit", "0"])
    done = await inproc.client.wait([null_task, docker_task], timeout=20)
    assert [t["state"] for t in done["tasks"]] == ["completed", "completed"]
    assert set(runner.systemd.specs) == {int(null_task)}
    assert set(runner.docker.specs) == {int(docker_task)}
    assert runner.systemd.specs[int(null_task)].image is None


async def test_a_null_task_for_a_runner_without_systemd_is_refused_at_submit(inproc: InProcCluster) -> None:
    """The runner says it has no systemd executor, so the Host refuses the task
    at once with that reason, instead of placing it there to fail."""
    await inproc.add_runner("n1", executors={"docker": StagedExecutor("n1")})
    with pytest.raises(ApiError) as err:
        await inproc.submit(["fake", "exit", "0"], container="NULL")
    assert (err.value.status, err.value.code) == (400, "unschedulable")
    assert "node 'n1' cannot run --container NULL tasks: this runner has no systemd executor" in err.value.message
    assert (await inproc.client.list_tasks())["tasks"] == []


async def test_kill_pending_and_running(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    cores = (await inproc.client.node("n1"))["cores"]
    running = await inproc.submit(["fake", "hang"], cores=cores)
    await inproc.wait_state(running, "running")
    pending = await inproc.submit(["fake", "hang"], cores=cores)
    assert await inproc.still_pending(pending)

    killed = await inproc.client.kill(pending)
    assert killed["state"] == "killed"
    assert (await inproc.client.get_task(pending))["node"] is None  # never placed

    killed = await inproc.client.kill(running)
    assert killed["state"] == "killed" and killed["error"] == "killed by request"

    # The kill reached the runner: the task is gone there and its cores are free.
    async def gone() -> bool:
        return await runner.listed_tasks() == {} and runner.docker.live_cores == 0

    await apoll(gone, timeout=20, what="the runner to end the killed task")
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == 0
    assert int(pending) not in runner.docker.specs
    # A killed task stays killed; killing again is a conflict.
    with pytest.raises(ApiError) as exc:
        await inproc.client.kill(running)
    assert exc.value.status == 409
    assert (await inproc.client.get_task(running))["state"] == "killed"


async def test_pause_and_resume(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    cores = (await inproc.client.node("n1"))["cores"]
    task_id = await inproc.submit(["fake", "hang"], cores=cores)
    await inproc.wait_state(task_id, "running")

    assert (await inproc.client.pause(task_id))["state"] == "paused"
    assert await runner.listed_tasks() == {task_id: "paused"}
    assert await runner.docker.recover(runner.docker.handle(task_id)) == "paused"
    # A paused task keeps its cores: the next full-node task waits.
    queued = await inproc.submit(["fake", "exit", "0"], cores=cores)
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == cores
    assert await inproc.still_pending(queued)
    with pytest.raises(ApiError) as exc:
        await inproc.client.pause(task_id)
    assert exc.value.status == 409

    assert (await inproc.client.resume(task_id))["state"] == "running"
    assert await runner.listed_tasks() == {task_id: "running"}
    assert await runner.docker.recover(runner.docker.handle(task_id)) == "running"

    await inproc.client.kill(task_id)
    [queued_task] = (await inproc.client.wait([queued], timeout=20))["tasks"]
    assert queued_task["state"] == "completed"


async def test_wait_returns_when_all_are_final_or_at_the_deadline(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    quick = [await inproc.submit(["fake", "exit", str(code)]) for code in (0, 1, 2)]
    result = await inproc.client.wait(quick, timeout=20)
    assert result["done"] is True
    assert [(t["task_id"], t["exit_code"]) for t in result["tasks"]] == list(zip(quick, [0, 1, 2]))

    hanging = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(hanging, "running")
    result = await inproc.client.wait([quick[0], hanging], timeout=0.3)
    assert result["done"] is False
    assert [t["state"] for t in result["tasks"]] == ["completed", "running"]


async def test_the_queue_never_over_commits(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    cores = (await inproc.client.node("n1"))["cores"]
    ids = [(await inproc.client.submit(["fake", "sleep", "0.05"], cores=cores))["task_ids"][0] for _ in range(6)]
    ids += (await inproc.client.submit(["fake", "exit", "0"], cores=1))["task_ids"]
    result = await inproc.client.wait(ids, timeout=30)
    assert result["done"] is True
    assert {t["state"] for t in result["tasks"]} == {"completed"}
    # Never more cores busy on the node than it has ...
    assert runner.docker.max_live_cores <= cores
    # ... and the Host placed each full-node task only after the previous one ended.
    full = sorted(result["tasks"][:-1], key=lambda t: t["assigned_at"])
    for before, after in zip(full, full[1:]):
        assert after["assigned_at"] >= before["finished_at"], (before, after)
    assert (await inproc.client.node("n1"))["allocated"]["cores"] == 0


async def test_placement_over_two_runners_fills_both(inproc: InProcCluster) -> None:
    a = await inproc.add_runner("a1")
    b = await inproc.add_runner("b1")
    cores = (await inproc.client.node("a1"))["cores"]
    assert (await inproc.client.node("b1"))["cores"] == cores
    first = await inproc.submit(["fake", "hang"], cores=cores)
    second = await inproc.submit(["fake", "hang"], cores=cores)
    t1 = await inproc.wait_state(first, "running")
    t2 = await inproc.wait_state(second, "running")
    assert {t1["node"], t2["node"]} == {"a1", "b1"}
    assert len(a.docker.live) == len(b.docker.live) == 1
    targeted = await inproc.submit(["fake", "exit", "0"], targets=["a1"])
    assert await inproc.still_pending(targeted)
    await inproc.client.kill(t1["task_id"] if t1["node"] == "a1" else t2["task_id"])
    [task] = (await inproc.client.wait([targeted], timeout=20))["tasks"]
    assert (task["state"], task["node"]) == ("completed", "a1")
