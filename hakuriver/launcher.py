#!/usr/bin/python3 -IS
"""hakuriver-task-launcher: the only program a HakuRiver runner may run as root.

Installed root-owned (0755, in a root-owned directory such as
/usr/local/libexec/hakuriver/) and allowed by the sudoers drop-in that
`hakuriver.deploy.sudoers.render_sudoers` writes. As a module,
`hakuriver.launcher`, it is also what the runner's systemd executor and
the install-time generators read its paths and builders from; it stays
one stdlib-only file so that it can be installed as one root-owned file. It runs with the system
`/usr/bin/python3 -IS` (isolated, and without `site`: no site-packages, no .pth
files on its path), imports the standard library only, and never the
runner's (user-writable) virtualenv. Its settings come from a root-owned
allow-list (`/etc/hakuriver/launcher.json`, see
`hakuriver.deploy.launcher_install`).

Every task is a transient systemd *service* `hakuriver-task-<id>.service`
(not a scope: a scope's exit status is seen only by the systemd-run client),
started with one StartTransientUnit call on the manager's private socket
(`SystemdBus`, `unit_properties`), or through systemd-run where that cannot be.
The launcher builds every property, systemd-run and systemctl argv itself, as
lists; no shell ever sees an argument, and nothing the caller sends becomes a
systemd property except validated numbers, paths and ids from the allow-list and
the account database, and the task's own argv and environment: those run only as
its user, and PID 1 writes them into the transient unit's file escaped (the
daemon-reload test in tests/systemd checks that a newline starts no new setting).

Subcommands (caller: the runner, through `sudo -n`):

  start              JSON task request on stdin; starts the unit and prints
                     {"unit": ..., "user": ..., "state_dir": ...}
  kill ID SIGNAL     signal every process of a running task's unit
  pause ID           SIGSTOP every process of the unit
  resume ID          SIGCONT every process of the unit
  cleanup ID         stop the unit if it still runs, reset-failed, drop the status file
  status ID          the unit's state and recorded exit status, as JSON (no root needed)
  info               version and allow-list, as JSON
  serve              answer the subcommands above, one line of JSON each
                     way on stdin/stdout, until stdin ends (see `cmd_serve`)

Run by systemd inside the unit (refused when started through sudo):

  exec SPEC...       as the task's user, in units started through systemd-run:
                     open the output files, chdir to the shared dir, set the
                     task's environment, exec the argv (units started on the
                     bus run setpriv and env instead)
  poststop ID [DIR]  as root (ExecStopPost=): record the exit status and the
                     cgroup's OOM-kill count in <DIR>/<id>.json (DIR: the state
                     dir, which the unit names; without it, read from the config).
                     Kept for units an older launcher started: this one gives
                     its units `POSTSTOP_SCRIPT`, the same steps in dash.

Start-up cost matters: a unit started through systemd-run starts this program
again (`exec` in the unit), so `exec` imports nothing
that is not built into the interpreter: no `json` or `re` (which imports
`enum`; names are checked with `_Word`), no `signal` (`_signal`), no config;
the exec spec is marshal's. Tools are run with posix_spawn, not `subprocess`
(see `_run`), and the unit runs `exec` from this file's compiled code
(`python -IS <state_dir>/.launcher-code.pyc`, see `ensure_code_cache`), not
from this file, which Python would compile again each time.

Exit codes: 0 ok; 2 the request was refused (invalid, not allowed); 1 it was
valid but failed (systemd said no, a file could not be created, ...). Errors
are one line on stderr, prefixed with the program name.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal's numbers and calls, without its enums
import errno
import fcntl
import grp
import os
import pwd
import stat
import sys
import time

# Not imported here: `json` (it imports `re`, and `re` imports `enum`: ~15 ms of a
# Python start on a slow node) and `signal` (`enum` again). The in-unit stages, a
# Python start each in every task, need neither; the subcommands that do import them.

VERSION = 1
PROG = "hakuriver-task-launcher"
UNIT_PREFIX = "hakuriver-task-"
DEFAULT_LAUNCHER_DIR = "/usr/local/libexec/hakuriver"
"""The root-owned directory the launcher is installed in."""
DEFAULT_LAUNCHER_PATH = f"{DEFAULT_LAUNCHER_DIR}/{PROG}"
"""Where the launcher is installed: where the runner and the sudoers rule look for it."""
DEFAULT_LAUNCHER_CONFIG = "/etc/hakuriver/launcher.json"
"""The launcher's root-owned allow-list."""
DEFAULT_CONFIG_PATH = DEFAULT_LAUNCHER_CONFIG
DEFAULT_STATE_DIR = "/var/lib/hakuriver/task-status"
DEFAULT_SYSTEMD_RUN = "/usr/bin/systemd-run"
DEFAULT_SYSTEMCTL = "/usr/bin/systemctl"
DEFAULT_SYSTEMD_BUS = "/run/systemd/private"
"""The system manager's own D-Bus socket (root only; no bus daemon in between)."""
ENV_PROGRAM = "/usr/bin/env"
"""What sets a task's environment and enters its directory when its unit is started over
the bus (`unit_properties`): GNU env (coreutils), run as the task's user."""
SETPRIV_PROGRAM = "/usr/bin/setpriv"
"""What makes a unit's process the task's user (util-linux), in place of User= (see
`become_user`)."""
DEFAULT_NUMACTL = "/usr/bin/numactl"
TRANSIENT_DIR = "/run/systemd/transient"
"""Where the system manager keeps the unit files of loaded transient units."""
TASK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""PATH a task starts with (its --env may replace it)."""
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}
"""The whole environment systemd-run and systemctl get."""

SIGNALS = ("SIGTERM", "SIGKILL", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
"""Signals `kill` may send. SIGSTOP/SIGCONT only through pause/resume."""
MAX_REQUEST_BYTES = 1024 * 1024
MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 * 1024
MAX_ENV = 1024
MAX_ENV_BYTES = 256 * 1024
SPEC_CHUNK = 65536
"""Base64 characters per `exec` argument (one argument may hold at most 128 KiB)."""
MAX_CORES = 100000
MAX_TIME_LIMIT = 30 * 86400
"""The longest `time_limit` (seconds) a start request may carry: HakuRiver's own bound."""
MAX_TIMEOUT_GRACE = 3600
MAX_ATTEMPT = 1000
"""A sanity bound on a retry's `attempt` (the Host's own cap is far lower)."""
TIMEOUT_STOP = "15s"
"""How long leftover processes get between SIGTERM and SIGKILL when a task ends or is stopped."""
TOOL_TIMEOUT = 120.0

REQUEST_FIELDS = frozenset(
    {
        "task_id",
        "user",
        "command",
        "env",
        "shared_dir",
        "local_temp_dir",
        "stdout",
        "stderr",
        "cores",
        "memory",
        "numa",
        "numactl",
        "runner",
        "time_limit",
        "timeout_grace",
        "array_index",
        "batch_id",
        "attempt",
    }
)
REQUIRED_FIELDS = frozenset({"task_id", "user", "command", "shared_dir", "local_temp_dir"})
CONFIG_FIELDS = frozenset(
    {
        "version",
        "task_users",
        "task_groups",
        "allow_privileged_users",
        "runner_user",
        "runner_group",
        "shared_dirs",
        "local_temp_dirs",
        "numactl_paths",
        "state_dir",
        "systemd_run",
        "systemctl",
        "systemd_bus",
    }
)

ROOT_EQUIVALENT_GROUPS = ("root", "docker", "sudo", "wheel", "adm", "disk", "lxd", "libvirt")
"""Groups whose members are root, or close to it, on a node (the Docker socket, sudo,
raw disks, system logs, VM and container daemons). No task runs as a member of one
(or of the runner service's group, `runner_group`) unless `allow_privileged_users`
names the account."""


class _Word:
    """A name of one character from `first`, then characters from `rest`, `longest` at
    most: the shape of user names, variable names, runner names and paths here. Sets of
    characters rather than `re`, which the in-unit stages would pay ~7 ms to import;
    and unlike a `$`-anchored pattern, nothing lets a trailing newline through."""

    def __init__(self, first, rest, longest):
        self.first, self.rest, self.longest = frozenset(first), frozenset(rest), longest

    def match(self, text):
        return (
            isinstance(text, str)
            and 0 < len(text) <= self.longest
            and text[0] in self.first
            and all(c in self.rest for c in text[1:])
        )


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_LETTERS = _LOWER + _LOWER.upper()
_DIGITS = "0123456789"
_TASK_ID = _Word("123456789", _DIGITS, 19)
_USER = _Word(_LOWER + "_", _LOWER + _DIGITS + "_-", 32)
_ENV_KEY = _Word(_LETTERS + "_", _LETTERS + _DIGITS + "_", 256)
_RUNNER = _Word(_LETTERS + _DIGITS, _LETTERS + _DIGITS + "._-", 63)
_PLAIN_PATH = _Word("/", _LETTERS + _DIGITS + "._+@/-", 4096)
"""Absolute paths with no spaces, quotes, `$`, `%` or `\\`: safe inside systemd properties."""


class Refused(Exception):
    """The request is invalid or not allowed (exit 2)."""

    exit_code = 2


class Failed(Exception):
    """The request was valid but could not be carried out (exit 1)."""

    exit_code = 1


# ------------------------------------------------------------------ config


class LauncherConfig:
    """The root-owned allow-list. Built by `parse_config` (pure)."""

    def __init__(
        self,
        task_users,
        shared_dirs,
        local_temp_dirs,
        numactl_paths,
        state_dir,
        systemd_run,
        systemctl,
        *,
        task_groups=(),
        allow_privileged_users=(),
        runner_user="",
        runner_group="",
        systemd_bus=DEFAULT_SYSTEMD_BUS,
    ):
        self.task_users = tuple(task_users)
        self.task_groups = tuple(task_groups)
        self.allow_privileged_users = tuple(allow_privileged_users)
        self.runner_user = runner_user
        self.runner_group = runner_group
        self.shared_dirs = tuple(shared_dirs)
        self.local_temp_dirs = tuple(local_temp_dirs)
        self.numactl_paths = tuple(numactl_paths)
        self.state_dir = state_dir
        self.systemd_run = systemd_run
        self.systemctl = systemctl
        # "" starts units with systemd-run (a process per start, ~9 ms) instead.
        self.systemd_bus = systemd_bus

    @property
    def privileged_groups(self):
        """ROOT_EQUIVALENT_GROUPS and the runner service's own group."""
        extra = (self.runner_group,) if self.runner_group and self.runner_group not in ROOT_EQUIVALENT_GROUPS else ()
        return ROOT_EQUIVALENT_GROUPS + extra

    def to_json(self):
        return {
            "version": VERSION,
            "task_users": list(self.task_users),
            "task_groups": list(self.task_groups),
            "allow_privileged_users": list(self.allow_privileged_users),
            "runner_user": self.runner_user,
            "runner_group": self.runner_group,
            "shared_dirs": list(self.shared_dirs),
            "local_temp_dirs": list(self.local_temp_dirs),
            "numactl_paths": list(self.numactl_paths),
            "state_dir": self.state_dir,
            "systemd_run": self.systemd_run,
            "systemctl": self.systemctl,
            "systemd_bus": self.systemd_bus,
        }


def clean_path(value, what):
    """A normalised absolute path without characters systemd or a reader could misparse."""
    if not isinstance(value, str) or not value.startswith("/"):
        raise Refused(f"{what} must be an absolute path, not {value!r}")
    norm = os.path.normpath(value)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if not _PLAIN_PATH.match(norm) or "/../" in norm + "/":
        raise Refused(f"{what} {value!r} may only contain letters, digits and ._+@/- characters")
    return norm


def parse_config(data):
    """Validate the allow-list's JSON (a dict). Pure; raises Refused."""
    if not isinstance(data, dict):
        raise Refused("the launcher config must be a JSON object")
    unknown = sorted(set(data) - CONFIG_FIELDS)
    if unknown:
        raise Refused(f"unknown launcher config key(s): {', '.join(unknown)}")
    if data.get("version", VERSION) != VERSION:
        raise Refused(f"launcher config version {data.get('version')!r} is not {VERSION}")

    def str_list(key, required=True):
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise Refused(f"launcher config: {key} must be a list of strings")
        if required and not value:
            raise Refused(f"launcher config: {key} must not be empty")
        return value

    def names(key, what):
        value = str_list(key, required=False)
        for name in value:
            if not _USER.match(name):
                raise Refused(f"launcher config: {what} {name!r} is not a plain {what.split()[-1]} name")
        return list(dict.fromkeys(value))

    def name(key, what):
        value = data.get(key, "")
        if not isinstance(value, str) or (value and not _USER.match(value)):
            raise Refused(f"launcher config: {key} must be a plain {what} name, not {value!r}")
        return value

    # Each may be empty: a config that allows nobody is valid, and refuses every task.
    users = names("task_users", "task user")
    groups = names("task_groups", "task group")
    privileged = names("allow_privileged_users", "privileged user")
    runner_user = name("runner_user", "user")
    runner_group = name("runner_group", "group")
    shared = [clean_path(p, "launcher config: shared dir") for p in str_list("shared_dirs")]
    temps = [clean_path(p, "launcher config: local temp dir") for p in str_list("local_temp_dirs")]
    numactl = [clean_path(p, "launcher config: numactl path") for p in str_list("numactl_paths", required=False)]
    for p in shared + temps:
        if p == "/":
            raise Refused("launcher config: / cannot be a task directory")
    state_dir = clean_path(data.get("state_dir", DEFAULT_STATE_DIR), "launcher config: state_dir")
    systemd_run = clean_path(data.get("systemd_run", DEFAULT_SYSTEMD_RUN), "launcher config: systemd_run")
    systemctl = clean_path(data.get("systemctl", DEFAULT_SYSTEMCTL), "launcher config: systemctl")
    bus = data.get("systemd_bus", DEFAULT_SYSTEMD_BUS)
    if bus != "":
        bus = clean_path(bus, "launcher config: systemd_bus")
    return LauncherConfig(
        users,
        shared,
        temps,
        numactl,
        state_dir,
        systemd_run,
        systemctl,
        task_groups=groups,
        allow_privileged_users=privileged,
        runner_user=runner_user,
        runner_group=runner_group,
        systemd_bus=bus,
    )


def check_root_owned(path, what):
    """`path` (resolved) and every directory above it belong to root and only root may write them."""
    real = os.path.realpath(path)
    current = real
    while True:
        try:
            st = os.lstat(current)
        except OSError as exc:
            raise Failed(f"{what}: cannot inspect {current}: {exc.strerror}") from None
        if st.st_uid != 0 or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise Refused(
                f"{what}: {current} must be owned by root and writable by root only "
                f"(it is uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}); refusing to act as root"
            )
        if current == "/":
            return real
        current = os.path.dirname(current)


def load_config(path=DEFAULT_CONFIG_PATH, *, trusted=True):
    if trusted:
        check_root_owned(path, "launcher config")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_REQUEST_BYTES + 1)
    except FileNotFoundError:
        raise Failed(
            f"launcher config {path} is missing: write it with `hakuriver.init launcher` and install it as root"
        ) from None
    except OSError as exc:
        raise Failed(f"cannot read launcher config {path}: {exc.strerror}") from None
    import json

    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Failed(f"launcher config {path} is not valid JSON: {exc}") from None
    return parse_config(data)


# ------------------------------------------------------------- accounts


class SystemAccounts:
    """The node's user and group database. Tests give `validate_request` a fake with
    the same three methods."""

    def user(self, name):
        """The passwd entry (pw_name, pw_uid, pw_gid, pw_dir, pw_shell); KeyError if none."""
        return pwd.getpwnam(name)

    def groups_of(self, pw):
        """{gid: group name} of every group the account is in: its primary group and
        its supplementary groups (what systemd's User= and initgroups() give it)."""
        gids = {pw.pw_gid}
        try:
            gids.update(os.getgrouplist(pw.pw_name, pw.pw_gid))
        except OSError:
            pass
        found = {}
        for gid in gids:
            try:
                found[gid] = grp.getgrgid(gid).gr_name
            except KeyError:
                found[gid] = ""
        return found

    def group_gid(self, name):
        """The gid of the group `name`, or None when the node has no such group."""
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            return None


SYSTEM_ACCOUNTS = SystemAccounts()


def _member_of(group, groups, accounts):
    """Whether an account in `groups` ({gid: name}) is in the group `group` (by name or gid)."""
    if group in groups.values():
        return True
    gid = accounts.group_gid(group)
    return gid is not None and gid in groups


def check_task_account(cfg, user, accounts=SYSTEM_ACCOUNTS):
    """The passwd entry of `user` if the allow-list lets tasks run as it (see
    `checked_account`); Refused, with the reason, otherwise."""
    return checked_account(cfg, user, accounts)[0]


def checked_account(cfg, user, accounts=SYSTEM_ACCOUNTS):
    """(passwd entry, {gid: group name}) of `user` if the allow-list lets tasks run as it; Refused, with
    the reason, otherwise. An account is allowed when `task_users` names it or it is a
    member (primary or supplementary) of a group in `task_groups`; even then it is
    refused when it is root, the runner service's own account, or a member of a
    root-equivalent group (`cfg.privileged_groups`), unless `allow_privileged_users`
    names it. Pure apart from `accounts`."""
    if not isinstance(user, str) or not _USER.match(user):
        raise Refused(f"task user {user!r} is not a plain user name")
    listed = user in cfg.task_users
    if not listed and not cfg.task_groups:
        raise Refused(_not_allowed(cfg, user))
    try:
        pw = accounts.user(user)
    except KeyError:
        raise Refused(f"user {user!r} does not exist on this node") from None
    groups = accounts.groups_of(pw)
    if not listed and not any(_member_of(g, groups, accounts) for g in cfg.task_groups):
        raise Refused(_not_allowed(cfg, user))
    if user in cfg.allow_privileged_users:
        return pw, groups
    unless = (
        f"; the launcher runs no task as such an account unless allow_privileged_users in its config names {user!r}"
    )
    if pw.pw_uid == 0:
        raise Refused(f"user {user!r} is root (uid 0){unless}")
    if cfg.runner_user and user == cfg.runner_user:
        raise Refused(f"user {user!r} is the runner service's own account{unless}")
    if 0 in groups:
        raise Refused(
            f"user {user!r} is a member of the group {groups[0] or 'root'!r} (gid 0), which is root-equivalent{unless}"
        )
    for group in cfg.privileged_groups:
        if _member_of(group, groups, accounts):
            what = "the runner service's own group" if group == cfg.runner_group else "root-equivalent on this node"
            raise Refused(f"user {user!r} is a member of the group {group!r}, which is {what}{unless}")
    return pw, groups


def _not_allowed(cfg, user):
    allowed = [*cfg.task_users, *(f"members of {g}" for g in cfg.task_groups)]
    if not allowed:
        return (
            f"user {user!r} is not allowed to run tasks on this node: the launcher config allows no task "
            f"accounts yet; name them in task_users or task_groups (hakuriver.init launcher --task-user/--task-group)"
        )
    return (
        f"user {user!r} is not allowed to run tasks on this node (allowed: {', '.join(allowed)}); "
        f"add it to task_users, or one of its groups to task_groups, in the launcher config"
    )


# ------------------------------------------------------- pure validation


def parse_task_id(value):
    """Digits only, no leading zero, below 2**63. Accepts an int or a string."""
    text = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(text, str) or not _TASK_ID.match(text) or int(text) >= 2**63:
        raise Refused(f"task id {value!r} must be a positive decimal number (digits only)")
    return int(text)


def unit_name(task_id):
    return f"{UNIT_PREFIX}{parse_task_id(task_id)}.service"


def output_paths(shared_dir, task_id, attempt=1):
    """Attempt `attempt`'s log files (hakuriver.naming.stdout_path): `ID.out` for the first, `ID.attemptN.out` after."""
    part = "" if attempt == 1 else f".attempt{attempt}"
    return (f"{shared_dir}/task_outputs/{task_id}{part}.out", f"{shared_dir}/task_errors/{task_id}{part}.err")


def state_path(cfg, task_id):
    return f"{cfg.state_dir}/{parse_task_id(task_id)}.json"


class TaskPlan:
    """A validated start request: everything the unit is built from."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __repr__(self):
        return f"TaskPlan({self.__dict__!r})"


def _int_field(req, key, low, high):
    value = req.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Refused(f"{key} must be a whole number between {low} and {high}, not {value!r}")
    return value


def _array_env(req):
    """HAKURIVER_ARRAY_INDEX and HAKURIVER_BATCH_ID of an array task (else nothing)."""
    array_index = _int_field(req, "array_index", 0, 1_000_000)
    if array_index is None:
        if req.get("batch_id") is not None:
            raise Refused("batch_id is only given with array_index")
        return {}
    return {"HAKURIVER_ARRAY_INDEX": str(array_index), "HAKURIVER_BATCH_ID": str(parse_task_id(req.get("batch_id")))}


def validate_request(req, cfg, *, accounts=SYSTEM_ACCOUNTS, node_exists=None):
    """Check a start request against the allow-list and build its TaskPlan. Pure
    apart from the account and NUMA look-ups, which tests replace."""
    if not isinstance(req, dict):
        raise Refused("the start request must be a JSON object")
    unknown = sorted(set(req) - REQUEST_FIELDS)
    if unknown:
        raise Refused(f"unknown request field(s): {', '.join(unknown)}")
    missing = sorted(REQUIRED_FIELDS - set(req))
    if missing:
        raise Refused(f"missing request field(s): {', '.join(missing)}")
    task_id = parse_task_id(req["task_id"])

    user = req["user"]
    pw, groups = checked_account(cfg, user, accounts)

    command = req["command"]
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise Refused("command must be a non-empty list of strings")
    if len(command) > MAX_ARGS:
        raise Refused(f"command has {len(command)} arguments; at most {MAX_ARGS}")
    if not command[0]:
        raise Refused("command[0] (the program) must not be empty")
    if any("\x00" in a for a in command):
        raise Refused("command arguments must not contain NUL bytes")
    if sum(len(a.encode("utf-8", "surrogatepass")) for a in command) > MAX_ARGV_BYTES:
        raise Refused(f"the command is longer than {MAX_ARGV_BYTES} bytes")

    env_in = req.get("env") or {}
    if not isinstance(env_in, dict) or len(env_in) > MAX_ENV:
        raise Refused(f"env must be an object of at most {MAX_ENV} strings")
    size = 0
    for key, value in env_in.items():
        if not _ENV_KEY.match(key):
            raise Refused(f"env name {key!r} is not a valid variable name")
        if not isinstance(value, str) or "\x00" in value:
            raise Refused(f"env value of {key!r} must be a string without NUL bytes")
        size += len(key) + len(value.encode("utf-8", "surrogatepass")) + 2
    if size > MAX_ENV_BYTES:
        raise Refused(f"the environment is longer than {MAX_ENV_BYTES} bytes")

    shared = clean_path(req["shared_dir"], "shared_dir")
    if shared not in cfg.shared_dirs:
        raise Refused(f"shared dir {shared} is not one the launcher config allows ({', '.join(cfg.shared_dirs)})")
    temp = clean_path(req["local_temp_dir"], "local_temp_dir")
    if temp not in cfg.local_temp_dirs:
        raise Refused(f"local temp dir {temp} is not one the launcher config allows ({', '.join(cfg.local_temp_dirs)})")
    attempt = _int_field(req, "attempt", 1, MAX_ATTEMPT) or 1
    stdout, stderr = output_paths(shared, task_id, attempt)
    for key, expected in (("stdout", stdout), ("stderr", stderr)):
        if key in req and req[key] != expected:
            raise Refused(f"{key} must be {expected} (the logs live in the shared dir), not {req[key]!r}")

    cores = _int_field(req, "cores", 1, MAX_CORES)
    memory = _int_field(req, "memory", 1, 2**62)
    numa = _int_field(req, "numa", 0, 4095)
    time_limit = _int_field(req, "time_limit", 1, MAX_TIME_LIMIT)
    timeout_grace = _int_field(req, "timeout_grace", 1, MAX_TIMEOUT_GRACE)
    argv = list(command)
    numactl = None
    if numa is not None:
        raw = req.get("numactl")
        if not raw:
            raise Refused(f"a NUMA target needs numactl, and no numactl path was given (NUMA node {numa})")
        numactl = clean_path(raw, "numactl")
        if numactl not in cfg.numactl_paths:
            raise Refused(
                f"numactl path {numactl} is not one the launcher config allows "
                f"({', '.join(cfg.numactl_paths) or 'none'})"
            )
        if node_exists is not None and not node_exists(numa):
            raise Refused(f"this node has no NUMA node {numa}")
        argv = [numactl, f"--cpunodebind={numa}", f"--membind={numa}", "--", *argv]
    elif req.get("numactl") is not None:
        raise Refused("numactl is only given with a NUMA target")

    runner = req.get("runner")
    if runner is not None and (not isinstance(runner, str) or not _RUNNER.match(runner)):
        raise Refused(f"runner name {runner!r} may only contain letters, digits and ._-")

    env = {"PATH": TASK_PATH, "HOME": pw.pw_dir, "USER": user, "LOGNAME": user, "SHELL": pw.pw_shell or "/bin/sh"}
    env.update(env_in)
    env["HAKURIVER_TASK_ID"] = str(task_id)
    env["HAKURIVER_SHARED_DIR"] = shared
    env["HAKURIVER_LOCAL_TEMP_DIR"] = temp
    env.update(_array_env(req))
    return TaskPlan(
        task_id=task_id,
        unit=unit_name(task_id),
        user=user,
        groups=tuple(sorted(groups)),
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        argv=argv,
        env=env,
        cwd=shared,
        stdout=stdout,
        stderr=stderr,
        cores=cores,
        memory=memory,
        numa=numa,
        numactl=numactl,
        runner=runner,
        time_limit=time_limit,
        timeout_grace=timeout_grace,
    )


def exec_spec(plan):
    """What the in-unit `exec` step needs, as a JSON-able dict."""
    return {
        "v": VERSION,
        "task_id": plan.task_id,
        "user": plan.user,
        "uid": plan.uid,
        "argv": plan.argv,
        "env": plan.env,
        "cwd": plan.cwd,
        "stdout": plan.stdout,
        "stderr": plan.stderr,
    }


SPEC_MARSHAL = "m."
"""How an exec spec in marshal's format begins ('.' is not a base64url character, so the
JSON specs of units an older launcher started still decode)."""
_TO_URLSAFE = str.maketrans("+/", "-_")
_FROM_URLSAFE = str.maketrans("-_", "+/")


def encode_spec(spec):
    """The `exec` arguments that carry `spec`: base64url chunks (no `$` or `%`, which
    systemd expands in ExecStart, no quotes, no spaces) of marshal's encoding of it.

    Why marshal and binascii (both built into the interpreter) and not json and base64:
    the `exec` stage is a Python start in every task, and importing json costs it ~15 ms
    (json imports re, re imports enum). marshal is unsafe only for data an attacker made;
    this spec is the launcher's own, written by root into the unit's ExecStart."""
    import binascii
    import marshal

    text = SPEC_MARSHAL + binascii.b2a_base64(marshal.dumps(spec), newline=False).decode().translate(_TO_URLSAFE)
    return [text[i : i + SPEC_CHUNK] for i in range(0, len(text), SPEC_CHUNK)]


def decode_spec(chunks):
    import binascii

    text = "".join(chunks)
    try:
        if text.startswith(SPEC_MARSHAL):
            import marshal

            # Root wrote this spec into the unit; whoever feeds `exec` another one runs
            # it as themselves, in their own process (exec refuses sudo and root).
            spec = marshal.loads(binascii.a2b_base64(text[len(SPEC_MARSHAL) :].translate(_FROM_URLSAFE)))  # noqa: S302
        else:  # a unit started by a launcher from before the marshal spec
            import json

            raw = binascii.a2b_base64(text.translate(_FROM_URLSAFE))
            spec = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (ValueError, TypeError, EOFError, UnicodeDecodeError, binascii.Error) as exc:
        raise Refused(f"malformed exec spec: {exc}") from None
    if not isinstance(spec, dict) or spec.get("v") != VERSION:
        raise Refused("malformed exec spec")
    return spec


def description(plan):
    text = f"HakuRiver task {plan.task_id}"
    return text + (f" (runner {plan.runner})" if plan.runner else "")


def systemd_run_argv(plan, cfg, launcher_path, code=None):
    """The systemd-run argv that starts `plan`. Pure. `code`: (python, cache) to run the
    in-unit `exec` stage from the launcher's compiled code (`ensure_code_cache`) as
    `python -IS cache exec ...`; None: from the launcher itself. The poststop hook is
    `POSTSTOP_SCRIPT`, in dash."""
    launcher = clean_path(launcher_path, "launcher path")
    if code is not None:
        python, cache = clean_path(code[0], "python path"), clean_path(code[1], "code cache path")
        stage_argv = [python, "-IS", cache]
    else:
        stage_argv = [launcher]
    argv = [
        cfg.systemd_run,
        "--no-ask-password",
        "--quiet",
        # Return once systemd has made the unit and queued its start, not once the
        # start job is done (~15 ms sooner). What the wait would report, systemd
        # failing to set up the process (exit codes 200-242: no such user, cannot
        # chdir, ...; the preflight has checked those as the user), the unit keeps:
        # it ends `failed` with that code as ExecMainStatus (the poststop hook fails
        # the same set-up step), and the runner reports a failed unit without a
        # record as "systemd could not set up the task (exit code N)". A unit that
        # already exists, or properties systemd refuses, still fail here.
        "--no-block",
        f"--unit={plan.unit}",
        f"--description={description(plan)}",
        "--property=Type=exec",
        "--property=KillMode=control-group",
        f"--property=TimeoutStopSec={TIMEOUT_STOP if plan.timeout_grace is None else f'{plan.timeout_grace}s'}",
    ]
    if plan.time_limit is not None:
        # systemd itself stops the unit at the limit (SIGTERM, SIGKILL after
        # TimeoutStopSec) and records Result=timeout: the limit holds even
        # while no runner runs.
        argv.append(f"--property=RuntimeMaxSec={plan.time_limit}")
    if plan.cores is not None:
        argv.append(f"--property=CPUQuota={plan.cores * 100}%")
    if plan.memory is not None:
        argv.append(f"--property=MemoryMax={plan.memory}")
    argv.append("--property=ExecStopPost=" + poststop_command(plan.task_id, cfg.state_dir))
    argv += ["--", *become_user(plan), *stage_argv, "exec", *encode_spec(exec_spec(plan))]
    return argv


def become_user(plan):
    """The argv prefix that makes the unit's process the task's user: setpriv, as root,
    with the uid, gid and groups the launcher looked up. Pure.

    Why not User=: with User=, the root poststop hook needs the `+` prefix, and systemd
    252 keeps a `+` command of a transient unit under a key (ExecStopPostEx=) that its
    own unit file parser does not know, so after any `systemctl daemon-reload` the
    running unit has no hook, and its end is never recorded. Without User=, the hook
    is a plain ExecStopPost= and runs as root. Nothing runs as root in the unit but
    setpriv and the hook, with systemd's environment, never the task's."""
    groups = ",".join(str(g) for g in plan.groups)  # never empty: the primary group is one
    return [SETPRIV_PROGRAM, f"--reuid={plan.uid}", f"--regid={plan.gid}", f"--groups={groups}", "--"]


def _no_expansion(word):
    """`word` as systemd takes it in a command it expands `$NAME` in: every `$` doubled."""
    return word.replace("$", "$$")


POSTSTOP_SHELL = "/bin/sh"
POSTSTOP_SCRIPT = (
    # $1: the task id, $2: the state dir; both the launcher's own, validated words.
    # SERVICE_RESULT, EXIT_CODE and EXIT_STATUS are systemd's (its words and numbers;
    # anything else is recorded as "unknown"). The unit's environment is systemd's
    # alone (the task's own is set by `exec`, inside its process), and every tool
    # is named by its full path.
    'if [ -z "${SERVICE_RESULT+x}" ] || [ -z "${EXIT_CODE+x}" ]; then '
    'echo "poststop runs only as the ExecStopPost of a unit" >&2; exit 2; fi; '
    # The unit's stdout and stderr are the task's log files (descriptors on the task's
    # storage): root writes nothing there, and never waits on them.
    "exec >/dev/null 2>&1; "
    "r=$SERVICE_RESULT; c=$EXIT_CODE; s=${EXIT_STATUS-}; "
    'case "$r$c$s" in *[!A-Za-z0-9_-]*) r=unknown; c=; s=;; esac; '
    # The OOM killer's count in this cgroup (the unit's: the hook runs inside it):
    # memory.events on cgroup v2, memory.oom_control on v1; the first that counts.
    "k=0; "
    "while IFS=: read -r h l p; do "
    'case "$h:$l" in 0:) f=/sys/fs/cgroup$p/memory.events;; '
    "*:memory|*:memory,*|*,memory|*,memory,*) f=/sys/fs/cgroup/memory$p/memory.oom_control;; "
    "*) continue;; esac; "
    '[ -r "$f" ] || continue; '
    'while read -r n v; do if [ "$n" = oom_kill ] && [ "$k" = 0 ]; then k=$v; fi; done < "$f"; '
    "done < /proc/self/cgroup; "
    'case "$k" in ""|*[!0-9]*) k=0;; esac; '
    "umask 022; "
    '[ -d "$2" ] || /bin/mkdir -p -m 0755 -- "$2" || exit 1; '
    # Written aside under a fresh name (noclobber: O_EXCL), made durable, then renamed
    # in: a reader sees no record or a whole one, as from `cmd_poststop`.
    't="$2/$1.json.$$.tmp"; set -C; '
    f'echo "{{\\"task_id\\": \\"$1\\", \\"unit\\": \\"{UNIT_PREFIX}$1.service\\", \\"result\\": \\"$r\\", '
    '\\"exit_code\\": \\"$c\\", \\"exit_status\\": \\"$s\\", \\"oom_kills\\": $k}" > "$t" || exit 1; '
    '/bin/sync -- "$t" && /bin/mv -f -- "$t" "$2/$1.json"'
)
"""The unit's ExecStopPost= hook, as root: what `cmd_poststop` does, as a shell script.

Why a shell and not the launcher: the hook runs in every task, and a Python start
(~11 ms) was a fifth of a no-op task's whole overhead; dash and its builtins start in
~1 ms, and only mv and sync are other programs. Nothing in it comes from the task or
its user: the script is this constant, its two arguments are the validated task id
and the config's state dir, and systemd sets the three words it records."""


def poststop_argv(task_id, state_dir):
    """The unit's ExecStopPost= command, which runs `POSTSTOP_SCRIPT` (the file
    `ensure_poststop_script` keeps) for `task_id`, recording into `state_dir`: as root,
    for the unit has no User= (`become_user`). Plain words only (checked), so that
    systemd neither expands nor escapes anything in it. Pure."""
    task_id = parse_task_id(task_id)
    state_dir = clean_path(state_dir, "state dir")
    return [POSTSTOP_SHELL, _poststop_script_in(state_dir), str(task_id), state_dir]


def poststop_command(task_id, state_dir):
    """`poststop_argv` as systemd-run's --property=ExecStopPost= takes it. Pure."""
    return " ".join(poststop_argv(task_id, state_dir))


def _bus_text(text):
    """Whether D-Bus (sd-bus) takes `text` as a string: valid UTF-8, no NUL, and none of
    Unicode's noncharacters (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), which sd-bus refuses."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return not any(c == "\0" or "\ufdd0" <= c <= "\ufdef" or (ord(c) & 0xFFFE) == 0xFFFE for c in text)


def _timeout_stop_usec(plan):
    seconds = int(TIMEOUT_STOP[:-1]) if plan.timeout_grace is None else plan.timeout_grace
    return seconds * 1_000_000


def unit_properties(plan, cfg, stdout_fd, stderr_fd):
    """The StartTransientUnit properties (a list of (name, (signature, value))) that
    start `plan` with no Python in the unit, or None where the plan cannot be put so
    (`_start_locked` then uses `systemd_run_argv`). Pure.

    What the `exec` stage does, two small programs do here: setpriv makes the process
    the task's user (`become_user`), then `env -i -C DIR` enters the shared dir and
    gives the task exactly its environment, as that user; its output goes to the two
    files the preflight opened as that user, passed as descriptors (systemd's own
    `append:` would open them as root and follow links). Not Environment=: the unit's
    environment is also the root poststop hook's, and a task's LD_PRELOAD must never
    reach a root process. systemd expands `$NAME` in both commands, so every `$` is
    doubled; `%` specifiers apply to unit files only, and systemd escapes them when it
    writes the transient unit's file.

    None when the program's name has a `=` (env would take it for a variable) or a
    string is not one D-Bus carries (`_bus_text`)."""
    if "=" in plan.argv[0]:
        return None
    if not all(_bus_text(t) for t in (*plan.argv, *plan.env, *plan.env.values(), plan.cwd)):
        return None
    state_dir = clean_path(cfg.state_dir, "state dir")
    task_id = parse_task_id(plan.task_id)
    cwd = clean_path(plan.cwd, "shared dir")
    run = [
        *become_user(plan),
        ENV_PROGRAM,
        "-i",
        f"--chdir={cwd}",
        "--",
        *(f"{k}={v}" for k, v in plan.env.items()),
        *plan.argv,
    ]
    poststop = poststop_argv(task_id, state_dir)
    props = [
        ("Description", ("s", description(plan))),
        ("Type", ("s", "exec")),
        ("KillMode", ("s", "control-group")),
        ("TimeoutStopUSec", ("t", _timeout_stop_usec(plan))),
        # Python ignored SIGPIPE in the `exec` stage and put it back before the exec;
        # systemd ignores it unless told not to.
        ("IgnoreSIGPIPE", ("b", False)),
        ("StandardInput", ("s", "null")),
        ("StandardOutputFileDescriptor", ("h", stdout_fd)),
        ("StandardErrorFileDescriptor", ("h", stderr_fd)),
        ("ExecStart", ("a(sasb)", [(run[0], [_no_expansion(w) for w in run], False)])),
        ("ExecStopPost", ("a(sasb)", [(POSTSTOP_SHELL, poststop, False)])),
    ]
    if plan.time_limit is not None:
        props.append(("RuntimeMaxUSec", ("t", plan.time_limit * 1_000_000)))
    if plan.cores is not None:
        props.append(("CPUQuotaPerSecUSec", ("t", plan.cores * 1_000_000)))
    if plan.memory is not None:
        props.append(("MemoryMax", ("t", plan.memory)))
    return props


def systemctl_argv(cfg, verb, unit, *extra):
    return [cfg.systemctl, "--no-ask-password", "--no-pager", verb, *extra, unit]


def kill_argv(cfg, unit, signame):
    if signame not in SIGNALS + ("SIGSTOP", "SIGCONT"):
        raise Refused(f"signal {signame!r} is not one of {', '.join(SIGNALS)}")
    return systemctl_argv(cfg, "kill", unit, "--kill-who=all", f"--signal={signame}")


UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "SubState", "Result", "MainPID", "ExecMainCode", "ExecMainStatus")


def show_argv(cfg, units, properties=UNIT_PROPERTIES):
    return [cfg.systemctl, "--no-pager", "show", "--property=" + ",".join(properties), "--", *units]


def parse_show(text):
    """`systemctl show` output for one or more units -> list of dicts (blank line between units)."""
    blocks: list = []
    current: dict = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def oom_kills_from(cgroup_lines, read=None):
    """How many times the OOM killer struck in the cgroup of this process: memory.events
    (cgroup v2) or memory.oom_control (v1). `cgroup_lines`: /proc/self/cgroup."""
    read = read or _read_text
    for line in cgroup_lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            candidates = [f"/sys/fs/cgroup{path}/memory.events"]
        elif "memory" in controllers.split(","):
            candidates = [f"/sys/fs/cgroup/memory{path}/memory.oom_control"]
        else:
            continue
        for candidate in candidates:
            text = read(candidate)
            if text is None:
                continue
            for row in text.splitlines():
                key, _, value = row.partition(" ")
                if key == "oom_kill" and value.strip().isdigit() and int(value) > 0:
                    return int(value)
    return 0


def _read_text(path):
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


# ------------------------------------------------------------- actions (I/O)


class ToolRun:
    """How a tool run by `_run` ended: its exit status (negative: killed by that signal),
    stdout and stderr (bytes)."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(argv, *, timeout=TOOL_TIMEOUT):
    """Run a tool: `argv` as a list (no shell), stdin /dev/null, the environment exactly
    TOOL_ENV, the default signal dispositions, stdout and stderr captured; Failed when it
    is missing or still runs after `timeout` seconds (it is then killed).

    posix_spawn and poll, not `subprocess`: importing that (threads, selectors, ...) was
    ~4 ms of every launcher start. The launcher's own descriptors are all close-on-exec
    (PEP 446), so the tool inherits only these three."""
    import select

    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        try:
            pid = os.posix_spawn(
                argv[0],
                list(argv),
                dict(TOOL_ENV),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                    (os.POSIX_SPAWN_DUP2, err_w, 2),
                ],
                # Python ignores SIGPIPE and SIGXFSZ; the tool must not inherit that.
                setsigdef=[getattr(_signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(_signal, n)],
            )
        except FileNotFoundError:
            raise Failed(f"{argv[0]} is missing: is systemd installed?") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        chunks: dict = {out_r: [], err_r: []}
        poller = select.poll()
        for fd in chunks:
            poller.register(fd, select.POLLIN)
        open_fds = set(chunks)
        deadline = time.monotonic() + timeout
        while open_fds:
            left = deadline - time.monotonic()
            events = poller.poll(max(0, left) * 1000) if left > 0 else []
            if not events:
                try:
                    os.kill(pid, _signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)
                raise Failed(f"{os.path.basename(argv[0])} {argv[1:4]} did not answer within {timeout:.0f}s")
            for fd, _ in events:
                data = os.read(fd, 65536)
                if data:
                    chunks[fd].append(data)
                else:
                    poller.unregister(fd)
                    open_fds.discard(fd)
        status = _wait_for(pid, deadline, argv, timeout)
        return ToolRun(os.waitstatus_to_exitcode(status), b"".join(chunks[out_r]), b"".join(chunks[err_r]))
    finally:
        os.close(out_r)
        os.close(err_r)


def _wait_for(pid, deadline, argv, timeout):
    """The wait status of `pid`, which has closed its output: at once if it has exited,
    else by polling its pidfd until `deadline` (then it is killed: Failed)."""
    import select

    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        return status
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return os.waitpid(pid, 0)[1]  # no pidfds (an old kernel): as subprocess would
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            os.kill(pid, _signal.SIGKILL)
            os.waitpid(pid, 0)
            raise Failed(f"{os.path.basename(argv[0])} {argv[1:4]} did not answer within {timeout:.0f}s")
    finally:
        os.close(pidfd)
    return os.waitpid(pid, 0)[1]


def _tool_error(proc):
    text = (proc.stderr or b"").decode(errors="replace").strip() or (proc.stdout or b"").decode(
        errors="replace"
    ).strip()
    return " ".join(text.split())[:600] or f"exit status {proc.returncode}"


# ------------------------------------------------------- systemd's own bus
#
# Why by hand and not a D-Bus library: this file runs as root with the standard library
# only (see the module's docstring), and it needs one call, StartTransientUnit, on the
# manager's private socket. The wire format (the D-Bus specification, "Message
# Protocol") is small and fixed; the tests check every message against jeepney's decoder.

_DBUS_FIXED = {"y": ("B", 1), "b": ("I", 4), "i": ("i", 4), "u": ("I", 4), "t": ("Q", 8), "h": ("I", 4)}
_DBUS_ALIGN = {"y": 1, "g": 1, "v": 1, "b": 4, "i": 4, "u": 4, "h": 4, "s": 4, "o": 4, "a": 4, "t": 8, "(": 8}


class BusError(Exception):
    """The manager answered a call with an error: `name` (org.freedesktop...) and its text."""

    def __init__(self, name, text):
        super().__init__(f"{text} ({name})" if text else name)
        self.name, self.text = name, text


def _dbus_complete(sig, i=0):
    """The end of the single complete type that begins at sig[i]."""
    if sig[i] == "a":
        return _dbus_complete(sig, i + 1)
    if sig[i] == "(":
        i += 1
        while sig[i] != ")":
            i = _dbus_complete(sig, i)
        return i + 1
    return i + 1


def _dbus_types(sig):
    out, i = [], 0
    while i < len(sig):
        end = _dbus_complete(sig, i)
        out.append(sig[i:end])
        i = end
    return out


def dbus_marshal(buf, sig, value, fds):
    """Append `value` of the single complete type `sig` to `buf` (little-endian), its
    alignment counted from the start of `buf`. An `h` is a descriptor: appended to
    `fds`, and its index written. Pure apart from `buf` and `fds`."""
    import struct

    c = sig[0]
    buf.extend(b"\0" * (-len(buf) % _DBUS_ALIGN[c]))
    if c in _DBUS_FIXED:
        fmt = _DBUS_FIXED[c][0]
        if c == "h":
            fds.append(value)
            value = len(fds) - 1
        buf += struct.pack("<" + fmt, int(value))
    elif c in "so":
        data = value.encode("utf-8")
        if "\0" in value:
            raise ValueError("a D-Bus string has no NUL")
        buf += struct.pack("<I", len(data)) + data + b"\0"
    elif c == "g":
        data = value.encode("ascii")
        buf += bytes([len(data)]) + data + b"\0"
    elif c == "v":
        inner_sig, inner = value
        dbus_marshal(buf, "g", inner_sig, fds)
        dbus_marshal(buf, inner_sig, inner, fds)
    elif c == "a":
        elem = sig[1:]
        at = len(buf)
        buf += b"\0\0\0\0"
        buf.extend(b"\0" * (-len(buf) % _DBUS_ALIGN[elem[0]]))
        start = len(buf)
        for item in value:
            dbus_marshal(buf, elem, item, fds)
        struct.pack_into("<I", buf, at, len(buf) - start)
    elif c == "(":
        fields = _dbus_types(sig[1:-1])
        if len(fields) != len(value):
            raise ValueError(f"struct {sig} takes {len(fields)} fields")
        for field, item in zip(fields, value, strict=True):
            dbus_marshal(buf, field, item, fds)
    else:
        raise ValueError(f"D-Bus type {c!r} is not one the launcher sends")


def dbus_method_call(serial, destination, path, interface, member, signature, args):
    """One method call message (bytes) and the descriptors it carries. Pure."""
    import struct

    body = bytearray()
    fds: list[int] = []
    types = _dbus_types(signature)
    if len(types) != len(args):
        raise ValueError(f"{member} takes {len(types)} arguments")
    for sig, arg in zip(types, args, strict=True):
        dbus_marshal(body, sig, arg, fds)
    fields = [
        (1, ("o", path)),
        (2, ("s", interface)),
        (3, ("s", member)),
        (6, ("s", destination)),
    ]
    if signature:
        fields.append((8, ("g", signature)))
    if fds:
        fields.append((9, ("u", len(fds))))
    head = bytearray(b"l\x01\x00\x01" + struct.pack("<II", len(body), serial))
    dbus_marshal(head, "a(yv)", fields, [])
    head.extend(b"\0" * (-len(head) % 8))
    return bytes(head + body), fds


class _Reader:
    """Reads the few types a reply's header and an error's text use."""

    def __init__(self, data, order):
        self.data, self.pos, self.order = data, 0, order

    def align(self, n):
        self.pos += -self.pos % n

    def fixed(self, fmt, size):
        import struct

        self.align(size)
        (value,) = struct.unpack_from(self.order + fmt, self.data, self.pos)
        self.pos += size
        return value

    def read(self, sig):
        if sig in _DBUS_FIXED:
            return self.fixed(*_DBUS_FIXED[sig])
        if sig in ("s", "o"):
            n = self.fixed("I", 4)
            text = bytes(self.data[self.pos : self.pos + n]).decode("utf-8", "replace")
            self.pos += n + 1
            return text
        if sig == "g":
            n = self.data[self.pos]
            text = bytes(self.data[self.pos + 1 : self.pos + 1 + n]).decode("ascii", "replace")
            self.pos += n + 2
            return text
        if sig == "v":
            return self.read(self.read("g"))
        raise ValueError(f"D-Bus type {sig!r} is not one the launcher reads")


def dbus_parse_header(data):
    """(message type, serial, header fields {code: value}, header length, body length)
    of a message whose first 16 bytes and header fields are in `data`. Pure."""
    import struct

    order = {ord("l"): "<", ord("B"): ">"}.get(data[0])
    if order is None:
        raise ValueError("not a D-Bus message")
    kind = data[1]
    body_len, serial, fields_len = struct.unpack_from(order + "III", data, 4)
    reader = _Reader(data, order)
    reader.pos = 16
    fields = {}
    while reader.pos < 16 + fields_len:
        reader.align(8)
        code = reader.fixed("B", 1)
        fields[code] = reader.read("v")
    header_len = 16 + fields_len + (-(16 + fields_len) % 8)
    return kind, serial, fields, header_len, body_len


class SystemdBus:
    """A connection to the system manager's private socket, as root: one call at a time.

    Why not systemd-run: it is a process per start (~14 ms in a node of the tests) for
    what is one message; this connection, its handshake and the call take ~6 ms."""

    def __init__(self, path, *, timeout=TOOL_TIMEOUT, sock=None):
        """Connect to `path` (or talk over `sock`, already connected: the tests' peer)."""
        import socket

        self.path = path
        self.serial = 0
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.sock = sock or socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            if sock is None:
                self.sock.connect(path)
            uid = str(os.geteuid()).encode().hex().encode()
            # SASL EXTERNAL (the kernel vouches for our uid), asking to pass descriptors,
            # all in one write, as sd-bus itself does: the manager must have read BEGIN
            # before the first message arrives, for it reads the first message only when
            # its socket has more to read, and it drops a connection that passes
            # descriptors while it is still reading the handshake.
            self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
            ok, agree = self._auth_answers()
            if not ok.startswith(b"OK "):
                raise OSError("the manager refused authentication")
            if agree != b"AGREE_UNIX_FD":
                raise OSError("the manager does not take file descriptors")
            # And one round trip with no descriptors, to know the manager reads messages.
            self.call("/org/freedesktop/systemd1", "org.freedesktop.DBus.Peer", "Ping", "", [])
        except BaseException:
            self.sock.close()
            raise

    def _auth_answers(self):
        """The manager's two answers to the handshake (it sends nothing more until the
        first message); what follows them is the start of the first message."""
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("the manager closed the connection")
            data += chunk
            if len(data) > 4096:
                raise OSError("the manager's answer is not D-Bus")
        first, second, self.buffer = data.split(b"\r\n", 2)
        return first, second

    def close(self):
        self.sock.close()

    def _recv_exactly(self, n):
        while len(self.buffer) < n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the manager did not answer within {self.timeout:.0f}s")
            self.sock.settimeout(left)
            chunk = self.sock.recv(max(65536, n - len(self.buffer)))
            if not chunk:
                raise OSError("the manager closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def call(self, path, interface, member, signature, args):
        """Call a manager method; its reply's header fields, or BusError."""
        import socket

        self.serial += 1
        # One deadline for the whole call: signals the manager sends meanwhile must not
        # stretch it.
        self.deadline = time.monotonic() + self.timeout
        message, fds = dbus_method_call(
            self.serial, "org.freedesktop.systemd1", path, interface, member, signature, args
        )
        if fds:
            sent = socket.send_fds(self.sock, [message], fds)
        else:
            sent = self.sock.send(message)
        if sent < len(message):
            self.sock.sendall(message[sent:])
        while True:  # the reply, past any signal the manager sends meanwhile
            import struct

            first = self._recv_exactly(16)
            order = "<" if first[:1] == b"l" else ">"  # dbus_parse_header refuses any other mark
            fields_len = struct.unpack_from(order + "I", first, 12)[0]
            rest = self._recv_exactly(fields_len + (-(16 + fields_len) % 8))
            kind, _, fields, _, body_len = dbus_parse_header(first + rest)
            body = self._recv_exactly(body_len)
            if fields.get(5) != self.serial:
                continue
            if kind == 3:
                text = ""
                if str(fields.get(8, "")).startswith("s"):
                    text = _Reader(body, order).read("s")
                raise BusError(str(fields.get(4, "")), text)
            return fields

    def start_transient_unit(self, name, properties):
        """StartTransientUnit(name, "fail", properties, []): queues the start and
        returns, as `systemd-run --no-block` does."""
        self.call(
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            [name, "fail", properties, []],
        )


def show_unit(cfg, unit):
    proc = _run(show_argv(cfg, [unit]))
    if proc.returncode != 0:
        raise Failed(f"systemctl show {unit} failed: {_tool_error(proc)}")
    blocks = parse_show(proc.stdout.decode(errors="replace"))
    return blocks[0] if blocks else {"LoadState": "not-found"}


def unit_is_live(props):
    return props.get("LoadState") == "loaded" and props.get("ActiveState") in (
        "active",
        "activating",
        "deactivating",
        "reloading",
    )


def require_root():
    if os.geteuid() != 0:
        raise Refused("this subcommand must run as root (the runner calls it through sudo -n)")


def refuse_under_sudo(what):
    if "SUDO_UID" in os.environ or "SUDO_USER" in os.environ:
        raise Refused(f"{what} is run by systemd inside a task's unit, never through sudo")


def log_file_problem(st, path, user):
    """Why an opened log file is not one the task's user may write its output to, or "".
    In a log directory several task accounts write to, another one could have planted
    the name first: it must be a regular file of the task's user, with one link."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_uid != os.geteuid():
        return f"{path} already exists and belongs to uid {st.st_uid}, not to user {user}; remove it"
    if st.st_nlink != 1:
        return f"{path} has {st.st_nlink} links; a log file must have one"
    return ""


def _preflight_child(plan, numactl, fds):
    """In a child that has become the task's user: can it run the task at all? The
    two log files it opens (empty, for appending) are left in `fds`."""
    try:
        os.chdir(plan.cwd)
    except OSError as exc:
        return f"user {plan.user} cannot enter the shared dir {plan.cwd}: {exc.strerror}"
    for path in (plan.stdout, plan.stderr):
        parent = os.path.dirname(path)
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as exc:
            return f"user {plan.user} cannot create {parent}: {exc.strerror}"
        try:
            # O_NONBLOCK: a FIFO planted there must not hang the start (and is refused).
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
            return f"user {plan.user} cannot write {path}: {why}"
        fds.append(fd)
        problem = log_file_problem(os.fstat(fd), path, plan.user)
        if problem:
            return problem
        os.ftruncate(fd, 0)
        os.set_blocking(fd, True)
    if numactl is not None and not os.access(numactl, os.X_OK):
        return (
            f"numactl is not installed at {numactl} (NUMA node {plan.numa} was requested): "
            f"install the numactl package or set paths.numactl_path"
        )
    program = plan.argv[4] if numactl is not None else plan.argv[0]
    if "/" in program:
        if not (os.path.isfile(program) and os.access(program, os.X_OK)):
            return f"the task's program {program} does not exist or is not executable for user {plan.user}"
    else:
        search = plan.env.get("PATH", TASK_PATH).split(os.pathsep)
        if not any(
            d and os.path.isfile(os.path.join(d, program)) and os.access(os.path.join(d, program), os.X_OK)
            for d in search
        ):
            return f"the task's program {program!r} is not found on PATH ({plan.env.get('PATH', TASK_PATH)})"
    return ""


def _log_group(cfg):
    """The gid log files are given to, so the service (the Host reads them) can read
    them without making them world-readable; None when the runner's group is unknown."""
    if not cfg.runner_group:
        return None
    try:
        return grp.getgrnam(cfg.runner_group).gr_gid
    except KeyError:
        return None


def create_logs_as_root(cfg, plan):
    """Make the task's two empty log files as root and give them to the task's user.

    The log directories belong to the service user, so no task account can plant
    anything there; an entry that is there anyway (an older deployment's
    world-writable directory) is unlinked, never followed, and the file is created
    with O_EXCL through a directory descriptor opened without following links.
    Returns False where root may not create files there (a root-squashed NFS
    export): the task's user then creates them itself (`_preflight_child`)."""
    gid = _log_group(cfg)
    for path in (plan.stdout, plan.stderr):
        parent, name = os.path.split(path)
        try:
            dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise Failed(
                    f"{parent} is not a plain directory (a symbolic link?); refusing to write logs there"
                ) from None
            return False  # missing, or not ours to open: the user's preflight says why
        try:
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:
                raise Failed(f"{path} is a directory; remove it") from None
            except PermissionError:
                return False
            try:
                fd = os.open(
                    name,
                    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                    0o640 if gid is not None else 0o644,
                    dir_fd=dfd,
                )
            except PermissionError:
                return False
            try:
                os.fchown(fd, plan.uid, gid if gid is not None else plan.gid)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)
    return True


PREFLIGHT_SECONDS = 10.0
"""How long the preflight child (the task's user's process) has to answer."""


def preflight_as_user(plan, cfg=None):
    """Check, as the task's user, that it can run the task at all, and return the two
    log files (stdout, stderr) as descriptors that user opened: empty, for appending,
    close-on-exec, the caller's to close. The files are made by root first where it may
    (`create_logs_as_root`), else by the user, so they belong to it and no symlink
    planted in the shared dir is ever followed by root."""
    import socket

    if cfg is not None:
        create_logs_as_root(cfg, plan)
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # child
        message = ""
        fds: list[int] = []
        try:
            parent.close()
            os.setgroups(os.getgrouplist(plan.user, plan.gid))
            os.setgid(plan.gid)
            os.setuid(plan.uid)
            os.umask(0o022)
            message = _preflight_child(plan, plan.numactl, fds)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            message = f"preflight as user {plan.user} failed: {exc}"
        try:
            data = message.encode("utf-8", "replace")[:4000]
            socket.send_fds(child, [b"!" + data if message else b"ok"], [] if message else fds)
        finally:
            os._exit(0)
    child.close()
    data, fds = b"", []
    try:
        # The child is the task's user's process: that user may stop it (SIGSTOP), and
        # a file system it mounted may hang its opens. Neither may hold this start (and
        # the node's start lock) for good: past the deadline the start fails.
        parent.settimeout(PREFLIGHT_SECONDS)
        try:
            data, fds, _, _ = socket.recv_fds(parent, 4096, 2)
        except TimeoutError:
            raise Failed(
                f"preflight as user {plan.user} did not answer within {PREFLIGHT_SECONDS:g}s "
                f"(stopped, or stuck on a file system under {plan.cwd}); it was killed"
            ) from None
    finally:
        parent.close()
        # Killed whatever it answered: stopped after its answer it would never be reaped.
        try:
            os.kill(pid, _signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if data != b"ok" or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        message = data[1:].decode("utf-8", "replace") if data.startswith(b"!") else ""
        raise Failed(message or f"preflight as user {plan.user} ended without an answer")
    for fd in fds:
        os.set_inheritable(fd, False)
    return fds[0], fds[1]


def cmd_start(cfg, launcher_path, stdin):
    require_root()
    raw = stdin.read(MAX_REQUEST_BYTES + 1)
    if len(raw) > MAX_REQUEST_BYTES:
        raise Refused(f"the start request is larger than {MAX_REQUEST_BYTES} bytes")
    import json

    try:
        req = json.loads(raw.decode("utf-8", "surrogatepass"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"the start request is not valid JSON: {exc}") from None
    plan = validate_request(req, cfg, node_exists=lambda n: os.path.isdir(f"/sys/devices/system/node/node{n}"))
    ensure_state_dir(cfg)
    # One start at a time on this node: "no such unit yet" must still hold when systemd-run
    # runs (and the code cache is written by one start at a time).
    lock_fd = os.open(f"{cfg.state_dir}/.start.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        return _start_locked(cfg, launcher_path, plan)
    finally:
        os.close(lock_fd)


def _start_locked(cfg, launcher_path, plan, *, transient_dir=TRANSIENT_DIR):
    # The unit must not exist yet: checked before the log files are (re)made, so that a
    # second start of a running task leaves its logs alone. A task's unit is transient,
    # and systemd keeps a transient unit's file in `transient_dir` for as long as the unit
    # is loaded (systemd.unit(5), "Dynamic configuration for transient units"): one
    # lstat() instead of a `systemctl show` (a process, ~6 ms) on every start. Where that
    # directory is missing (another layout) systemctl decides, as it does when the file
    # is there (for the message). A same-named unit that is not transient (a unit file an
    # admin wrote) is caught by systemd-run's own refusal below.
    if not os.path.isdir(transient_dir) or os.path.lexists(f"{transient_dir}/{plan.unit}"):
        props = show_unit(cfg, plan.unit)
        if props.get("LoadState") not in ("not-found", ""):
            raise Failed(_exists_message(plan, props))
    if os.path.lexists(state_path(cfg, plan.task_id)):
        raise Failed(
            f"task {plan.task_id} already ran on this node (its exit status is recorded in "
            f"{state_path(cfg, plan.task_id)}); a task id runs once"
        )
    for program, package in ((SETPRIV_PROGRAM, "util-linux"), (ENV_PROGRAM, "coreutils")):
        if not os.access(program, os.X_OK):
            raise Failed(f"{program} is missing: install {package} (each task's process starts with it)")
    ensure_poststop_script(cfg)
    stdout_fd, stderr_fd = preflight_as_user(plan, cfg)
    try:
        props = unit_properties(plan, cfg, stdout_fd, stderr_fd) if cfg.systemd_bus else None
        bus = _manager_bus(cfg.systemd_bus) if props is not None else None
        if bus is not None:
            return _start_on_bus(cfg, plan, bus, props)
    finally:
        os.close(stdout_fd)
        os.close(stderr_fd)
    argv = systemd_run_argv(plan, cfg, launcher_path, ensure_code_cache(cfg, launcher_path))
    proc = _run(argv)
    if proc.returncode != 0:
        why = _tool_error(proc)
        # With --no-block, a refused systemd-run made no unit of ours: a loaded one is
        # someone else's (a unit file of that name, or a task unit whose transient file
        # went missing) and is left exactly as it is, never stopped.
        props = show_unit(cfg, plan.unit)
        if props.get("LoadState") == "loaded":
            raise Failed(_exists_message(plan, props))
        raise Failed(f"systemd-run could not start {plan.unit}: {why}")
    return _started(cfg, plan)


def _started(cfg, plan):
    return {"unit": plan.unit, "user": plan.user, "state_dir": cfg.state_dir}


def _manager_bus(path):
    """A new connection to the manager at `path`, or None where there is none to be had:
    the start then goes through systemd-run, which says why if it cannot start either.

    One connection per start, closed after it, never kept in a `serve` session: the
    manager sends every unit's and job's signals to each connection on its private
    socket, and an idle one would pile them up in PID 1."""
    try:
        return SystemdBus(path)
    except (OSError, BusError, ValueError):
        return None


def _start_on_bus(cfg, plan, bus, props):
    import struct

    try:
        bus.start_transient_unit(plan.unit, props)
    except BusError as exc:
        if exc.name == "org.freedesktop.systemd1.UnitExists":
            raise Failed(_exists_message(plan, show_unit(cfg, plan.unit))) from None
        raise Failed(f"systemd could not start {plan.unit}: {exc}") from None
    except (OSError, ValueError, IndexError, struct.error) as exc:  # the last three: a garbled reply
        # The call may have reached the manager before the connection failed: a unit of
        # ours that is there now is this start's.
        if os.path.lexists(f"{TRANSIENT_DIR}/{plan.unit}"):
            return _started(cfg, plan)
        raise Failed(f"the call to systemd to start {plan.unit} failed: {exc}") from None
    finally:
        bus.close()
    return _started(cfg, plan)


def _exists_message(plan, props):
    return (
        f"unit {plan.unit} already exists ({props.get('ActiveState')}/{props.get('SubState')}): task "
        f"{plan.task_id} was already started on this node; clear it with `systemctl stop {plan.unit}` "
        f"and `systemctl reset-failed {plan.unit}`"
    )


def ensure_state_dir(cfg):
    try:
        os.makedirs(cfg.state_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise Failed(f"cannot create the state dir {cfg.state_dir}: {exc.strerror}") from None
    check_root_owned(cfg.state_dir, "state dir")


CODE_CACHE_NAME = ".launcher-code.pyc"
"""The launcher's compiled code, in the state dir: what the in-unit stages run."""
_PYC_FLAGS = (0b11).to_bytes(4, "little")
"""A hash-based .pyc whose source hash is checked (PEP 552)."""


def code_cache_header(source):
    """The 16-byte header of a hash-based .pyc of `source` (bytes) for this Python. Pure."""
    # importlib.util.source_hash and MAGIC_NUMBER, from the modules the interpreter has
    # loaded already (importing importlib.util would cost ~2 ms of every start).
    import _imp

    bootstrap = sys.modules["_frozen_importlib_external"]
    return bootstrap.MAGIC_NUMBER + _PYC_FLAGS + _imp.source_hash(bootstrap._RAW_MAGIC_NUMBER, source)


def ensure_code_cache(cfg, launcher_path):
    """(python, path) of the launcher's code compiled for this Python, made now if missing
    or stale; None where it cannot be made (the units then run the launcher itself).

    Why: `exec` is a Python start in every task's unit, and compiling
    this file is about a third of it (~10 ms); Python never caches a script's code. The
    cache is a hash-based .pyc of the launcher's own (root-owned, checked) source, in the
    root-owned state dir (checked by `ensure_state_dir`); it is used only while it is a
    regular root-owned file, writable by root only, whose header names this Python and
    the source's current hash, and is otherwise replaced (written to a new file, then
    renamed over). The units run it as `python -IS CACHE`, never through sudo, which
    still allows the launcher alone."""
    try:
        with open(launcher_path, "rb") as fh:
            source = fh.read()
        header = code_cache_header(source)
    except (OSError, ImportError, AttributeError, KeyError):
        return None
    path = f"{cfg.state_dir}/{CODE_CACHE_NAME}"
    python = sys.executable
    if not python or not _PLAIN_PATH.match(python) or not _searchable_by_all(cfg.state_dir):
        return None  # `exec` runs as the task's user: it must be able to read the cache
    if _root_file_is(path, header):
        return python, path
    import marshal

    try:
        data = header + marshal.dumps(compile(source, launcher_path, "exec", dont_inherit=True))
        _replace_root_file(path, data)
    except (OSError, SyntaxError, ValueError):
        return None
    return python, path


def _root_file_is(path, prefix, whole=False):
    """Whether `path` is a regular root-owned file only root may write that begins with
    `prefix` (bytes), or is exactly `prefix` when `whole`. Never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return (
            stat.S_ISREG(st.st_mode)
            and st.st_uid == 0
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
            and (not whole or st.st_size == len(prefix))
            and os.read(fd, len(prefix)) == prefix
        )
    finally:
        os.close(fd)


def _replace_root_file(path, data):
    """Write `data` to a new file beside `path` (0644, durable), then rename it over
    `path`: a reader sees the old file or the new one whole. OSError on failure."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            os.fchmod(fd, 0o644)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


POSTSTOP_NAME = ".poststop.sh"
"""`POSTSTOP_SCRIPT` as a file in the state dir: what the units' hook runs."""


def poststop_script_path(cfg):
    return _poststop_script_in(clean_path(cfg.state_dir, "state dir"))


def _poststop_script_in(state_dir):
    return f"{state_dir}/{POSTSTOP_NAME}"


def ensure_poststop_script(cfg):
    """Make `poststop_script_path(cfg)` hold `POSTSTOP_SCRIPT` (root's, in the root-owned
    state dir), unless it does already; Failed where it cannot, for no task may start
    without its hook.

    Why a file and not the script in the unit: systemd 252 does not read a `$` in a
    transient unit's command back from the unit's file after a daemon-reload (it writes
    a backslash before it, which its parser then takes for an unknown escape), and a
    reload must leave a running task's hook whole. A task's own command may have `$`s:
    after a reload it is read back wrong, but it has run already, and runs only once."""
    path = poststop_script_path(cfg)
    data = POSTSTOP_SCRIPT.encode() + b"\n"
    if _root_file_is(path, data, whole=True):
        return path
    try:
        _replace_root_file(path, data)
    except OSError as exc:
        raise Failed(f"cannot write the poststop script {path}: {exc.strerror}") from None
    return path


def _searchable_by_all(directory):
    """Whether every account may reach files in `directory` (each directory up to / o+x)."""
    current = os.path.realpath(directory)
    while True:
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if current == "/":
            return True
        current = os.path.dirname(current)


def cmd_signal(cfg, task_id, signame, *, verb):
    require_root()
    unit = unit_name(task_id)
    props = show_unit(cfg, unit)
    running = (
        props.get("LoadState") == "loaded"
        and props.get("ActiveState") in ("active", "activating")
        and props.get("SubState") in ("running", "start")
    )
    if not running:
        if verb == "kill":
            return {"unit": unit, "signalled": False, "state": props.get("ActiveState", "unknown")}
        raise Failed(
            f"task {task_id} is not running (unit {unit} is "
            f"{props.get('LoadState') if props.get('LoadState') != 'loaded' else props.get('ActiveState')})"
        )
    proc = _run(kill_argv(cfg, unit, signame))
    if proc.returncode != 0:
        after = show_unit(cfg, unit)
        if unit_is_live(after):
            raise Failed(f"systemctl kill --signal={signame} {unit} failed: {_tool_error(proc)}")
        # It ended between the look and the signal: a kill has nothing left to do, and
        # a pause or resume of an ended task is refused as it would have been a moment
        # earlier, not reported as a systemctl failure.
        if verb == "kill":
            return {"unit": unit, "signalled": False, "state": after.get("ActiveState", "unknown")}
        raise Failed(f"task {task_id} is not running (unit {unit} ended meanwhile)")
    if verb == "kill" and signame != "SIGKILL":
        _run(kill_argv(cfg, unit, "SIGCONT"))  # a paused task must see the signal now
    return {"unit": unit, "signalled": True, "signal": signame}


def cmd_cleanup(cfg, task_id):
    require_root()
    unit = unit_name(task_id)
    props = show_unit(cfg, unit)
    if unit_is_live(props):
        proc = _run(systemctl_argv(cfg, "stop", unit))
        props = show_unit(cfg, unit)
        # A transient unit is unloaded the moment it ends, so one that ended between the
        # look and the stop makes `systemctl stop` fail with "not loaded". That is the
        # stopped state cleanup wants; only a unit still live after a failed stop is a
        # failure (its status record must then stay, for the next try).
        if proc.returncode != 0 and unit_is_live(props):
            raise Failed(f"systemctl stop {unit} failed: {_tool_error(proc)}")
    if props.get("LoadState") == "loaded" and not unit_is_live(props):
        _run(systemctl_argv(cfg, "reset-failed", unit))
    removed = False
    try:
        os.unlink(state_path(cfg, task_id))
        removed = True
    except FileNotFoundError:
        pass
    return {"unit": unit, "removed_status": removed}


def read_status(cfg, task_id):
    text = _read_text(state_path(cfg, task_id))
    if text is None:
        return None
    import json

    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def cmd_status(cfg, task_id):
    unit = unit_name(task_id)
    return {"unit": unit, "properties": show_unit(cfg, unit), "status": read_status(cfg, task_id)}


def cmd_exec(chunks):
    """In the unit, as the task's user: become the task. Never returns.

    It reads no config: `start` validated the request as root against the allow-list
    and wrote this spec and `become_user` into the unit; what is left to check is that
    systemd made this process that user (never root), and what the spec says of files.
    """
    refuse_under_sudo("exec")
    spec = decode_spec(chunks)
    user, uid = spec.get("user"), spec.get("uid")
    if not isinstance(uid, int) or uid < 0 or os.geteuid() != uid or os.getuid() != uid:
        raise Refused(f"exec must run as the task's user {user} (uid {uid}), not uid {os.geteuid()}")
    argv, env = spec["argv"], spec["env"]
    for path in (spec["stdout"], spec["stderr"]):
        if not path.startswith(spec["cwd"] + "/"):
            raise Refused(f"output path {path} is outside the shared dir")
    fds = []
    for path in (spec["stdout"], spec["stderr"]):
        try:
            fds.append(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644))
        except OSError as exc:
            raise Failed(f"cannot open {path}: {exc.strerror}") from None
        problem = log_file_problem(os.fstat(fds[-1]), path, user)
        if problem:
            raise Refused(problem)
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    try:
        os.chdir(spec["cwd"])
    except OSError as exc:
        os.write(2, f"hakuriver: cannot enter {spec['cwd']}: {exc.strerror}\n".encode())
        os._exit(126)
    # Python ignores these; an exec'd program must start with the default dispositions.
    for name in ("SIGPIPE", "SIGXFSZ", "SIGXFZ"):
        if hasattr(_signal, name):
            _signal.signal(getattr(_signal, name), _signal.SIG_DFL)
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - the task's own argv, after the drop to its user
    except OSError as exc:
        os.write(2, f"hakuriver: cannot run {argv[0]!r}: {exc.strerror}\n".encode("utf-8", "replace"))
        os._exit(127 if exc.errno == errno.ENOENT else 126)


class _StateDirOnly:
    """What `poststop` needs of the config when the unit names the state dir."""

    def __init__(self, state_dir):
        self.state_dir = clean_path(state_dir, "state dir")


def status_record_text(record):
    """The JSON text of a status record. Written out here when every value is a number
    or a plain word (SERVICE_RESULT, EXIT_CODE and EXIT_STATUS are systemd's words and
    numbers): the hook is a Python start in every task, and importing json costs it
    ~15 ms. Anything else goes through json. Pure."""
    words = _PLAIN_PATH.rest - {"/", "+", "@"}
    parts = []
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(key, str) or not all(c in words for c in key):
            break
        if isinstance(value, int):
            parts.append(f'"{key}": {value}')
        elif isinstance(value, float) and value == value and abs(value) != float("inf"):
            parts.append(f'"{key}": {value!r}')
        elif isinstance(value, str) and all(c in words for c in value):
            parts.append(f'"{key}": "{value}"')
        else:
            break
    else:
        return "{" + ", ".join(parts) + "}"
    import json

    return json.dumps(record)


def cmd_poststop(cfg, task_id):
    """ExecStopPost= of the unit, as root: record how the task ended. `cfg`: the
    launcher config, or (units this launcher starts) just the state dir the unit names."""
    refuse_under_sudo("poststop")
    require_root()
    unit = unit_name(task_id)
    if "SERVICE_RESULT" not in os.environ or "EXIT_CODE" not in os.environ:
        raise Refused("poststop runs only as a unit's ExecStopPost (SERVICE_RESULT is not set)")
    lines = (_read_text("/proc/self/cgroup") or "").splitlines()
    if not any(line.rsplit("/", 1)[-1] == unit for line in lines):
        raise Refused(f"poststop runs only inside {unit}")
    record = {
        "task_id": str(task_id),
        "unit": unit,
        "result": os.environ.get("SERVICE_RESULT", ""),
        "exit_code": os.environ.get("EXIT_CODE", ""),
        "exit_status": os.environ.get("EXIT_STATUS", ""),
        "oom_kills": oom_kills_from(lines),
        "time": time.time(),
    }
    ensure_state_dir(cfg)
    final = state_path(cfg, task_id)
    tmp = f"{final}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, status_record_text(record).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, final)
    return None


# --------------------------------------------------------------------- main

USAGE = f"""usage: {PROG} start < request.json
       {PROG} kill ID SIGNAL | pause ID | resume ID | cleanup ID | status ID | info
       {PROG} serve"""

SERVE_VERSION = 1
"""The `serve` protocol: the hello line says it; a runner speaks only a version it knows."""
MAX_SERVE_LINE = 6 * MAX_REQUEST_BYTES + 4096
"""The longest request line `serve` reads (a start request, escaped into JSON: 6 characters a byte at most)."""
SERVE_LIFETIME = 600.0
"""Seconds a `serve` answers before it asks for a restart: what it cannot watch (sudo
rules from an LDAP or an included file, an account locked through PAM) applies by then."""
NOT_SERVED = frozenset({"serve", "exec", "poststop"})


def _file_identity(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


AUTHORITY_PATHS = ("/etc/sudoers", "/etc/sudoers.d", "/etc/passwd", "/etc/group", "/etc/shadow")
"""What `serve` started by sudo watches: sudo's rules, and the accounts and groups they name."""


def _authority_identity(paths=AUTHORITY_PATHS):
    """What changes when sudo's rules change: each sudoers file and drop-in (and the
    drop-in directory itself, for files added or removed), and the account files."""
    seen = []
    for path in paths:
        seen.append((path, _file_identity(path)))
        try:
            names = sorted(os.listdir(path)) if os.path.isdir(path) else []
        except OSError:
            names = []
        seen.extend((f"{path}/{name}", _file_identity(f"{path}/{name}")) for name in names)
    return seen


def cmd_serve(launcher_path, config_path, reader, writer, *, authority_paths=AUTHORITY_PATHS, lifetime=SERVE_LIFETIME):
    """The launcher, long-lived: the runner starts it once (`sudo -n <launcher> serve`)
    instead of once per call, which saves a sudo, a Python start, the compile of this
    file and its imports on every task's start, kill and cleanup.

    Protocol, one line of JSON each way (`reader`/`writer`: binary stdin/stdout):
    first this process writes {"serve": SERVE_VERSION, "version": VERSION, "pid": N};
    then for each request {"argv": [SUB, ARG...], "input": TEXT or null} (TEXT: the
    bytes a one-shot call would read on stdin, as latin-1) it answers
    {"rc": N, "stdout": TEXT, "stderr": TEXT}: exactly what `main(argv)` would have
    exited with and printed, since it is `main` that answers, config and all read
    afresh. Once this file or the Python running it has changed (an upgrade), or, when
    sudo started it, sudo's rules or the account files (`authority_paths`: a revoked rule
    must stop the runner at its next call, not at its next session), or it has served
    `SERVE_LIFETIME` seconds, it answers {"restart": ...} without running anything and ends:
    the caller runs that request the one-shot way, through sudo and its current
    rules, and a new session serves the next. `serve`, `exec` and `poststop` are
    refused. It ends when stdin ends, or on a line it cannot read.

    Trust: the pipes belong to the process that started it, which could run each of
    these subcommands through sudo itself; nothing is allowed here that is not
    allowed there."""
    import io
    import json

    def answer(obj):
        writer.write(json.dumps(obj).encode("ascii") + b"\n")
        writer.flush()

    python = os.path.realpath(sys.executable)
    identity = (_file_identity(launcher_path), _file_identity(python))
    authority = _authority_identity(authority_paths) if "SUDO_UID" in os.environ else None
    until = time.monotonic() + lifetime
    answer({"serve": SERVE_VERSION, "version": VERSION, "pid": os.getpid()})
    while True:
        line = reader.readline(MAX_SERVE_LINE + 1)
        if not line:
            return 0
        if len(line) > MAX_SERVE_LINE or not line.endswith(b"\n"):
            answer(
                {
                    "rc": 2,
                    "stdout": "",
                    "stderr": f"{PROG}: serve: a request is not one line of at most {MAX_SERVE_LINE} bytes\n",
                }
            )
            return 2
        try:
            msg = json.loads(line)
            argv, text = msg["argv"], msg.get("input")
            if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
                raise ValueError("argv must be a non-empty list of strings")
            if text is not None and not isinstance(text, str):
                raise ValueError("input must be a string or null")
            data = None if text is None else text.encode("latin-1")
        except (ValueError, KeyError, TypeError, UnicodeEncodeError) as exc:
            answer({"rc": 2, "stdout": "", "stderr": f"{PROG}: serve: malformed request: {exc}\n"})
            return 2
        if (_file_identity(launcher_path), _file_identity(python)) != identity:
            answer({"restart": f"{launcher_path} or {python} changed since this serve started"})
            return 0
        if time.monotonic() > until:
            answer({"restart": f"served {lifetime:.0f}s"})
            return 0
        if authority is not None and _authority_identity(authority_paths) != authority:
            answer({"restart": "sudo's rules or the accounts changed since this serve started"})
            return 0
        if argv[0] in NOT_SERVED:
            answer({"rc": 2, "stdout": "", "stderr": f"{PROG}: {argv[0]} is never run through serve\n"})
            continue
        out, err = io.StringIO(), io.StringIO()
        rc = main(argv, stdin=io.BytesIO(data or b""), stdout=out, stderr=err, config_path=config_path)
        answer({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})


def _own_path():
    return os.path.realpath(__file__)


def main(argv=None, *, stdin=None, stdout=None, stderr=None, config_path=DEFAULT_CONFIG_PATH):
    args = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    try:
        if not args:
            raise Refused(USAGE)
        sub, rest = args[0], args[1:]
        arity = {
            "start": 0,
            "kill": 2,
            "pause": 1,
            "resume": 1,
            "cleanup": 1,
            "status": 1,
            "info": 0,
            "poststop": 1,
            "serve": 0,
        }
        if sub == "exec":
            if not rest:
                raise Refused("exec needs its spec")
        elif sub == "poststop" and len(rest) == 2:
            pass  # ID STATE_DIR: the unit names the state dir (see systemd_run_argv)
        elif sub not in arity:
            raise Refused(f"unknown subcommand {sub!r}\n{USAGE}")
        elif len(rest) != arity[sub]:
            raise Refused(f"{sub} takes {arity[sub]} argument(s), got {len(rest)}\n{USAGE}")
        task_id = (
            parse_task_id(rest[0]) if sub in ("kill", "pause", "resume", "cleanup", "status", "poststop") else None
        )
        if sub == "kill" and rest[1] not in SIGNALS:
            raise Refused(f"signal {rest[1]!r} is not one of {', '.join(SIGNALS)}")
        if sub == "exec":
            cmd_exec(rest)
            return 0  # not reached
        privileged = os.geteuid() == 0
        if privileged:
            launcher_path = check_root_owned(_own_path(), "the launcher")
        else:
            launcher_path = _own_path()
        if sub == "poststop":
            cmd_poststop(_StateDirOnly(rest[1]) if len(rest) == 2 else load_config(config_path), task_id)
            return 0
        cfg = load_config(config_path, trusted=privileged)
        if sub == "serve":
            return cmd_serve(launcher_path, config_path, stdin or sys.stdin.buffer, stdout or sys.stdout.buffer)
        if sub == "start":
            result = cmd_start(cfg, launcher_path, stdin or sys.stdin.buffer)
        elif sub == "kill":
            result = cmd_signal(cfg, task_id, rest[1], verb="kill")
        elif sub == "pause":
            result = cmd_signal(cfg, task_id, "SIGSTOP", verb="pause")
        elif sub == "resume":
            result = cmd_signal(cfg, task_id, "SIGCONT", verb="resume")
        elif sub == "cleanup":
            result = cmd_cleanup(cfg, task_id)
        elif sub == "status":
            result = cmd_status(cfg, task_id)
        else:
            result = {
                "version": VERSION,
                "launcher": launcher_path,
                "config": config_path,
                **cfg.to_json(),
                "privileged_groups": list(cfg.privileged_groups),
            }
        import json

        out.write(json.dumps(result) + "\n")
        out.flush()
        return 0
    except (Refused, Failed) as exc:
        err.write(f"{PROG}: {exc}\n")
        err.flush()
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for the runner to report
        err.write(f"{PROG}: internal error: {type(exc).__name__}: {exc}\n")
        err.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
