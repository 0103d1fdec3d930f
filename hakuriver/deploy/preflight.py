"""Up-front checks for `hakuriver.init`: what would stop the services it sets up.

`hakuriver.init config` and `hakuriver.init service` run before anything starts, so
they are the cheapest place to say "this directory is missing" or "this user cannot
write there": the alternative is a unit that fails with status=200/CHDIR, or a line
in the journal after `systemctl enable --now`.

Each check returns `Finding`s: a *note* for something that may simply not be made
yet (a directory the admin creates afterwards), an *error* for something that is
already there and wrong (a database directory the service's user cannot write, a
launcher state dir the launcher will refuse). The functions only read the file
system and the user database, through arguments where a test needs to replace them.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .. import launcher

NOTE: Literal["note"] = "note"
ERROR: Literal["error"] = "error"

LOG_SUBDIRS = ("task_outputs", "task_errors")
"""The shared dir's log directories (the Runner's Docker tasks and the launcher write there)."""


@dataclass(frozen=True)
class Finding:
    level: Literal["note", "error"]
    message: str


@dataclass(frozen=True)
class Account:
    """A user as the services will run: its uid, every gid it has, its home."""

    name: str
    uid: int
    gid: int
    home: str
    gids: frozenset[int]


def lookup_account(name: str) -> Account | None:
    """`name` from this machine's user database, or None when it has no such user."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    try:
        gids = frozenset(os.getgrouplist(name, pw.pw_gid))
    except OSError:
        gids = frozenset({pw.pw_gid})
    return Account(name, pw.pw_uid, pw.pw_gid, pw.pw_dir, gids)


def primary_group(name: str) -> str:
    """The name of `name`'s primary group. ValueError when the user or its group
    has no entry: systemd would refuse the unit (or, for Group= left to the
    invoker's group, run the service with a group it was never meant to have)."""
    try:
        gid = pwd.getpwnam(name).pw_gid
    except KeyError:
        raise ValueError(f"user {name!r} does not exist on this machine") from None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        raise ValueError(f"the primary group (gid {gid}) of {name!r} has no name; pass --group") from None


def may_write(st: os.stat_result, account: Account) -> bool:
    """Whether `account` may create entries in the directory `st` describes, by its
    mode bits (write and search), as the kernel decides without ACLs. Root may."""
    if account.uid == 0:
        return True
    mode = st.st_mode
    if st.st_uid == account.uid:
        need = stat.S_IWUSR | stat.S_IXUSR
    elif st.st_gid in account.gids:
        need = stat.S_IWGRP | stat.S_IXGRP
    else:
        need = stat.S_IWOTH | stat.S_IXOTH
    return mode & need == need


def nearest_existing(path: str, exists: Callable[[str], bool] = os.path.lexists) -> str:
    """`path` itself or the closest directory above it that exists."""
    current = os.path.abspath(path)
    while not exists(current) and current != "/":
        current = os.path.dirname(current)
    return current


def missing_home(account: Account) -> Finding | None:
    """The account's home, when it does not exist (a `useradd --system` without
    `--create-home`): `~/.hakuriver` cannot be written there."""
    if os.path.isdir(account.home):
        return None
    return Finding(
        ERROR,
        f"the home {account.home} of user {account.name} does not exist; "
        "create it (useradd --create-home) or pass --output PATH",
    )


def state_dir_problem(state_dir: str = launcher.DEFAULT_STATE_DIR) -> str | None:
    """Why the launcher would refuse `state_dir`, or None. The launcher itself
    (running as root) makes the missing part, so only what exists already is
    checked, with the launcher's own rule, so that the two never disagree."""
    try:
        launcher.check_root_owned(nearest_existing(state_dir), "the launcher's state dir " + state_dir)
    except (launcher.Refused, launcher.Failed) as exc:
        # The launcher's words, minus its own "refusing to act as root" (it is not acting yet).
        return str(exc).removesuffix("; refusing to act as root") + "; the launcher would refuse every task"
    return None


def _dir_findings(key: str, path: str, source: str, account: Account | None, *, must_write: bool) -> list[Finding]:
    if not os.path.isdir(path):
        return [
            Finding(NOTE, f"{key} {path} (from {source}) does not exist here; the service will not start until it does")
        ]
    if must_write and account is not None and not may_write(os.stat(path), account):
        st = os.stat(path)
        return [
            Finding(
                ERROR,
                f"{key}: user {account.name} cannot write {path} (owner uid {st.st_uid}, gid {st.st_gid}, "
                f"mode {stat.S_IMODE(st.st_mode):04o}); chown it to {account.name} or pick another directory",
            )
        ]
    return []


def service_findings(config: Any, role: str, account: Account | None) -> list[Finding]:
    """What would stop the `role` ("host" or "runner") service of `config` from
    starting on this machine as `account` (None: unknown here, skip the user checks)."""
    source = config.source or "the config"
    found: list[Finding] = []
    shared = config.paths.shared_dir
    if shared:
        found += _dir_findings("paths.shared_dir", shared, source, account, must_write=False)
        if os.path.isdir(shared):
            for sub in (*LOG_SUBDIRS, config.docker.container_dir):
                path = os.path.join(shared, sub)
                if not os.path.isdir(path):
                    found.append(
                        Finding(
                            NOTE,
                            f"{path} does not exist yet; create it owned by the service's user "
                            f"({account.name if account else 'the unit User='}), mode 0755",
                        )
                    )
    if role == "host" and config.database.db_file:
        db_dir = os.path.dirname(os.path.abspath(os.path.expanduser(config.database.db_file)))
        found += _dir_findings("database.db_file's directory", db_dir, source, account, must_write=True)
    docker_gid = _group_gid("docker")
    if account is not None and account.uid != 0 and docker_gid is not None and docker_gid not in account.gids:
        # Without it the services log "Permission denied" on the Docker socket at start.
        found.append(
            Finding(
                NOTE,
                f"user {account.name} is not in the docker group, so the services cannot use Docker "
                f"(usermod -aG docker {account.name}; needed for Docker tasks and environments)",
            )
        )
    if role == "runner":
        if config.paths.local_temp_dir:
            temp = config.paths.local_temp_dir
            found += _dir_findings("paths.local_temp_dir", temp, source, account, must_write=False)
        if account is not None and not config.runner.state_dir and not os.path.isdir(account.home):
            found.append(
                Finding(
                    NOTE,
                    f"the home {account.home} of user {account.name} does not exist: the Runner keeps its state in "
                    "~/.hakuriver/state; create the home or set runner.state_dir",
                )
            )
        problem = state_dir_problem()
        if problem:
            found.append(Finding(NOTE, f"--container NULL tasks will fail here: {problem}"))
    return found


def _group_gid(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def path_findings(values: Iterable[tuple[str, str]], source: str) -> list[Finding]:
    """Notes for the directories a new config names that do not exist yet:
    `values` holds (key, directory) pairs."""
    return [
        Finding(NOTE, f"{key} {path} (in {source}) does not exist yet; create it before starting the services")
        for key, path in values
        if path and not os.path.isdir(path)
    ]


def unique(findings: Sequence[Finding]) -> list[Finding]:
    """Each finding once, in first-seen order (two units often share a directory)."""
    return list(dict.fromkeys(findings))
