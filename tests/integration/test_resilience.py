"""Runner and Host restarts, runner death, concurrency, fake GPUs and synthetic NUMA."""

from __future__ import annotations

import concurrent.futures
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.harness.procs import REPO

from .cluster import LocalCluster, wait_until
from .test_docker_tasks import waiting_task

pytestmark = pytest.mark.docker

FAKE_NVML = str(REPO / "tests" / "fakes" / "nvml")


def test_runner_restart_readopts_running_tasks(cluster: LocalCluster, node_name: str, docker_client: Any) -> None:
    cluster.add_runner(node_name)
    argv, release = waiting_task(cluster, "readopt")
    script = argv[2] + "import sys; sys.exit(7)\n"
    [task_id] = cluster.submit([argv[0], argv[1], script, argv[3]], targets=[node_name])
    cluster.wait_state(task_id, "running")
    wait_until(lambda: (cluster.shared / "release-readopt.started").exists(), what="task start")
    cluster.runners[node_name].proc.stop(signal.SIGTERM)
    # Stopping the runner never stops its tasks.
    assert docker_client.containers.get(f"hakuriver-task-{task_id}").status == "running"
    release.touch()  # the task ends while its runner is down
    wait_until(
        lambda: docker_client.containers.get(f"hakuriver-task-{task_id}").status == "exited",
        what="the task to exit while the runner is down",
    )
    cluster.runners[node_name].proc.start()
    task = cluster.wait_final(task_id)
    assert task["state"] == "failed" and task["exit_code"] == 7, task
    assert cluster.stdout(task_id) == "released\n"


def test_runner_death_marks_lost_then_restores(cluster_factory: Any, node_name: str) -> None:
    cluster = cluster_factory(heartbeat_interval=0.3, heartbeat_timeout_factor=4)
    cluster.add_runner(node_name)
    argv, release = waiting_task(cluster, "lost")
    [task_id] = cluster.submit(argv, targets=[node_name])
    cluster.wait_state(task_id, "running")
    cluster.runners[node_name].proc.stop(signal.SIGKILL)
    cluster.wait_node(node_name, online=False)
    lost = cluster.wait_state(task_id, "lost")
    assert "heartbeat" in (lost["error"] or "")
    assert cluster.node(node_name)["allocated"]["cores"] == 0
    cluster.runners[node_name].proc.start()
    cluster.wait_node(node_name, online=True)
    cluster.wait_state(task_id, "running")
    release.touch()
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed", task


def test_host_restart_loses_no_acknowledged_task(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    cores = cluster.node(node_name)["cores"]
    argv, release = waiting_task(cluster, "hostrestart")
    [running] = cluster.submit(argv, cores=cores, targets=[node_name])
    cluster.wait_state(running, "running")
    queued = cluster.submit(["echo", "after-restart"], cores=1, targets=[node_name])
    queued += cluster.submit(["echo", "after-restart"], cores=1)
    cluster.stop_host(signal.SIGKILL)
    cluster.host_proc.start()
    cluster.wait_host_up()
    # Healthy nodes are not marked offline on the Host's restart.
    assert cluster.node(node_name)["online"] is True
    assert cluster.task(running)["state"] == "running"
    assert all(cluster.task(t)["state"] == "pending" for t in queued)
    release.touch()
    assert cluster.wait_final(running)["state"] == "completed"
    for t in queued:
        assert cluster.wait_final(t)["state"] == "completed"
        assert cluster.stdout(t) == "after-restart\n"
    assert cluster.node(node_name)["online"] is True


def test_concurrent_submissions_never_overcommit(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    cores = cluster.node(node_name)["cores"]
    argv, release = waiting_task(cluster, "burst")

    def submit(_: int) -> str:
        return cluster.submit(argv, cores=cores, targets=[node_name])[0]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(submit, range(12)))
    assert len(set(ids)) == 12

    def states() -> list[str]:
        return [t["state"] for t in cluster.api("GET", "/api/tasks?limit=100")[1]["tasks"]]

    wait_until(lambda: states().count("running") == 1, what="one full-node task running")
    assert states().count("pending") == 11
    assert cluster.node(node_name)["allocated"]["cores"] == cores
    for t in ids:
        status, _ = cluster.api("POST", f"/api/tasks/{t}/kill")
        assert status == 200
    assert sorted(states()) == ["killed"] * 12
    release.touch()


def _numa_tree(root: Path) -> Path:
    for node, cpu in ((0, "0"), (1, "1")):
        d = root / f"node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(f"{cpu}\n")
        (d / "meminfo").write_text(f"Node {node} MemTotal:       4194304 kB\nNode {node} MemFree: 1 kB\n")
    return root


def test_numa_placement_from_synthetic_sysfs(cluster: LocalCluster, node_name: str, docker_client: Any) -> None:
    sysfs = _numa_tree(cluster.root / "sysfs-node")
    cluster.add_runner(node_name, env={"HAKURIVER_NUMA_SYSFS": str(sysfs)})
    node = cluster.node(node_name)
    assert [n["id"] for n in node["numa"]] == [0, 1]
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "targets": [f"{node_name}:2"]})
    assert status == 400 and "NUMA" in body["error"]["message"]
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "cores": 2, "targets": [f"{node_name}:0"]})
    assert status == 400 and body["error"]["code"] == "unschedulable"
    argv, release = waiting_task(cluster, "numa")
    [task_id] = cluster.submit(argv, targets=[f"{node_name}:0"])
    task = cluster.wait_state(task_id, "running")
    assert task["numa"] == 0
    attrs = docker_client.containers.get(f"hakuriver-task-{task_id}").attrs
    assert attrs["HostConfig"]["CpusetCpus"] == "0"
    assert attrs["HostConfig"]["CpusetMems"] == "0"
    # NUMA 0 has one core, now held: a second NUMA-0 task waits.
    [second] = cluster.submit(["true"], targets=[f"{node_name}:0"])
    assert cluster.task(second)["state"] == "pending"
    release.touch()
    assert cluster.wait_final(task_id)["state"] == "completed"
    assert cluster.wait_final(second)["state"] == "completed"


def test_gpu_validation_and_placement_with_fake_nvml(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name, env={"PYTHONPATH": FAKE_NVML, "FAKE_NVML_GPUS": "2"})
    node = cluster.node(node_name)
    assert [g["index"] for g in node["gpus"]] == [0, 1]
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "targets": [f"{node_name}::2"]})
    assert status == 400 and "GPU 2" in body["error"]["message"], body
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "gpus": 3})
    assert status == 400 and body["error"]["code"] == "unschedulable"
    # Placement picks the named GPUs. There is no NVIDIA runtime here, so
    # Docker refuses the device request and the task fails with its reason.
    [task_id] = cluster.submit(["true"], targets=[f"{node_name}::1"])
    task = cluster.wait_final(task_id)
    assert task["gpus"] == [1]
    assert task["state"] == "failed" and "nvidia" in (task["error"] or "").lower(), task
    [counted] = cluster.submit(["true"], gpus=2)
    task = cluster.wait_final(counted)
    assert task["node"] == node_name and task["gpus"] == [0, 1], task


def test_runner_started_before_the_host_registers_when_it_appears(cluster: LocalCluster, node_name: str) -> None:
    cluster.stop_host()
    cluster.add_runner(node_name, wait_online=False)
    wait_until(lambda: "cannot reach the Host" in cluster.runners[node_name].proc.tail(), what="a failed registration")
    assert cluster.runners[node_name].proc.alive
    cluster.host_proc.start()
    cluster.wait_host_up()
    cluster.wait_node(node_name, online=True)


def test_result_finished_while_the_host_is_down_is_delivered(
    cluster: LocalCluster, node_name: str, docker_client: Any
) -> None:
    cluster.add_runner(node_name)
    argv, release = waiting_task(cluster, "outbox")
    script = argv[2] + "import sys; sys.exit(5)\n"
    [task_id] = cluster.submit([argv[0], argv[1], script, argv[3]], targets=[node_name])
    cluster.wait_state(task_id, "running")
    cluster.stop_host()
    release.touch()

    def ended() -> bool:
        # Sparse, no inspect: the runner may remove the container between a list and a get.
        found = docker_client.containers.list(all=True, sparse=True, filters={"name": f"hakuriver-task-{task_id}"})
        return all(c.status == "exited" for c in found)

    wait_until(ended, what="the task to end while the Host is down")
    wait_until(
        lambda: f"cannot report task {task_id}" in cluster.runners[node_name].proc.tail(),
        what="the runner to fail delivering the result",
    )
    cluster.host_proc.start()
    cluster.wait_host_up()
    task = cluster.wait_final(task_id)
    assert task["state"] == "failed" and task["exit_code"] == 5, task
