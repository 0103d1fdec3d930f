"""ENOSPC on a small shared dir this test mounts (a 1 MiB tmpfs), through a real
Host and Runner: the task's record says its output is incomplete while its
state and exit code stay the real ones, and once there is room again the
next task runs with its whole output and no flag."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.smallfs import small_tmpfs

from .cluster import LocalCluster, remove_runner_containers

pytestmark = pytest.mark.docker

PRINT_4MIB = "import sys; sys.stdout.write('x' * (4 << 20)); print('tail-marker'); print('err-line', file=sys.stderr)"


def cli(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hakuriver.cli.task", "--config", str(cluster.host_config_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster._env(),
        check=False,
    )


def test_enospc_on_the_shared_dir_is_flagged_and_the_runner_goes_on(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, env_image: str, node_name: str
) -> None:
    root: Path = tmp_path_factory.mktemp("cluster")
    with small_tmpfs(root / "shared", size="1m", mode="1777"):
        cluster = LocalCluster(root=root)
        try:
            cluster.start_host()
            cluster.add_runner(node_name)
            [big] = cluster.submit(["python3", "-c", PRINT_4MIB], targets=[node_name])
            task = cluster.wait_final(big)
            # The real end, and the flag next to it.
            assert (task["state"], task["exit_code"], task["error"]) == ("completed", 0, None), task
            flag = task["output_error"]
            assert flag is not None and flag.startswith("stdout: No space left on device (ENOSPC) after "), flag
            out = cluster.shared / "task_outputs" / f"{big}.out"
            assert 0 < out.stat().st_size <= 1 << 20
            assert "tail-marker" not in cluster.stdout(big)

            shown = cli(cluster, "status", big)
            assert shown.returncode == 0, shown.stderr
            assert "INCOMPLETE: stdout: No space left on device (ENOSPC)" in shown.stdout
            listed = cli(cluster, "list")
            assert listed.returncode == 0, listed.stderr
            assert f"{big}  completed!" in listed.stdout
            assert "the output files are incomplete" in listed.stderr
            runner_log = (cluster.logs / f"runner-{node_name}.log").read_text()
            assert runner_log.count("but its output is incomplete") == 1

            # Room again: the runner runs the next task with its whole output, unflagged.
            out.unlink()
            [small] = cluster.submit(
                ["python3", "-c", "import sys; sys.stdout.write('y' * (256 << 10)); print('tail-marker')"],
                targets=[node_name],
            )
            task = cluster.wait_final(small)
            assert (task["state"], task["exit_code"], task["output_error"]) == ("completed", 0, None), task
            assert cluster.stdout(small) == "y" * (256 << 10) + "tail-marker\n"
        finally:
            cluster.shutdown()
            remove_runner_containers(docker_client, list(cluster.runners))
