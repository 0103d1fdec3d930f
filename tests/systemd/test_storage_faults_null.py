"""A `--container NULL` task on a full shared dir, on a real systemd node: its
task_outputs/ is a 1 MiB tmpfs this test mounts in the node. The task's own
writes fail; the Runner sees the file system left full when the task ended
and flags the record, and once there is room the next task is clean."""

from __future__ import annotations

import pytest

from .sdcluster import SHARED, SdCluster

pytestmark = [pytest.mark.docker, pytest.mark.systemd]

OUTPUTS = f"{SHARED}/task_outputs"


def test_a_full_shared_dir_flags_a_null_task_and_the_next_one_is_clean(sd: SdCluster) -> None:
    warm = sd.submit(["true"])  # the log directories exist, as the runner made them
    assert sd.wait_final(warm)["state"] == "completed"
    uid, gid, mode = sd.node.exec(["stat", "-c", "%u %g %a", OUTPUTS]).stdout.split()
    mounted = sd.node.exec(
        ["mount", "-t", "tmpfs", "-o", f"size=1m,uid={uid},gid={gid},mode={mode}", "tmpfs", OUTPUTS], check=False
    )
    if mounted.rc != 0:
        pytest.skip(f"cannot mount a tmpfs in the node: {mounted.stderr.strip()}")
    try:
        big = sd.submit(["sh", "-c", "head -c 4194304 /dev/zero; echo tail-marker"])
        task = sd.wait_final(big)
        # The real end (head fails on its write error), and the flag next to it.
        assert task["state"] == "failed" and task["exit_code"] == 1, task
        flag = task["output_error"]
        assert flag is not None and "No space left on device (ENOSPC)" in flag, task
        assert "stdout holds 1M (1048576 bytes)" in flag, flag

        sd.node.exec(["rm", "-f", f"{OUTPUTS}/{big}.out"])
        ok = sd.submit(["sh", "-c", "echo fine"])
        task = sd.wait_final(ok)
        assert (task["state"], task["exit_code"], task["output_error"]) == ("completed", 0, None), task
        assert sd.logs(ok) == "fine\n"
    finally:
        sd.node.exec(["umount", OUTPUTS], check=False)
