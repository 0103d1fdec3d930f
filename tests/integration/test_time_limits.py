"""Time limits on a real Host and Runner with real Docker tasks, through the CLI.

At the limit the Runner sends the container SIGTERM, then SIGKILL after
`runner.timeout_grace`; the task ends `timeout`. The Runner keeps the limit
on its own: with the Host stopped the task still ends at it, and the Host
learns `timeout` when it is back.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import docker.errors
import pytest

from hakuriver.naming import task_container_name

from .cluster import LocalCluster, wait_until
from .test_cli_end_to_end import cli

pytestmark = pytest.mark.docker

GRACE = 2


def test_a_docker_task_at_its_limit_ends_timeout_through_the_cli(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name, config={"runner": {"timeout_grace": GRACE}})
    began = time.monotonic()
    sub = cli(cluster, "task", "submit", "--wait", "--time", "2s", "--", "sleep", "60")
    elapsed = time.monotonic() - began
    assert sub.returncode == 1, sub.stderr  # like failed: it did not complete
    task_id = sub.stdout.split()[0]
    task = cluster.task(task_id)
    assert task["state"] == "timeout" and task["time_limit"] == 2, task
    assert (task["error"] or "").startswith("time limit 2s reached"), task
    # `sleep` as PID 1 ignores SIGTERM: SIGKILL after the grace (or SIGTERM itself
    # where the image runs an init that forwards it).
    assert task["exit_code"] in (137, 143), task
    assert 2 <= elapsed < 2 + GRACE + 20, elapsed  # ended within the grace, far before 60 s
    assert "timeout" in sub.stdout and "time limit 2s reached" in sub.stdout

    status = cli(cluster, "task", "status", task_id)
    assert status.returncode == 0 and "timeout" in status.stdout and "2s" in status.stdout, status.stdout
    listed = cli(cluster, "task", "list", "--state", "timeout")
    assert listed.returncode == 0 and task_id in listed.stdout
    waited = cli(cluster, "task", "wait", task_id)
    assert waited.returncode == 1 and "timeout" in waited.stdout


def test_a_task_that_handles_sigterm_ends_timeout_with_its_own_exit(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name, config={"runner": {"timeout_grace": GRACE}})
    script = (
        "import signal, sys, time\n"
        "def bye(*_):\n"
        "    print('checkpoint saved', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "print('working', flush=True)\n"
        "time.sleep(60)\n"
    )
    sub = cli(cluster, "task", "submit", "--wait", "--time", "0:03", "--", "python3", "-c", script)
    task_id = sub.stdout.split()[0]
    task = cluster.task(task_id)
    assert (task["state"], task["exit_code"], task["error"]) == ("timeout", 0, "time limit 3s reached"), task
    assert cluster.stdout(task_id) == "working\ncheckpoint saved\n"


def test_the_limit_holds_with_the_host_stopped(cluster: LocalCluster, node_name: str, docker_client: Any) -> None:
    cluster.add_runner(node_name, config={"runner": {"timeout_grace": GRACE}})
    [task_id] = cluster.submit(["sleep", "600"], time_limit="4s", targets=[node_name])
    cluster.wait_state(task_id, "running")
    cluster.stop_host(signal.SIGTERM)

    def ended() -> bool:
        try:
            return docker_client.containers.get(task_container_name(int(task_id))).status != "running"
        except docker.errors.NotFound:
            return True  # ended, recorded and cleaned up

    wait_until(ended, timeout=4 + GRACE + 30, what="the Runner to stop the task at its limit without the Host")
    assert cluster.host_proc is not None
    cluster.host_proc.start()
    cluster.wait_host_up()
    task = cluster.wait_final(task_id, timeout=60)
    assert task["state"] == "timeout" and (task["error"] or "").startswith("time limit 4s reached"), task
