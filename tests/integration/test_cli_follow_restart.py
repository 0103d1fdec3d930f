"""`hakuriver.task logs --follow` across a Host restart, with real processes."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from hakuriver.cli.task import RETRY_NOTE
from tests.harness.polling import poll

from .cluster import LocalCluster

pytestmark = pytest.mark.docker

# Three lines, then wait for a file in the shared dir, then three more.
SCRIPT = """\
import os, sys, time
for i in range(3):
    print('before', i, flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.05)
for i in range(3):
    print('after', i, flush=True)
"""


def test_follow_survives_a_host_restart_and_prints_each_line_once(cluster: LocalCluster, node_name: str, tmp_path):
    cluster.add_runner(node_name)
    release = cluster.shared / "release-follow"
    [task_id] = cluster.submit(["python3", "-c", SCRIPT, "/shared/release-follow"], targets=[node_name])
    cluster.wait_state(task_id, "running")
    out_path, err_path = tmp_path / "follow.out", tmp_path / "follow.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        follow = subprocess.Popen(
            [sys.executable, "-m", "hakuriver.cli.task", "--config", str(cluster.host_config_path)]
            + ["logs", "--follow", "--interval", "0.1", task_id],
            stdout=out,
            stderr=err,
            env=cluster._env(),
        )
    try:
        poll(lambda: out_path.read_text().count("\n") == 3, timeout=60, what="the first three lines")
        cluster.stop_host(signal.SIGKILL)
        poll(lambda: RETRY_NOTE in err_path.read_text(), timeout=30, what="the follower to notice")
        assert follow.poll() is None, err_path.read_text()
        cluster.host_proc.start()
        cluster.wait_host_up()
        release.touch()
        assert follow.wait(timeout=120) == 0, err_path.read_text()
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert out_path.read_text() == "".join(f"before {i}\n" for i in range(3)) + "".join(
        f"after {i}\n" for i in range(3)
    )
    assert err_path.read_text() == RETRY_NOTE + "\n"
    assert cluster.task(task_id)["state"] == "completed"
