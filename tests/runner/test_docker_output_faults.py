"""DockerExecutor on a small shared dir this test mounts (a tmpfs): a write that
fails with ENOSPC is the result's `output_error`, next to the real exit; room
that comes back before the end lets the final replay complete the file."""

from __future__ import annotations

import os
import textwrap

import pytest

from hakuriver.models import TaskState
from tests.harness.polling import apoll
from tests.harness.smallfs import small_tmpfs
from tests.runner.dockerfix import *  # noqa: F403

pytestmark = [pytest.mark.docker, pytest.mark.timeout(180)]

WAIT_THEN_TAIL = textwrap.dedent(
    """
    import os, sys, time
    sys.stdout.write('x' * (2 << 20)); sys.stdout.flush()
    while not os.path.exists('/shared/release'): time.sleep(0.05)
    print('tail-marker'); sys.exit(3)
    """
)


async def test_enospc_is_the_results_output_error_and_the_exit_stays_real(executor, make_spec, task_dirs):
    shared, _ = task_dirs
    with small_tmpfs(shared, size="1m", mode="1777"):
        spec = make_spec(["python3", "-c", "import sys; sys.stdout.write('x' * (4 << 20)); sys.exit(3)"])
        handle = await executor.start(spec)
        result = await executor.wait(handle)
        await executor.destroy(handle)
        assert (result.state, result.exit_code, result.error) == (TaskState.FAILED, 3, "exited with code 3")
        assert result.output_error is not None
        assert result.output_error.startswith("stdout: No space left on device (ENOSPC) after "), result
        assert "stderr" not in result.output_error
        assert os.path.getsize(spec.stdout_path) <= 1 << 20


async def test_room_that_comes_back_before_the_end_completes_the_file(executor, make_spec, task_dirs):
    shared, _ = task_dirs
    with small_tmpfs(shared, size="4m", mode="1777"):
        filler = shared / "filler"
        filler.write_bytes(b"\0" * (3 << 20))
        spec = make_spec(["python3", "-c", WAIT_THEN_TAIL])
        handle = await executor.start(spec)
        # The first MiB fits, the rest of the 2 MiB does not: the watch hits ENOSPC.
        await apoll(lambda: os.statvfs(shared).f_bavail == 0, timeout=60, what="the shared dir to fill up")
        filler.unlink()
        (shared / "release").touch()
        result = await executor.wait(handle)
        await executor.destroy(handle)
        assert (result.state, result.exit_code, result.output_error) == (TaskState.FAILED, 3, None), result
        with open(spec.stdout_path) as fh:
            assert fh.read() == "x" * (2 << 20) + "tail-marker\n"
