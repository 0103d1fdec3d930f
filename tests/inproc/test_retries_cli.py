"""`hakuriver.task submit --retries` and `status` against the real Host and Runner
apps (in a thread of their own): a task whose start fails on the node is run
again, and `status` lists each attempt."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hakuriver.cli import task as task_cli
from tests.harness.polling import poll

from .cluster import ThreadedCluster
from .test_drain_cli import write_config

pytestmark = pytest.mark.usefixtures("cli_env")


def test_submit_with_retries_then_status_lists_the_attempts(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    cluster.add_runner("n1")
    config = write_config(tmp_path / "user.toml", cluster, cluster.token)

    def task(*argv: str) -> int:
        return task_cli.main(["--config", config, *argv])

    # fail-start: the runner cannot start it, a node-side failure: retried twice, then failed.
    assert task("submit", "--retries", "2", "--wait", "--", "fake", "fail-start") == 1
    out, _ = capsys.readouterr()
    task_id = out.splitlines()[0]
    assert task("status", task_id) == 0
    out, _ = capsys.readouterr()
    rows = dict(re.match(r"^(\S.*?)\s{2,}(.*)$", line).groups() for line in out.splitlines())  # type: ignore[union-attr]
    assert (rows["state"], rows["attempt"], rows["retries"]) == ("failed", "3 of 3", "2")
    assert re.fullmatch(r"failed on n1, never started, \S+ \S+: .*could not start.*", rows["attempt 1"]), rows

    assert rows["attempt 2"].startswith("failed on n1, ")

    assert task("status", task_id, "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["retries"], shown["retry_on_exit"], shown["attempt"]) == (2, False, 3)
    assert [a["attempt"] for a in shown["attempts"]] == [1, 2]

    # A user's non-zero exit is the command's answer: not retried without --retry-on-exit.
    assert task("submit", "--retries", "2", "--wait", "--", "fake", "exit", "3") == 1
    task_id = capsys.readouterr().out.splitlines()[0]
    assert cluster.task(task_id)["attempt"] == 1


def test_logs_reads_each_attempts_own_output(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    cluster.add_runner("n1")
    config = write_config(tmp_path / "user.toml", cluster, cluster.token)

    def task(*argv: str) -> int:
        return task_cli.main(["--config", config, *argv])

    assert task("submit", "--retries", "1", "--retry-on-exit", "--wait", "--", "fake", "exit", "3") == 1
    task_id = capsys.readouterr().out.splitlines()[0]
    assert cluster.task(task_id)["attempt"] == 2
    # Attempt 1 wrote ID.out, attempt 2 its own ID.attempt2.out.
    first = cluster.inner.shared / "task_outputs" / f"{task_id}.out"
    assert (cluster.inner.shared / "task_outputs" / f"{task_id}.attempt2.out").exists()
    assert first.read_text() == f"fake task {task_id}: fake exit 3\n"
    first.write_text("attempt one's words\n")  # so that what `--attempt 1` prints is told apart

    assert task("logs", task_id, "--attempt", "1") == 0
    assert capsys.readouterr().out == "attempt one's words\n"
    for current in ((), ("--attempt", "2")):
        assert task("logs", task_id, *current) == 0
        assert capsys.readouterr().out == f"fake task {task_id}: fake exit 3\n"
    assert task("logs", task_id, "--stderr", "--attempt", "1") == 0
    assert capsys.readouterr().out == f"fake task {task_id}: stderr\n"

    assert task("logs", task_id, "--attempt", "3") != 0
    _, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "has no attempt 3 (it is at attempt 2)" in err, err
    assert task("logs", task_id, "--attempt", "0") == 2
    assert "--attempt: '0' must be at least 1" in capsys.readouterr().err


def test_following_an_earlier_attempt_ends_with_its_output(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    runner = cluster.add_runner("n1", hold_end=True)
    config = write_config(tmp_path / "user.toml", cluster, cluster.token)
    status, body = cluster.api(
        "POST", "/api/tasks", {"command": ["fake", "exit", "3"], "retries": 1, "retry_on_exit": True}
    )
    [task_id] = body["task_ids"]
    cluster.wait_state(task_id, "running")
    # The node drained: attempt 2 waits pending once attempt 1 has ended, so the task is not final.
    assert cluster.api("POST", "/api/nodes/n1/drain", {})[0] == 200
    runner.docker.release_end(task_id)
    poll(lambda: cluster.task(task_id)["attempt"] == 2, timeout=20, what="attempt 2 to be queued")
    assert cluster.task(task_id)["state"] == "pending"

    # Attempt 1 has ended: --follow prints its output and returns, the task still unfinished.
    assert task_cli.main(["--config", config, "logs", task_id, "--attempt", "1", "--follow"]) == 0
    assert capsys.readouterr().out == f"fake task {task_id}: fake exit 3\n"
    assert cluster.task(task_id)["state"] == "pending"
    # Attempt 2 has written nothing yet.
    assert task_cli.main(["--config", config, "logs", task_id]) == 0
    assert capsys.readouterr().out == ""

    assert cluster.api("POST", "/api/nodes/n1/resume", {})[0] == 200
    assert cluster.wait_final(task_id)["attempt"] == 2
    for which in ("1", "2"):
        assert task_cli.main(["--config", config, "logs", task_id, "--attempt", which]) == 0
        assert capsys.readouterr().out == f"fake task {task_id}: fake exit 3\n"
    assert (cluster.inner.shared / "task_outputs" / f"{task_id}.attempt2.out").exists()
