"""`hakuriver.init launcher`: the printed steps, run as root on a node, let the Runner's
user reach the launcher through sudo and nothing else."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hakuriver.deploy import launcher_install

RUNNER_USER = "hkrunner"


def _init(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hakuriver.cli.init", *args], capture_output=True, text=True)


def test_files_are_the_package_generators_output(tmp_path: Path) -> None:
    config = tmp_path / "runner.toml"
    assert (
        _init(
            "config",
            "--output",
            str(config),
            "--shared-dir",
            str(tmp_path),
            "--local-temp-dir",
            "/tmp",
            "--runner-user",
            "labuser",
        ).returncode
        == 0
    )
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--user", RUNNER_USER, "--group", RUNNER_USER, "--output-dir", str(out)]
    result = _init("launcher", "--config", str(config), *flags, "--task-user", "alice", "--task-group", "lab")
    assert result.returncode == 0, result.stderr
    from hakuriver.config import read_config_file

    plan = launcher_install.install_plan(
        RUNNER_USER,
        launcher_install.launcher_config_for(
            read_config_file(config),
            runner_user=RUNNER_USER,
            runner_group=RUNNER_USER,
            task_users=["alice"],
            task_groups=["lab"],
        ),
    )
    for item in plan:
        local = out / Path(item.path).name
        assert local.read_text() == item.content
        assert local.stat().st_mode & 0o777 == item.mode
    allow = json.loads((out / "launcher.json").read_text())
    # --task-user accounts and environment.runner_user; never the runner's own user, which is
    # recorded (with its group) for the launcher to refuse.
    assert allow["task_users"] == ["alice", "labuser"]
    assert allow["task_groups"] == ["lab"]
    assert (allow["runner_user"], allow["runner_group"], allow["allow_privileged_users"]) == (RUNNER_USER,) * 2 + ([],)
    assert allow["shared_dirs"] == [str(tmp_path)]
    missing = _init("launcher", "--config", str(tmp_path / "nope.toml"), "--output-dir", str(out))
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1


def test_the_runner_group_is_needed_and_nobody_is_allowed_by_default(tmp_path: Path) -> None:
    config = tmp_path / "runner.toml"
    made = _init("config", "--output", str(config), "--shared-dir", str(tmp_path), "--local-temp-dir", "/tmp")
    assert made.returncode == 0, made.stderr
    unknown = _init("launcher", "--config", str(config), "--user", "no-such-hkr-user", "--output-dir", str(tmp_path))
    assert unknown.returncode == 1 and "pass --group" in unknown.stderr, unknown.stderr
    bare = _init(
        "launcher", "--config", str(config), "--user", RUNNER_USER, "--group", "hkr", "--output-dir", str(tmp_path)
    )
    assert bare.returncode == 0, bare.stderr
    assert "names no task accounts" in bare.stderr
    allow = json.loads((tmp_path / "launcher.json").read_text())
    assert (allow["task_users"], allow["task_groups"]) == ([], [])
    privileged = _init(
        "launcher",
        "--config",
        str(config),
        "--user",
        RUNNER_USER,
        "--group",
        "hkr",
        "--output-dir",
        str(tmp_path),
        "--task-user",
        "root",
        "--allow-privileged-user",
        "ops",
    )
    assert privileged.returncode == 0, privileged.stderr
    assert "the launcher will refuse tasks as 'root': user 'root' is root (uid 0)" in privileged.stderr
    assert "the launcher will refuse tasks as 'ops'" in privileged.stderr  # not allowed at all
    assert json.loads((tmp_path / "launcher.json").read_text())["allow_privileged_users"] == ["ops"]
    bad = _init(
        "launcher", "--config", str(config), "--group", "hkr", "--task-group", "a b", "--output-dir", str(tmp_path)
    )
    assert bad.returncode == 2 and "--task-group" in bad.stderr, bad.stderr


@pytest.mark.docker
@pytest.mark.systemd
def test_printed_steps_install_a_working_minimal_rule(hakuriver_node_factory: Any) -> None:
    node = hakuriver_node_factory("launcher")
    node.exec(["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", RUNNER_USER])
    node.exec(["install", "-d", "-o", RUNNER_USER, "/srv/shared", "/srv/temp", "/srv/out"])
    venv = "/opt/hakuriver/venv/bin"
    as_runner = ["runuser", "-u", RUNNER_USER, "--"]
    node.exec(
        as_runner
        + [
            f"{venv}/hakuriver.init",
            "config",
            "--output",
            "/srv/out/runner.toml",
            "--shared-dir",
            "/srv/shared",
            "--local-temp-dir",
            "/srv/temp",
        ]
    )
    printed = node.exec(
        as_runner
        + [f"{venv}/hakuriver.init", "launcher", "--config", "/srv/out/runner.toml", "--output-dir", "/srv/out"]
    ).stdout
    steps = [line.strip() for line in printed.splitlines()[printed.splitlines().index("next, as root:") + 1 :]]
    assert steps[-1] == "systemctl restart hakuriver-runner.service"
    for step in steps[:-1]:
        node.exec(shlex.split(step))
    info = node.exec(as_runner + ["sudo", "-n", "/usr/local/libexec/hakuriver/hakuriver-task-launcher", "info"])
    assert info.rc == 0
    # The rule allows the launcher and nothing else as root.
    for argv in (
        ["sudo", "-n", "/bin/sh", "-c", "id"],
        ["sudo", "-n", "systemctl", "status"],
        ["sudo", "-n", "/usr/bin/systemd-run", "--scope", "true"],
    ):
        refused = node.exec(as_runner + argv, check=False)
        assert refused.rc != 0, argv
    assert node.exec(
        ["stat", "-c", "%U %a", "/usr/local/libexec/hakuriver/hakuriver-task-launcher"]
    ).stdout.split() == ["root", "755"]
    assert node.exec(["stat", "-c", "%U %a", "/etc/sudoers.d/hakuriver"]).stdout.split() == ["root", "440"]
