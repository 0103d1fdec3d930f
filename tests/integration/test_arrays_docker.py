"""Task arrays on a real Host and Runner with real Docker tasks, through the CLI.

`task submit --array 0-3%1` makes one batch of four tasks; each container sees
its own HAKURIVER_ARRAY_INDEX and the batch id; one runs at a time (the node
has room for two single-core tasks, so only the `%1` holds the rest back);
`task wait BATCH` and `task list --batch BATCH` work on the whole set, and
`task kill BATCH` ends what is left.
"""

from __future__ import annotations

import pytest

from .cluster import LocalCluster, wait_until
from .test_cli_end_to_end import cli

pytestmark = pytest.mark.docker

SHOW = 'echo "index=$HAKURIVER_ARRAY_INDEX batch=$HAKURIVER_BATCH_ID task=$HAKURIVER_TASK_ID"; sleep 1'


def most_at_once(tasks: list[dict]) -> int:
    """The most tasks whose [started_at, finished_at] intervals overlap."""
    edges = sorted([(t["started_at"], 1) for t in tasks] + [(t["finished_at"], -1) for t in tasks])
    running = peak = 0
    for _, step in edges:  # an end sorts before a start at the same instant
        running += step
        peak = max(peak, running)
    return peak


def test_an_array_runs_each_index_in_its_own_container_n_at_a_time(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    sub = cli(cluster, "task", "submit", "--array", "0-3%1", "--", "sh", "-c", SHOW)
    assert sub.returncode == 0, sub.stderr
    batch = cluster.api("GET", "/api/tasks", None)[1]["tasks"][0]["batch_id"]
    waited = cli(cluster, "task", "wait", batch, timeout=180)
    assert waited.returncode == 0, waited.stdout + waited.stderr

    status, body = cluster.api("GET", f"/api/tasks?batch={batch}&limit=100")
    assert status == 200, body
    tasks = sorted(body["tasks"], key=lambda t: t["array_index"])
    assert [t["array_index"] for t in tasks] == list(range(4))
    assert {t["state"] for t in tasks} == {"completed"}, tasks
    for t in tasks:
        assert cluster.stdout(t["task_id"]) == f"index={t['array_index']} batch={batch} task={t['task_id']}\n"
    # The %1 held on the real runner: never two containers at once.
    assert most_at_once(tasks) == 1, [(t["started_at"], t["finished_at"]) for t in tasks]

    listed = cli(cluster, "task", "list", "--batch", batch)
    assert listed.returncode == 0, listed.stderr
    assert all(t["task_id"] in listed.stdout for t in tasks), listed.stdout


def test_killing_a_batch_ends_running_and_pending_members(cluster: LocalCluster, node_name: str) -> None:
    cluster.add_runner(node_name)
    ids = cluster.submit(["sleep", "600"], array="0-3%1")
    cluster.wait_state(ids[0], "running")
    batch = cluster.task(ids[0])["batch_id"]
    killed = cli(cluster, "task", "kill", batch)
    assert killed.returncode == 0, killed.stdout + killed.stderr

    def ended() -> list[str] | None:
        states = [cluster.task(i)["state"] for i in ids]
        return states if all(s in ("killed", "cancelled") for s in states) else None

    states = wait_until(ended, timeout=60, what="every member of the batch ended")
    assert states[0] == "killed", states  # the one that ran was stopped, the rest never started
    assert all(cluster.task(i)["started_at"] is None for i in ids[1:])
