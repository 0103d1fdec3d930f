"""The README's first command, run for real: a one-machine cluster and a sample task."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.procs import REPO, free_port

from .cluster import wait_until

pytestmark = pytest.mark.docker


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


def test_quickstart_runs_a_sample_task_and_stops(tmp_path: Path, env_image: str, docker_client: Any) -> None:
    env = dict(
        os.environ,
        HAKURIVER_QUICKSTART_DIR=str(tmp_path / "qs"),
        QS_HOST_PORT=str(free_port()),
        QS_RUNNER_PORT=str(free_port()),
    )
    env.pop("HAKURIVER_CONFIG", None)
    script = str(REPO / "scripts" / "quickstart.sh")
    pids = [tmp_path / "qs" / "host.pid", tmp_path / "qs" / "runner.pid"]
    started: list[int] = []
    try:
        run = subprocess.run(["bash", script], capture_output=True, text=True, timeout=600, env=env)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "Hello from HakuRiver: Python" in run.stdout
        assert "completed" in run.stdout
        config = tmp_path / "qs" / "config.toml"
        assert config.stat().st_mode & 0o777 == 0o600
        assert all(_alive(p) for p in pids)
        started = [int(p.read_text()) for p in pids]
        # A second run reuses the running cluster and config.
        again = subprocess.run(["bash", script], capture_output=True, text=True, timeout=300, env=env)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout[-2000:]
    finally:
        subprocess.run(["bash", script, "stop"], capture_output=True, text=True, timeout=60, env=env)
        for c in docker_client.containers.list(all=True, sparse=True, filters={"label": "org.hakuriver.task_id"}):
            if any(str(tmp_path) in str(m.get("Source")) for m in c.attrs.get("Mounts") or []):
                c.remove(force=True)

    def all_gone() -> bool:
        for pid in started:
            try:
                os.kill(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    assert started, "the quickstart never started its services"
    wait_until(all_gone, timeout=30, what="the quickstart services to stop")
