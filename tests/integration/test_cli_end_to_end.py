"""The console scripts against a real Host and Runner: what a person types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_a_null_task_no_runner_can_run_is_refused_and_nodes_say_why(cluster: LocalCluster, node_name: str) -> None:
    """A runner process not under systemd (PID 1), or without the root launcher,
    says so; the Host refuses NULL tasks at submit with its reason, and
    `client nodes` shows the same reason."""
    cluster.add_runner(node_name)
    listed = cli(cluster, "client", "--json", "nodes")
    assert listed.returncode == 0, listed.stderr
    [node] = json.loads(listed.stdout)["nodes"]
    caps = node["capabilities"]
    assert caps["docker"] == {"available": True}
    if caps["null"]["available"]:
        pytest.skip("this machine runs NULL tasks (systemd is PID 1 and the launcher works)")
    reason = caps["null"]["reason"]
    if not Path("/run/systemd/system").is_dir():
        assert reason == "systemd is not PID 1"

    table = cli(cluster, "client", "nodes")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()
    assert header.split()[-1] == "RUNS"
    assert row.endswith(f"  docker (null: {reason})")

    for args in (["--target", node_name], []):
        refused = cli(cluster, "task", "submit", "--container", "NULL", *args, "--", "true")
        assert refused.returncode == 1
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert f"node '{node_name}' cannot run --container NULL tasks: {reason}" in lines[0]
    hint = cli(cluster, "task", "submit", "--container", "null", "--", "true")
    assert hint.returncode != 0
    assert hint.stderr.strip().splitlines() == [
        "hakuriver.task: error: unknown environment 'null': did you mean NULL (run without a container)?"
    ]
    assert cli(cluster, "task", "list", "--json").stdout.count('"task_id"') == 0
