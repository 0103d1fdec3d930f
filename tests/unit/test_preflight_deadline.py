"""The launcher's preflight child belongs to the task's user, who may stop it.

`preflight_as_user` forks a child that becomes the task's user and opens the
log files. That user can send the child SIGSTOP (same uid), or hang it in a
file system they mounted. Either way the start, which holds the node's start
lock, must fail within `PREFLIGHT_SECONDS` and leave no process behind, and a
child stopped after its answer must still be reaped. Runs as root (the child
drops to `nobody`); skipped otherwise.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver import launcher as L

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the preflight child drops to another user: needs root")


@pytest.fixture
def shared() -> Iterator[Path]:
    """A shared dir `nobody` may enter and write logs in."""
    path = Path(tempfile.mkdtemp(prefix="hkr-preflight-"))
    try:
        path.chmod(0o755)
        logs = path / "logs"
        logs.mkdir()
        nobody = pwd.getpwnam("nobody")
        os.chown(logs, nobody.pw_uid, nobody.pw_gid)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _plan(shared: Path) -> L.TaskPlan:
    nobody = pwd.getpwnam("nobody")
    return L.TaskPlan(
        user="nobody",
        uid=nobody.pw_uid,
        gid=nobody.pw_gid,
        cwd=str(shared),
        stdout=str(shared / "logs" / "1.out"),
        stderr=str(shared / "logs" / "1.err"),
        numactl=None,
        numa=None,
        argv=["/bin/true"],
        env={},
    )


def _gone(pid: int) -> bool:
    """`pid` is neither running, stopped, nor a zombie left unreaped."""
    return not os.path.exists(f"/proc/{pid}")


def test_a_child_stopped_before_its_answer_fails_the_start_and_is_killed(
    shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = shared / "child.pid"

    def stopped(plan: L.TaskPlan, numactl: str | None, fds: list[int]) -> str:
        pid_file.write_text(str(os.getpid()))  # as nobody: the dir is 0777
        os.kill(os.getpid(), signal.SIGSTOP)  # what the task's user can do to it
        return ""

    shared.chmod(0o777)  # the child (nobody) writes its pid here
    monkeypatch.setattr(L, "_preflight_child", stopped)
    monkeypatch.setattr(L, "PREFLIGHT_SECONDS", 0.5)
    with pytest.raises(L.Failed, match=r"preflight as user nobody did not answer within 0.5s .*it was killed"):
        L.preflight_as_user(_plan(shared))
    pid = int(pid_file.read_text())
    assert _gone(pid), f"the stopped preflight child {pid} is still there"


def test_a_child_stopped_after_its_answer_is_still_reaped(shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_exit = os._exit
    pid_file = shared / "child.pid"
    shared.chmod(0o777)

    real_child = L._preflight_child

    def child(plan: L.TaskPlan, numactl: str | None, fds: list[int]) -> str:
        pid_file.write_text(str(os.getpid()))  # before its answer: the parent kills it after
        return real_child(plan, numactl, fds)

    def stop_then_exit(code: int) -> None:  # only the child reaches os._exit
        os.kill(os.getpid(), signal.SIGSTOP)
        real_exit(code)

    monkeypatch.setattr(L, "_preflight_child", child)
    monkeypatch.setattr(os, "_exit", stop_then_exit)
    monkeypatch.setattr(L, "PREFLIGHT_SECONDS", 5.0)
    out, err = L.preflight_as_user(_plan(shared))
    try:
        assert os.fstat(out).st_uid == pwd.getpwnam("nobody").pw_uid  # the answer came through
    finally:
        os.close(out)
        os.close(err)
    assert _gone(int(pid_file.read_text()))
