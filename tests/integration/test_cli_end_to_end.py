"""The console scripts against a real Host and Runner: what a person types."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .cluster import LocalCluster

pytestmark = pytest.mark.docker


def cli(cluster: LocalCluster, module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"hakuriver.cli.{module}", "--config", str(cluster.host_config_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=cluster._env(),
    )


def test_submit_wait_logs_list_and_nodes(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    ok = cli(
        cluster,
        "task",
        "submit",
        "--wait",
        "--target",
        node_name,
        "--env",
        "WHO=river",
        "--",
        "python3",
        "-c",
        "import os, sys; print('hi', os.environ['WHO'], sys.argv[1:])",
        "$(id)",
        "a;b",
    )
    assert ok.returncode == 0, ok.stderr
    task_id = ok.stdout.split()[0]
    assert cluster.task(task_id)["state"] == "completed"
    logs = cli(cluster, "task", "logs", task_id)
    assert logs.returncode == 0 and logs.stdout == "hi river ['$(id)', 'a;b']\n"

    bad = cli(cluster, "task", "submit", "--wait", "--", "python3", "-c", "import sys; sys.exit(4)")
    assert bad.returncode == 1
    bad_id = bad.stdout.split()[0]
    assert cluster.task(bad_id)["exit_code"] == 4

    listed = cli(cluster, "task", "list", "--json", "--state", "completed")
    assert listed.returncode == 0
    assert [t["task_id"] for t in json.loads(listed.stdout)["tasks"]] == [task_id]

    nodes = cli(cluster, "client", "nodes")
    assert nodes.returncode == 0 and node_name in nodes.stdout and "online" in nodes.stdout


def test_follow_logs_and_kill_from_the_cli(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    script = "import time\nfor i in range(3): print('tick', i, flush=True); time.sleep(0.2)\n"
    sub = cli(cluster, "task", "submit", "--", "python3", "-c", script)
    assert sub.returncode == 0, sub.stderr
    task_id = sub.stdout.strip()
    follow = cli(cluster, "task", "logs", "--follow", task_id)
    assert follow.returncode == 0
    assert follow.stdout == "tick 0\ntick 1\ntick 2\n"

    hang = cli(cluster, "task", "submit", "--", "sleep", "600").stdout.strip()
    cluster.wait_state(hang, "running")
    killed = cli(cluster, "client", "kill", hang)
    assert killed.returncode == 0, killed.stderr
    assert cluster.wait_final(hang)["state"] == "killed"
    waited = cli(cluster, "task", "wait", hang)
    assert waited.returncode == 1


def test_user_errors_are_one_line(cluster: LocalCluster) -> None:
    for args in (
        ["task", "submit", "--target", "n:x", "--", "true"],
        ["task", "submit", "--memory", "lots", "--", "true"],
        ["task", "status", "999"],
        ["task", "submit", "--target", "ghost", "--", "true"],
    ):
        result = cli(cluster, *args)
        assert result.returncode in (1, 2), (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
    cluster.stop_host()
    down = cli(cluster, "client", "nodes")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1 and "cannot reach the Host" in down.stderr
