"""Task log files in the shared dir, where tasks can write: no Docker needed.

From the class, not a reproduction: whatever a task puts at a log path (a
symbolic link to a file or a directory, a FIFO, a device node, a socket, a
hard link, a directory; at the file or at its directory), the runner never
writes through it and the Host never serves it, never blocks on it, and the
file it points at is unchanged.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hakuriver import naming
from hakuriver.host.logs import read_log
from hakuriver.runner.executors.docker.logs import create_log, open_log
from hakuriver.safefiles import LOG_DIR_MODE, LOG_FILE_MODE, UnsafeFile

SECRET = b"secret-the-task-must-not-see\n"
TASK = 42


def _symlink_file(victim: Path, path: Path) -> None:
    path.symlink_to(victim)


def _symlink_dangling(victim: Path, path: Path) -> None:
    path.symlink_to(victim.parent / "not-there-yet")


def _fifo(victim: Path, path: Path) -> None:
    os.mkfifo(path)


def _hard_link(victim: Path, path: Path) -> None:
    os.link(victim, path)


def _socket(victim: Path, path: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()


def _device(victim: Path, path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null


def _directory(victim: Path, path: Path) -> None:
    path.mkdir()
    (path / "x").write_bytes(SECRET)


PLANTS: dict[str, Callable[[Path, Path], None]] = {
    "symlink": _symlink_file,
    "dangling symlink": _symlink_dangling,
    "fifo": _fifo,
    "hard link": _hard_link,
    "socket": _socket,
    "device": _device,
}


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    return d


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "shared" / "victim.txt"  # same file system: hard links work
    v.parent.mkdir(exist_ok=True)
    v.write_bytes(SECRET)
    v.chmod(0o600)
    return v


def within(seconds: float, fn: Callable[[], object]) -> object:
    """Run `fn` in a thread; fail if it blocks (a FIFO open would)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(fn).result(timeout=seconds)
    finally:
        pool.shutdown(wait=False)


def out_path(shared: Path) -> Path:
    return Path(naming.stdout_path(str(shared), TASK))


# ---------------------------------------------------------------- the Host
@pytest.mark.parametrize("kind", list(PLANTS) + ["directory"])
def test_the_host_never_serves_or_blocks_on_anything_but_a_regular_file(shared, victim, kind) -> None:
    path = out_path(shared)
    path.parent.mkdir()
    (PLANTS.get(kind) or _directory)(victim, path)
    if kind == "dangling symlink":
        (shared / "not-there-yet").write_bytes(SECRET)
    for offset, tail in ((0, None), (None, 5)):
        with pytest.raises(UnsafeFile) as info:
            within(5, lambda: read_log(str(path), offset, tail))
        assert info.value.status == 409 and SECRET.decode() not in info.value.message
    assert victim.read_bytes() == SECRET


def test_the_host_does_not_enter_a_log_dir_that_is_a_link(shared, victim, tmp_path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f"{TASK}.out").write_bytes(SECRET)
    (shared / "task_outputs").symlink_to(elsewhere)
    with pytest.raises(UnsafeFile, match="symbolic link"):
        read_log(str(out_path(shared)), 0, None)


def test_the_host_serves_a_regular_log_and_a_missing_one_is_empty(shared) -> None:
    assert read_log(str(out_path(shared)), 0, None) == (b"", 0)  # no task_outputs/ yet
    path = out_path(shared)
    path.parent.mkdir()
    assert read_log(str(path), 3, None) == (b"", 3)
    path.write_bytes(b"one\ntwo\nthree\n")
    assert read_log(str(path), 4, None) == (b"two\nthree\n", 14)
    assert read_log(str(path), None, 1) == (b"three\n", 14)


# -------------------------------------------------------------- the runner
@pytest.mark.parametrize("kind", list(PLANTS))
def test_a_new_tasks_log_replaces_whatever_was_planted_without_following_it(shared, victim, kind) -> None:
    path = out_path(shared)
    path.parent.mkdir()
    PLANTS[kind](victim, path)
    replaced = within(5, lambda: create_log(str(path)))
    assert replaced
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_size == 0
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == LOG_FILE_MODE
    assert victim.read_bytes() == SECRET and not (shared / "not-there-yet").exists()
    with within(5, lambda: open_log(str(path), TASK)) as fh:  # type: ignore[attr-defined]
        fh.write(b"the task's output\n")
    assert path.read_bytes() == b"the task's output\n" and victim.read_bytes() == SECRET


@pytest.mark.parametrize("kind", list(PLANTS) + ["foreign owner"])
def test_a_reopened_log_is_reused_only_if_it_is_the_runners_own_regular_file(shared, victim, kind) -> None:
    path = out_path(shared)
    create_log(str(path))
    with open_log(str(path), TASK) as fh:
        fh.write(b"before the restart\n")
    with open_log(str(path), TASK) as fh:  # the runner's own file: appended to
        fh.write(b"after\n")
    assert path.read_bytes() == b"before the restart\nafter\n"
    path.unlink()
    if kind == "foreign owner":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        path.write_bytes(b"planted by a task\n")
        os.chown(path, 65534, 65534)
    else:
        PLANTS[kind](victim, path)
    with within(5, lambda: open_log(str(path), TASK)) as fh:  # type: ignore[attr-defined]
        fh.write(b"replayed\n")
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()
    assert path.read_bytes() == b"replayed\n" and victim.read_bytes() == SECRET


def test_the_runner_makes_the_log_dirs_its_own_and_never_enters_a_linked_one(shared, tmp_path) -> None:
    old = os.umask(0o077)
    try:
        create_log(str(out_path(shared)))
    finally:
        os.umask(old)
    st = os.lstat(shared / "task_outputs")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == LOG_DIR_MODE and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(out_path(shared)).st_mode) == LOG_FILE_MODE
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (shared / "task_errors").symlink_to(elsewhere)
    err = Path(naming.stderr_path(str(shared), TASK))
    for action in (lambda: create_log(str(err)), lambda: open_log(str(err), TASK)):
        with pytest.raises(UnsafeFile, match="symbolic link"):
            action()
    assert list(elsewhere.iterdir()) == []


def test_a_directory_at_a_log_name_is_refused(shared) -> None:
    path = out_path(shared)
    path.parent.mkdir()
    path.mkdir()
    with pytest.raises(UnsafeFile, match="directory"):
        create_log(str(path))
