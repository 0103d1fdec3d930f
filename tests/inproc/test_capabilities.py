"""What runners say they can run, and the Host refusing at submit what no node can.

Real Host and Runner apps in one loop: each runner probes its (fake) backends
and sends the record at registration and in heartbeats."""

from __future__ import annotations

from typing import Any

import pytest

from hakuriver.client import ApiError
from hakuriver.runner.hostlink import HostLink
from hakuriver.runner.keys import CAPABILITIES
from tests.harness.polling import apoll

from .cluster import InProcCluster, StagedExecutor

NO_SYSTEMD = "this runner has no systemd executor"


async def refused(inproc: InProcCluster, **fields: Any) -> ApiError:
    with pytest.raises(ApiError) as err:
        await inproc.submit(["fake", "exit", "0"], **fields)
    assert err.value.status == 400, err.value
    return err.value


async def test_null_tasks_go_only_where_a_runner_can_run_them(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1", executors={"docker": StagedExecutor("n1")})
    node = await inproc.client.node("n1")
    assert node["capabilities"] == {"docker": {"available": True}, "null": {"available": False, "reason": NO_SYSTEMD}}

    err = await refused(inproc, container="NULL")
    assert err.code == "unschedulable"
    assert (
        err.message
        == f"no node can run --container NULL tasks (node 'n1' cannot run --container NULL tasks: {NO_SYSTEMD})"
    )
    err = await refused(inproc, container="NULL", targets=["n1"])
    assert err.message == f"node 'n1' cannot run --container NULL tasks: {NO_SYSTEMD}"
    assert (await inproc.client.list_tasks())["tasks"] == []

    # A node that can: untargeted NULL tasks are accepted and go there, never to n1.
    n2 = await inproc.add_runner("n2")
    ids = [await inproc.submit(["fake", "exit", "0"], container="NULL") for _ in range(3)]
    done = await inproc.client.wait(ids, timeout=20)
    assert [(t["state"], t["node"]) for t in done["tasks"]] == [("completed", "n2")] * 3
    assert set(n2.systemd.specs) == {int(i) for i in ids}
    # Targeted at n1 it is still refused; Docker tasks still go to n1.
    await refused(inproc, container="NULL", targets=["n1"])
    docker_task = await inproc.submit(["fake", "exit", "0"], targets=["n1"])
    assert (await inproc.wait_state(docker_task, "completed"))["node"] == "n1"


async def test_a_runner_that_does_not_say_is_sent_null_tasks(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older runner registers without capabilities: the Host does not guess,
    and the runner's own refusal is what the user sees."""
    monkeypatch.setattr(HostLink, "_capabilities_field", lambda self: {})
    await inproc.add_runner("old", executors={"docker": StagedExecutor("old")})
    assert (await inproc.client.node("old"))["capabilities"] is None
    task_id = await inproc.submit(["fake", "exit", "0"], container="NULL", targets=["old"])
    [task] = (await inproc.client.wait([task_id], timeout=20))["tasks"]
    assert task["state"] == "failed"
    assert "runner old refused the task" in task["error"] and "no systemd executor" in task["error"]


async def test_a_docker_engine_that_comes_back_is_noticed(inproc: InProcCluster) -> None:
    """Docker unreachable at start-up is an outage that passes: a Docker task
    targeted there is accepted and waits (never refused, never failed); once a
    probe finds the engine again the next heartbeat says so and it runs."""
    docker = StagedExecutor("d1", name="docker")
    docker.broken = "cannot reach the Docker engine: connection refused"
    runner = await inproc.add_runner("d1", executors={"docker": docker, "systemd": StagedExecutor("d1")})
    node = await inproc.client.node("d1")
    assert node["capabilities"]["docker"] == {
        "available": False,
        "reason": "cannot reach the Docker engine: connection refused",
        "lasting": False,
    }
    waiting = await inproc.submit(["fake", "exit", "0"], targets=["d1"])
    null_task = await inproc.submit(["fake", "exit", "0"], container="NULL", targets=["d1"])  # NULL tasks still go
    assert (await inproc.wait_state(null_task, "completed"))["node"] == "d1"
    assert (await inproc.client.get_task(waiting))["state"] == "pending"

    docker.broken = None
    assert runner.app is not None
    await runner.app[CAPABILITIES].refresh()

    async def docker_back() -> bool:
        return (await inproc.client.node("d1"))["capabilities"]["docker"] == {"available": True}

    await apoll(docker_back, timeout=10, interval=0.05, what="the Host to hear that d1 runs Docker again")
    assert (await inproc.wait_state(waiting, "completed"))["node"] == "d1"


@pytest.mark.parametrize("spelling", ["null", "Null", "nULL"])
async def test_null_spelled_otherwise_gets_the_hint(inproc: InProcCluster, spelling: str) -> None:
    await inproc.add_runner("n1")
    err = await refused(inproc, container=spelling)
    assert err.code == "invalid"
    assert err.message == f"unknown environment {spelling!r}: did you mean NULL (run without a container)?"
