"""scripts/quickstart.sh's arguments, run with bash: none of these starts or installs anything."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness.procs import REPO

SCRIPT = str(REPO / "scripts" / "quickstart.sh")


def quickstart(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HAKURIVER_QUICKSTART_DIR=str(tmp_path / "qs"), HOME=str(tmp_path / "home"))
    env.pop("HAKURIVER_CONFIG", None)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=60, env=env)


def test_help_prints_usage_and_exits_0(tmp_path: Path):
    for flag in ("--help", "-h"):
        run = quickstart(tmp_path, flag)
        assert run.returncode == 0, run.stderr
        assert "bash scripts/quickstart.sh status" in run.stdout
        assert "python:3.12-alpine" in run.stdout  # what the written config really says
        assert run.stderr == ""
    assert not (tmp_path / "qs").exists()


def test_unknown_arguments_are_a_usage_error(tmp_path: Path):
    for args in (["bogus"], ["--frobnicate"], ["status", "extra"], ["stop", "now"]):
        run = quickstart(tmp_path, *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        [line] = run.stderr.splitlines()
        assert line.startswith("quickstart.sh: error: ")
        assert run.stdout == ""
    assert not (tmp_path / "qs").exists()


def test_status_without_a_cluster_starts_nothing(tmp_path: Path):
    run = quickstart(tmp_path, "status")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["[quickstart] host not running", "[quickstart] runner not running"]
    assert not (tmp_path / "qs").exists()


def test_status_reports_a_live_service_by_its_pid_file(tmp_path: Path):
    qs = tmp_path / "qs"
    qs.mkdir()
    # status looks only at the pid files: a live pid is "running", a stale one is not (and the
    # nodes table is asked for only when the Host runs).
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (qs / "runner.pid").write_text(f"{sleeper.pid}\n")
        (qs / "host.pid").write_text("999999999\n")  # stale: no such process
        run = quickstart(tmp_path, "status")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "[quickstart] host not running",
        f"[quickstart] runner running (pid {sleeper.pid}, log {qs}/runner.log)",
    ]
