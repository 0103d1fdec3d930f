"""Draining a node on the real Host and Runner apps: its running task finishes, new
tasks go to the other node, a task targeted at it waits until it is resumed, and
the drain outlives a Host restart and the runner registering again."""

from __future__ import annotations

from typing import Any

import pytest

from hakuriver.client import ApiError, HostClient
from tests.harness.polling import apoll

from .cluster import InProcCluster


async def node_idle(cluster: InProcCluster, name: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        node = await cluster.client.node(name)
        return node if node["active_tasks"] == [] else None

    return await apoll(check, timeout=20, interval=0.02, what=f"no task to hold resources on {name}")


async def test_drain_lets_the_running_task_finish_and_holds_new_ones_back(inproc: InProcCluster) -> None:
    n1 = await inproc.add_runner("n1", hold_end=True)
    await inproc.add_runner("n2")
    me = (await inproc.client.whoami())["name"]

    running = await inproc.submit(["fake", "exit", "0"], targets=["n1"])
    await inproc.wait_state(running, "running")

    node = await inproc.client.drain_node("n1", reason="kernel  upgrade\n")
    assert node["drained"]["reason"] == "kernel upgrade", "whitespace runs become one space"
    assert node["drained"]["by"] == me and node["drained"]["at"] > 0
    assert node["active_tasks"] == [running]
    assert (await inproc.client.node("n2"))["drained"] is None

    # New untargeted work goes to n2; work targeted at n1 waits.
    elsewhere = [await inproc.submit(["fake", "exit", "0"]) for _ in range(3)]
    done = (await inproc.client.wait(elsewhere, timeout=20))["tasks"]
    assert [(t["state"], t["node"]) for t in done] == [("completed", "n2")] * 3
    waiting = await inproc.submit(["fake", "exit", "0"], targets=["n1"])
    assert await inproc.still_pending(waiting)

    # The running task on n1 ends normally; n1 is then idle but still drained.
    n1.docker.release_end(running)
    [ended] = (await inproc.client.wait([running], timeout=20))["tasks"]
    assert (ended["state"], ended["node"]) == ("completed", "n1")
    assert (await node_idle(inproc, "n1"))["drained"]["reason"] == "kernel upgrade"
    assert await inproc.still_pending(waiting)

    # Draining again replaces the reason (200, not a conflict).
    node = await inproc.client.drain_node("n1", reason="firmware too")
    assert node["drained"]["reason"] == "firmware too"

    # The drain is stored: a Host restart and the runner registering again keep it.
    await inproc.stop_host()
    await inproc.start_host()
    await inproc.wait_node("n1", online=True)
    assert (await inproc.client.node("n1"))["drained"]["reason"] == "firmware too"
    assert await inproc.still_pending(waiting)
    await inproc.restart_runner("n1")
    await inproc.wait_node("n1", online=True)
    assert (await inproc.client.node("n1"))["drained"]["reason"] == "firmware too"
    assert await inproc.still_pending(waiting)
    listed = {n["hostname"]: n["drained"] for n in (await inproc.client.nodes())["nodes"]}
    assert listed["n2"] is None and listed["n1"]["by"] == me

    # Resumed: the waiting task starts on n1 at once.
    node = await inproc.client.resume_node("n1")
    assert node["drained"] is None
    await inproc.wait_state(waiting, "running")
    n1.docker.release_end(waiting)
    [ended] = (await inproc.client.wait([waiting], timeout=20))["tasks"]
    assert (ended["state"], ended["node"]) == ("completed", "n1")
    # Resuming a node that is not drained changes nothing.
    assert (await inproc.client.resume_node("n1"))["drained"] is None


async def test_drain_refusals(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    for call in (inproc.client.drain_node("nope"), inproc.client.resume_node("nope")):
        with pytest.raises(ApiError) as exc:
            await call
        assert exc.value.status == 404 and "no node nope" in exc.value.message
    for reason, why in (("x" * 501, "longer than 500"), ("a\x1b[2Jb", "control character")):
        with pytest.raises(ApiError) as exc:
            await inproc.client.drain_node("n1", reason=reason)
        assert exc.value.status == 400 and why in exc.value.message
    assert (await inproc.client.node("n1"))["drained"] is None

    user = await inproc.client.add_user("alice")
    async with HostClient(inproc.url, user["token"]) as alice:
        for call in (alice.drain_node("n1"), alice.resume_node("n1")):
            with pytest.raises(ApiError) as exc:
                await call
            assert exc.value.status == 403 and "only an admin may" in exc.value.message
        # Anyone sees the drain.
        await inproc.client.drain_node("n1", reason="disk swap")
        assert (await alice.node("n1"))["drained"]["reason"] == "disk swap"


async def test_forget_drops_the_drain(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    await inproc.client.drain_node("n1", reason="retired")
    await runner.stop()
    await inproc.client.forget_node("n1")
    await runner.start()
    await inproc.wait_node("n1", online=True)
    assert (await inproc.client.node("n1"))["drained"] is None
