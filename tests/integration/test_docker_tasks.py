"""Command tasks in real Docker containers, through a real Host and Runner."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .cluster import LocalCluster, wait_until

pytestmark = pytest.mark.docker

WAIT_FOR_FILE = (
    "import os, sys, time\n"
    "open(sys.argv[1] + '.started', 'w').close()\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
    "print('released')\n"
)


def waiting_task(cluster: LocalCluster, name: str) -> tuple[list[str], Any]:
    """argv of a task that marks it started, then waits for a release file in the shared dir."""
    release = cluster.shared / f"release-{name}"
    return ["python3", "-c", WAIT_FOR_FILE, f"/shared/release-{name}"], release


def test_exit_code_output_files_and_argv_verbatim(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    tricky = ["$(id)", "a;b && echo pwned", 'it\'s "quoted"', "line1\nline2", "*"]
    script = "import sys, json; print(json.dumps(sys.argv[1:])); print('to-stderr', file=sys.stderr); sys.exit(3)"
    [task_id] = cluster.submit(["python3", "-c", script, *tricky], targets=[node_name])
    task = cluster.wait_final(task_id)
    assert task["state"] == "failed", task
    assert task["exit_code"] == 3
    assert json.loads(cluster.stdout(task_id)) == tricky
    assert cluster.stderr(task_id).strip() == "to-stderr"
    assert task["node"] == node_name


def test_a_retried_task_keeps_each_attempts_output(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    # Each run counts itself in a file of the shared dir, says which run it is, and fails.
    script = (
        "import os, sys\n"
        "runs = open('/shared/runs-kept', 'a+'); runs.write('x'); runs.flush(); n = os.path.getsize('/shared/runs-kept')\n"
        "print(f'run {n} out'); print(f'run {n} err', file=sys.stderr); sys.exit(3)\n"
    )
    [task_id] = cluster.submit(["python3", "-c", script], retries=1, retry_on_exit=True)
    task = cluster.wait_final(task_id)
    assert (task["state"], task["attempt"], task["exit_code"]) == ("failed", 2, 3), task
    # Each attempt's container wrote its own files: ID.out, then ID.attempt2.out.
    outputs, errors = cluster.shared / "task_outputs", cluster.shared / "task_errors"
    assert (cluster.stdout(task_id), cluster.stderr(task_id)) == ("run 1 out\n", "run 1 err\n")
    assert (outputs / f"{task_id}.attempt2.out").read_text() == "run 2 out\n"
    assert (errors / f"{task_id}.attempt2.err").read_text() == "run 2 err\n"
    # The log endpoint: the current (last) attempt's by default, any other by number.
    for query, expected in (("", b"run 2 out\n"), ("?attempt=1", b"run 1 out\n"), ("?attempt=2", b"run 2 out\n")):
        assert cluster.api("GET", f"/api/tasks/{task_id}/logs{query}") == (200, expected)
    status, body = cluster.api("GET", f"/api/tasks/{task_id}/logs?attempt=3")
    assert status == 404 and "has no attempt 3" in body["error"]["message"], body
    for bad in ("0", "-1", "x"):
        status, body = cluster.api("GET", f"/api/tasks/{task_id}/logs?attempt={bad}")
        assert status == 400 and "attempt" in body["error"]["message"], body


def test_env_workdir_and_task_id(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    script = "import os, json, socket; print(json.dumps({k: os.environ.get(k) for k in ('FOO', 'EMPTY', 'HAKURIVER_TASK_ID')} | {'cwd': os.getcwd(), 'host': socket.gethostname()}))"
    [task_id] = cluster.submit(["python3", "-c", script], env={"FOO": "bar=baz", "EMPTY": ""})
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed", task
    assert task["exit_code"] == 0
    seen = json.loads(cluster.stdout(task_id))
    # `hostname` names the node, not the container.
    assert seen == {"FOO": "bar=baz", "EMPTY": "", "HAKURIVER_TASK_ID": task_id, "cwd": "/shared", "host": node_name}


def test_limits_visible_in_inspect_and_output_while_running(
    cluster: LocalCluster, node_name: str, docker_client: Any
) -> None:
    cluster.add_runner(node_name)
    argv, release = waiting_task(cluster, "limits")
    [task_id] = cluster.submit(argv, cores=1, memory=64 << 20, targets=[node_name])
    cluster.wait_state(task_id, "running")
    wait_until(lambda: (cluster.shared / "release-limits.started").exists(), what="the task to start")
    attrs = docker_client.containers.get(f"hakuriver-task-{task_id}").attrs
    assert attrs["HostConfig"]["NanoCpus"] == 1_000_000_000
    assert attrs["HostConfig"]["Memory"] == 64 << 20
    assert attrs["Config"]["Labels"]["org.hakuriver.task_id"] == task_id
    release.touch()
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed"
    assert cluster.stdout(task_id).strip() == "released"


def test_oom_is_reported_as_killed_oom(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    hog = "x = []\nwhile True: x.append(bytearray(8 << 20))"
    [task_id] = cluster.submit(["python3", "-c", hog], memory=32 << 20)
    task = cluster.wait_final(task_id)
    assert task["state"] == "killed_oom", task


def test_pause_resume_kill_running(cluster: LocalCluster, node_name: str, docker_client: Any) -> None:
    cluster.add_runner(node_name)
    argv, _release = waiting_task(cluster, "prk")
    [task_id] = cluster.submit(argv, targets=[node_name])
    cluster.wait_state(task_id, "running")
    status, body = cluster.api("POST", f"/api/tasks/{task_id}/pause")
    assert status == 200 and body["state"] == "paused", body
    assert docker_client.containers.get(f"hakuriver-task-{task_id}").attrs["State"]["Paused"] is True
    status, body = cluster.api("POST", f"/api/tasks/{task_id}/pause")
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = cluster.api("POST", f"/api/tasks/{task_id}/resume")
    assert status == 200 and body["state"] == "running", body
    assert docker_client.containers.get(f"hakuriver-task-{task_id}").attrs["State"]["Paused"] is False
    # A paused task can be killed too.
    assert cluster.api("POST", f"/api/tasks/{task_id}/pause")[0] == 200
    status, body = cluster.api("POST", f"/api/tasks/{task_id}/kill")
    assert status == 200 and body["state"] == "killed", body
    # The container goes away, and a late report never overwrites `killed`.
    wait_until(
        lambda: not docker_client.containers.list(all=True, sparse=True, filters={"name": f"hakuriver-task-{task_id}"}),
        what="the killed task's container to be removed",
    )
    wait_until(lambda: cluster.node(node_name)["allocated"]["cores"] == 0, what="the cores to be released")
    assert cluster.task(task_id)["state"] == "killed"
    status, body = cluster.api("POST", f"/api/tasks/{task_id}/kill")
    assert status == 409


def test_queue_waits_and_never_overcommits(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    cores = cluster.node(node_name)["cores"]
    ids = []
    for i in range(cores + 2):
        argv, _ = waiting_task(cluster, f"q{i}")
        ids += cluster.submit(argv, cores=1, targets=[node_name])
    peak = 0

    def settled() -> bool:
        nonlocal peak
        states = [cluster.task(t)["state"] for t in ids]
        running = sum(s in ("assigning", "running") for s in states)
        peak = max(peak, running)
        return running == cores and states.count("pending") == 2

    wait_until(settled, what=f"{cores} tasks running and 2 pending")
    # Release one at a time: a pending one takes the freed core, never more.
    for i in range(cores + 2):
        (cluster.shared / f"release-q{i}").touch()
        settled_counts = [cluster.task(t)["state"] for t in ids]
        peak = max(peak, sum(s in ("assigning", "running") for s in settled_counts))
    for t in ids:
        assert cluster.wait_final(t)["state"] == "completed"
    assert peak <= cores
    node = cluster.node(node_name)
    assert node["allocated"]["cores"] == 0


def test_kill_pending_task(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    cores = cluster.node(node_name)["cores"]
    argv, release = waiting_task(cluster, "blocker")
    [blocker] = cluster.submit(argv, cores=cores, targets=[node_name])
    cluster.wait_state(blocker, "running")
    [queued] = cluster.submit(["true"], cores=cores, targets=[node_name])
    assert cluster.task(queued)["state"] == "pending"
    status, body = cluster.api("POST", f"/api/tasks/{queued}/kill")
    assert status == 200 and body["state"] == "killed"
    release.touch()
    assert cluster.wait_final(blocker)["state"] == "completed"
    assert cluster.task(queued)["state"] == "killed"
    assert not (cluster.shared / "task_outputs" / f"{queued}.out").exists()


def test_unknown_environment_fails_fast_without_pull(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    [task_id] = cluster.submit(["true"], container="no-such-env")
    task = cluster.wait_final(task_id, timeout=30)
    assert task["state"] == "failed"
    assert "hakuriver/no-such-env:base" in task["error"] and "not present" in task["error"], task


def test_mount_policy(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    allowed = cluster.root / "mountable"
    allowed.mkdir()
    allowed.chmod(0o1777)  # the task's user may write there: only ':ro' may refuse the write below
    (allowed / "data.txt").write_text("mounted-data")
    [task_id] = cluster.submit(["cat", "/data/data.txt"], mounts=[f"{allowed}:/data:ro"])
    assert cluster.wait_final(task_id)["state"] == "completed"
    assert cluster.stdout(task_id) == "mounted-data"
    [task_id] = cluster.submit(["sh", "-c", "echo x > /data/new"], mounts=[f"{allowed}:/data:ro"])
    assert cluster.wait_final(task_id)["state"] == "failed"
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "mounts": ["/:/host"]})
    assert status == 403 and "not allowed" in body["error"]["message"]
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "mounts": ["/etc:/etc2"]})
    assert status == 403
    status, body = cluster.api("POST", "/api/tasks", {"command": ["true"], "privileged": True})
    assert status == 403 and "privileged" in body["error"]["message"]
