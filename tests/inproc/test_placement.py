"""GPU and NUMA placement on runners whose probe reads fake NVML and a synthetic sysfs."""

from __future__ import annotations

import pytest

from hakuriver.client import ApiError

from .cluster import InProcCluster

MIB = 1 << 20


async def refusal(cluster: InProcCluster, **fields: object) -> ApiError:
    with pytest.raises(ApiError) as exc:
        await cluster.client.submit(["fake", "exit", "0"], **fields)  # type: ignore[arg-type]
    assert exc.value.status == 400
    return exc.value


@pytest.mark.usefixtures("fake_nvml")
async def test_gpu_placement_and_refusals(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("g1", gpus=2)
    node = await inproc.client.node("g1")
    assert [g["index"] for g in node["gpus"]] == [0, 1]
    before = (await inproc.client.list_tasks())["tasks"]

    err = await refusal(inproc, gpus=3)
    assert err.code == "unschedulable" and "task needs 3 GPUs but no node has more than 2" in err.message
    err = await refusal(inproc, targets=["g1::5"])
    assert "node 'g1' has no GPU 5 (its GPUs: 0, 1)" in err.message
    assert (await inproc.client.list_tasks())["tasks"] == before  # nothing was stored

    # A GPU count gets the lowest free ids; a named GPU gets that one.
    one = (await inproc.client.submit(["fake", "hang"], gpus=1))["task_ids"][0]
    assert (await inproc.wait_state(one, "running"))["gpus"] == [0]
    named = (await inproc.client.submit(["fake", "hang"], targets=["g1::1"]))["task_ids"][0]
    assert (await inproc.wait_state(named, "running"))["gpus"] == [1]
    assert runner.docker.specs[int(one)].gpus == (0,) and runner.docker.specs[int(named)].gpus == (1,)
    # Both GPUs are held: a task needing two waits, and gets both once they are free.
    both = (await inproc.client.submit(["fake", "exit", "0"], gpus=2))["task_ids"][0]
    assert await inproc.still_pending(both)
    assert sorted((await inproc.client.node("g1"))["allocated"]["gpus"]) == [0, 1]
    await inproc.client.kill(one)
    assert await inproc.still_pending(both)  # GPU 1 is still held
    await inproc.client.kill(named)
    [task] = (await inproc.client.wait([both], timeout=20))["tasks"]
    assert (task["state"], task["gpus"]) == ("completed", [0, 1])


async def test_no_gpus_anywhere(inproc: InProcCluster) -> None:
    await inproc.add_runner("c1")
    err = await refusal(inproc, gpus=1)
    assert "task needs 1 GPU but no node has GPUs" in err.message
    err = await refusal(inproc, targets=["c1::0"])
    assert "node 'c1' has no GPUs" in err.message


async def test_numa_placement_and_refusals(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("m1", numa=[("0", 512 * MIB), ("1", 64 * MIB)])
    node = await inproc.client.node("m1")
    if node["cores"] < 2:
        pytest.skip("one task per NUMA node at once needs a runner with 2 cores")
    assert [(n["id"], n["cpus"], n["memory"]) for n in node["numa"]] == [(0, [0], 512 * MIB), (1, [1], 64 * MIB)]

    err = await refusal(inproc, targets=["m1:2"])
    assert "node 'm1' has no NUMA node 2 (its NUMA nodes: 0, 1)" in err.message
    err = await refusal(inproc, targets=["m1:1"], memory=128 * MIB)
    assert "task needs 128M of memory but NUMA node 1 of 'm1' has 64M" in err.message

    pinned = (await inproc.client.submit(["fake", "hang"], targets=["m1:1"], memory=32 * MIB))["task_ids"][0]
    task = await inproc.wait_state(pinned, "running")
    assert (task["numa"], task["memory"]) == (1, 32 * MIB)
    numa = runner.docker.specs[int(pinned)].numa
    assert numa is not None and (numa.id, numa.cpus) == (1, (1,))
    # NUMA node 1 has one CPU, held now: node 0 still takes work, the next task pinned to 1 waits.
    other = (await inproc.client.submit(["fake", "exit", "0"], targets=["m1:0"]))["task_ids"][0]
    [done] = (await inproc.client.wait([other], timeout=20))["tasks"]
    assert (done["state"], done["numa"]) == ("completed", 0)
    queued = (await inproc.client.submit(["fake", "exit", "0"], targets=["m1:1"]))["task_ids"][0]
    assert await inproc.still_pending(queued)
    await inproc.client.kill(pinned)
    [done] = (await inproc.client.wait([queued], timeout=20))["tasks"]
    assert (done["state"], done["numa"]) == ("completed", 1)


async def test_a_runner_without_numa_refuses_numa_targets(inproc: InProcCluster) -> None:
    await inproc.add_runner("p1")
    err = await refusal(inproc, targets=["p1:0"])
    assert "node 'p1' has no NUMA node 0 (it reports no NUMA topology)" in err.message
