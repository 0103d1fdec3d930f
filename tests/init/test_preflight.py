"""`hakuriver.init` checks what it can before it writes anything: homes, directories, the
database directory, the launcher's state dir, the unit's user and group."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver.deploy import preflight

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to act for another user)")


def _init(*args: str, home: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env.pop("HAKURIVER_CONFIG", None)
    if home is not None:
        env["HOME"] = home
    return subprocess.run([sys.executable, "-m", "hakuriver.cli.init", *args], capture_output=True, text=True, env=env)


def _config(tmp_path: Path, *, shared: Path, db: Path, temp: Path) -> Path:
    path = tmp_path / "c.toml"
    made = _init(
        "config",
        "--output",
        str(path),
        "--shared-dir",
        str(shared),
        "--db-file",
        str(db / "host.db"),
        "--local-temp-dir",
        str(temp),
    )
    assert made.returncode == 0, made.stderr
    return path


def _lines(text: str) -> list[str]:
    return text.strip().splitlines()


def test_config_into_a_missing_home_says_so(tmp_path: Path) -> None:
    home = tmp_path / "no-such-home"
    result = _init("config", home=str(home))
    assert result.returncode == 1
    [line] = _lines(result.stderr)
    assert line.startswith("hakuriver.init: error: the home ")
    assert f"{home} of user " in line and "useradd --create-home" in line and "--output PATH" in line
    assert not home.exists()


def test_config_notes_the_directories_it_names_that_are_missing(tmp_path: Path) -> None:
    result = _init(
        "config",
        "--output",
        str(tmp_path / "c.toml"),
        "--shared-dir",
        str(tmp_path / "shared"),
        "--db-file",
        str(tmp_path / "db" / "host.db"),
        "--local-temp-dir",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    notes = _lines(result.stderr)
    assert len(notes) == 2, notes
    assert all(n.startswith("hakuriver.init: note: ") for n in notes)
    assert f"paths.shared_dir {tmp_path / 'shared'} " in notes[0]
    assert f"database.db_file's directory {tmp_path / 'db'} " in notes[1]


def test_service_notes_each_missing_directory_once(tmp_path: Path) -> None:
    config = _config(tmp_path, shared=tmp_path / "shared", db=tmp_path / "db", temp=tmp_path / "temp")
    result = _init("service", "--all", "--config", str(config), "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    notes = [n for n in _lines(result.stderr) if "does not exist" in n]
    assert sum("paths.shared_dir" in n for n in notes) == 1, notes
    assert sum(f"{tmp_path / 'db'} " in n for n in notes) == 1, notes
    assert sum(f"paths.local_temp_dir {tmp_path / 'temp'} " in n for n in notes) == 1, notes
    assert len(notes) == len(set(notes))


def test_service_notes_missing_log_dirs_in_the_shared_dir(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / "task_outputs").mkdir(parents=True)
    config = _config(tmp_path, shared=shared, db=tmp_path, temp=tmp_path)
    result = _init("service", "--host", "--config", str(config), "--print")
    assert result.returncode == 0, result.stderr
    assert f"{shared / 'task_errors'} does not exist yet" in result.stderr
    assert f"{shared / 'hakuriver-containers'} does not exist yet" in result.stderr
    assert "task_outputs does not exist" not in result.stderr


@as_root
def test_service_refuses_a_db_dir_its_user_cannot_write(tmp_path: Path) -> None:
    db = tmp_path / "db"
    db.mkdir(mode=0o755)  # root's: nobody cannot create host.db there
    tmp_path.chmod(0o755)
    config = _config(tmp_path, shared=tmp_path, db=db, temp=tmp_path)
    result = _init("service", "--host", "--config", str(config), "--user", "nobody", "--output-dir", str(tmp_path))
    assert result.returncode == 1
    [line] = _lines(result.stderr)
    assert f"error: database.db_file's directory: user nobody cannot write {db}" in line
    assert not (tmp_path / "hakuriver-host.service").exists()
    db.chmod(0o1777)
    again = _init("service", "--host", "--config", str(config), "--user", "nobody", "--output-dir", str(tmp_path))
    assert again.returncode == 0, again.stderr


@as_root
def test_service_user_brings_its_primary_group(tmp_path: Path) -> None:
    config = _config(tmp_path, shared=tmp_path, db=tmp_path, temp=tmp_path)
    tmp_path.chmod(0o1777)
    result = _init("service", "--host", "--config", str(config), "--user", "nobody", "--print")
    assert result.returncode == 0, result.stderr
    assert "User=nobody\n" in result.stdout
    assert "Group=nogroup\n" in result.stdout  # nobody's, never the invoking root's
    chosen = _init("service", "--host", "--config", str(config), "--user", "nobody", "--group", "root", "--print")
    assert "Group=root\n" in chosen.stdout


def test_service_refuses_a_user_that_does_not_exist(tmp_path: Path) -> None:
    config = _config(tmp_path, shared=tmp_path, db=tmp_path, temp=tmp_path)
    result = _init("service", "--runner", "--config", str(config), "--user", "no-such-hkr-user", "--print")
    assert (result.returncode, result.stdout) == (1, "")
    [line] = _lines(result.stderr)
    assert line == (
        "hakuriver.init: error: --user no-such-hkr-user: no such user on this machine; "
        "create it first (useradd --system ...)"
    )


@pytest.mark.parametrize("roles, flag", [("--host", "--runner-config"), ("--runner", "--host-config")])
def test_service_refuses_a_config_flag_for_a_unit_it_does_not_write(tmp_path: Path, roles: str, flag: str) -> None:
    config = _config(tmp_path, shared=tmp_path, db=tmp_path, temp=tmp_path)
    result = _init("service", roles, flag, str(config), "--print")
    assert result.returncode == 2
    [line] = _lines(result.stderr)
    assert f"error: {flag} applies to the " in line


@as_root
def test_launcher_as_root_needs_the_runner_user(tmp_path: Path) -> None:
    config = _config(tmp_path, shared=tmp_path, db=tmp_path, temp=tmp_path)
    result = _init("launcher", "--config", str(config), "--task-user", "alice", "--output-dir", str(tmp_path))
    assert result.returncode == 2
    [line] = _lines(result.stderr)
    assert line.startswith("hakuriver.init: error: run as root, pass --user: the account the Runner service runs as")
    assert not (tmp_path / "launcher.json").exists()


def test_launcher_refuses_a_state_dir_the_launcher_would_refuse(tmp_path: Path) -> None:
    config = _config(tmp_path, shared=tmp_path, db=tmp_path, temp=tmp_path)
    loose = tmp_path / "var-lib-hakuriver"
    loose.mkdir()
    loose.chmod(0o777)  # like a service user's home: not root's alone
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--config", str(config), "--user", "nobody", "--group", "nogroup", "--output-dir", str(out)]
    result = _init("launcher", *flags, "--state-dir", str(loose / "task-status"))
    assert result.returncode == 1
    [line] = _lines(result.stderr)
    assert f"{loose} must be owned by root and writable by root only" in line
    assert "the launcher would refuse every task" in line
    assert list(out.iterdir()) == []


def test_state_dir_check_is_the_launchers_own() -> None:
    # Missing parts are the launcher's to create: only what exists is checked.
    assert preflight.state_dir_problem("/usr/no-such-hakuriver-dir/task-status") is None
    problem = preflight.state_dir_problem("/tmp/no-such-hakuriver-dir/task-status")
    assert problem is not None and "/tmp must be owned by root and writable by root only" in problem


def _st(uid: int, gid: int, mode: int) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 0, uid, gid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "st, writable",
    [
        (_st(1000, 1000, 0o755), True),  # its own
        (_st(1000, 1000, 0o555), False),
        (_st(0, 50, 0o775), True),  # through a supplementary group
        (_st(0, 51, 0o775), False),
        (_st(0, 0, 0o1777), True),
        (_st(0, 0, 0o755), False),
        (_st(0, 0, 0o773), True),
        (_st(0, 0, 0o772), False),  # writable but not searchable
    ],
)
def test_may_write_by_mode_bits(st: os.stat_result, writable: bool) -> None:
    account = preflight.Account("u", 1000, 1000, "/home/u", frozenset({1000, 50}))
    assert preflight.may_write(st, account) is writable
    assert preflight.may_write(st, preflight.Account("root", 0, 0, "/root", frozenset({0})))
