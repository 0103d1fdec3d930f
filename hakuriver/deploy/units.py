"""systemd units for the Host and the Runner, rendered in exactly one place.

Everything that writes a HakuRiver unit file goes through this module:
`hakuriver.init service` (which writes the files or prints one with
`--print`) and the Ansible roles. Rendering is pure: `render_unit(params)`
turns a `UnitParams` into the unit text, byte for byte the same for the same
params, with no look at the clock, the environment or the disk.
`unit_params_from_config()` is the only step that interprets a config; it
reads nothing beyond the `Config` object it is given.

How the Ansible roles stay byte-identical (the intended mechanism): the role
runs the *node's installed* generator,

    {{ venv }}/bin/hakuriver.init service --runner --print \\
        --config {{ config_path }} --user {{ user }} --group {{ group }} \\
        --python {{ venv }}/bin/python --system-path {{ system_path }} [--instance NAME]

registers its stdout (`changed_when: false`; it only prints) and writes it
with `ansible.builtin.copy: content=...` into /etc/systemd/system, notifying
the one handler that reloads systemd and restarts. The unit then always
matches the hakuriver version that runs it, and every input is explicit on
the command line, none taken from the remote shell. A controller-side filter
plugin may instead import this module (it needs only the standard library)
and call `render_unit(UnitParams(**params))` with the same explicit values;
tests/init keeps `hakuriver.init service --print` equal to `render_unit`
for the same inputs, so the two paths cannot diverge.

Decisions worth knowing (the why, in one place):

- `KillMode=process` on the Runner: see `_runner_service_lines()`.
- `Wants=docker.service`, not `Requires=`: a Runner without Docker still
  serves `--container NULL` tasks, and a Docker restart must not stop (or,
  with `Requires=`, fail) the Runner.
- No `NoNewPrivileges=` on the Runner: it reaches the task launcher through
  sudo, which that setting would break. Hardening (`harden=True`) is offered
  for the Host only.
- No `Documentation=man:...`: `systemd-analyze verify` fails a unit whose
  man page is not on the system's MANPATH, and pip installs pages under the
  venv's prefix.
- Values are checked before they reach a unit: a newline in a path would
  inject directives, so control characters, quotes and backslashes are
  refused, `%` is escaped as `%%` (systemd expands specifiers) and paths with
  spaces are quoted where the directive splits on spaces.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations; this module imports nothing of hakuriver at runtime
    from ..config import Config

ROLES = ("host", "runner")

DEFAULT_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""systemd's own default PATH: the system part of a unit's PATH unless one is
given. Not the PATH of whoever ran the generator: a service must not depend
on someone's interactive shell (pyenv shims, ~/.local/bin), and the same
inputs must give the same unit wherever it is rendered."""

HOME_PREFIXES = ("/home", "/root", "/run/user")
"""What `ProtectHome=` hides."""

TMP_PREFIXES = ("/tmp", "/var/tmp")  # noqa: S108 - names of what PrivateTmp= hides, not files opened
"""What `PrivateTmp=` replaces."""

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z|^[0-9]{1,10}\Z")
_INSTANCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_BAD_PATH_CHARS = re.compile(r'[\x00-\x1f\x7f"\'\\]')


class UnitError(ValueError):
    """A value that cannot go into a unit file, or a config that cannot make one."""


@dataclass(frozen=True)
class UnitParams:
    """Everything a unit file depends on. JSON-friendly: a dict of strings,
    a bool and lists of strings, so an Ansible filter can build one with
    `UnitParams(**vars)`."""

    role: str
    """"host" or "runner"."""
    user: str
    group: str
    python: str
    """Absolute path of the interpreter that has hakuriver installed (a venv's
    bin/python, kept as given: resolving its symlink would leave the venv)."""
    config_path: str
    """Absolute path of the config file the service reads (`--config`)."""
    working_directory: str
    """The config's `paths.shared_dir`."""
    path_env: str
    """The service's PATH: the venv's bin first, then the system path."""
    instance: str | None = None
    """Runner instance name: `hakuriver-runner-<instance>.service`."""
    harden: bool = False
    """Host only: add the sandboxing set (see `_hardening_lines()`)."""
    read_write_paths: tuple[str, ...] = ()
    """With `harden`: the only places the Host may write (database directory,
    shared dir, log file directories)."""
    version: str = ""
    """hakuriver version named in the header comment (empty: no version line)."""

    def __post_init__(self) -> None:
        if isinstance(self.read_write_paths, list):  # from JSON / Ansible
            object.__setattr__(self, "read_write_paths", tuple(self.read_write_paths))
        validate_params(self)


def unit_name(role: str, instance: str | None = None) -> str:
    """`hakuriver-host.service`, `hakuriver-runner.service`, `hakuriver-runner-NAME.service`."""
    if role not in ROLES:
        raise UnitError(f"unknown role {role!r} (host or runner)")
    if instance:
        if role != "runner":
            raise UnitError("only runner units take an instance name")
        check_instance(instance)
        return f"hakuriver-runner-{instance}.service"
    return f"hakuriver-{role}.service"


def render_unit(params: UnitParams) -> str:
    """The unit text for `params` (host or runner)."""
    return render_host_unit(params) if params.role == "host" else render_runner_unit(params)


def render_host_unit(params: UnitParams) -> str:
    if params.role != "host":
        raise UnitError(f"render_host_unit got a {params.role} unit's params")
    unit = [
        "Description=HakuRiver Host Server",
        "After=network.target",
    ]
    service = _common_service_lines(params)
    if params.harden:
        service += _hardening_lines(params)
    return _assemble(params, unit, service)


def render_runner_unit(params: UnitParams) -> str:
    if params.role != "runner":
        raise UnitError(f"render_runner_unit got a {params.role} unit's params")
    description = "HakuRiver Runner Agent"
    if params.instance:
        description += f" ({params.instance})"
    unit = [
        f"Description={description}",
        # network-online: shared_dir is often a network filesystem, and the Host
        # must be reachable to register. Wants (not Requires) docker.service: a
        # node without Docker still runs --container NULL tasks.
        "After=network.target network-online.target docker.service",
        "Wants=network-online.target docker.service",
    ]
    return _assemble(params, unit, _common_service_lines(params) + _runner_service_lines())


def _common_service_lines(params: UnitParams) -> list[str]:
    module = "hakuriver.cli.host" if params.role == "host" else "hakuriver.cli.runner"
    exec_start = " ".join(_exec_arg(a) for a in (params.python, "-m", module, "--config", params.config_path))
    return [
        "Type=simple",
        f"User={params.user}",
        f"Group={params.group}",
        f"WorkingDirectory={_escape(params.working_directory)}",
        f"ExecStart={exec_start}",
        "Restart=on-failure",
        "RestartSec=5",
        f'Environment="PATH={_escape(params.path_env)}"',
    ]


def _runner_service_lines() -> list[str]:
    # KillMode=process: stopping or restarting the Runner signals only its main
    # process. Tasks must survive a Runner restart (it re-adopts them), and
    # although they live outside this cgroup (Docker containers under the
    # engine; --container NULL tasks in their own systemd units started by the
    # root-owned launcher), the *client* processes that started them do not:
    # a `sudo ...` / `systemd-run` invocation still waiting on its unit runs
    # in the Runner's cgroup, and the default control-group mode (or `mixed`)
    # would kill it on every restart, cutting the link between a task and
    # whatever records its exit. The Runner itself spawns nothing that needs
    # reaping on stop, so leaving those clients alone costs nothing.
    return [
        "KillMode=process",
    ]


def _hardening_lines(params: UnitParams) -> list[str]:
    # The Host only serves HTTP, reads its config and writes its database, the
    # shared dir (environment tarballs, task logs it reads) and its log file:
    # everything else can be read-only or invisible. Each line here was
    # checked to keep the Host starting in tests/init (systemd 252).
    lines = [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ]
    if params.read_write_paths:
        lines.append("ReadWritePaths=" + " ".join(_quote_if_spaced(p) for p in params.read_write_paths))
    # Paths the Host needs decide two settings: a config, venv or database
    # under /home must stay readable (ProtectHome=read-only, not yes), and
    # one under /tmp must not vanish behind a private /tmp.
    needed = (params.config_path, params.python, *params.read_write_paths)
    lines.append(f"ProtectHome={'read-only' if any(_under(p, HOME_PREFIXES) for p in needed) else 'yes'}")
    if not any(_under(p, TMP_PREFIXES) for p in needed):
        lines.append("PrivateTmp=yes")
    lines += [
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
    ]
    return lines


def _assemble(params: UnitParams, unit: list[str], service: list[str]) -> str:
    header = [
        f"# {unit_name(params.role, params.instance)}: generated by hakuriver.init service"
        + (f" (hakuriver {params.version})" if params.version else "")
        + ".",
        f"# Config: {_comment_safe(params.config_path)}",
        "# Customise with `systemctl edit`; regenerate rather than edit this file.",
    ]
    if params.role == "runner":
        header.append(
            "# KillMode=process: a Runner restart must not kill its tasks or the processes that started them."
        )
    if params.harden:
        header.append("# Hardened: the Host may write only to the ReadWritePaths below.")
    parts = header + ["", "[Unit]", *unit, "", "[Service]", *service, "", "[Install]", "WantedBy=multi-user.target"]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ backup timer
BACKUP_SERVICE = "hakuriver-host-backup.service"
BACKUP_TIMER = "hakuriver-host-backup.timer"
_CALENDAR_RE = re.compile(r"^[A-Za-z0-9 :*,./~+-]{1,100}\Z")


@dataclass(frozen=True)
class BackupTimerParams:
    """Everything the Host's backup service and timer depend on (JSON-friendly)."""

    user: str
    """The account that writes the backups (the Host's service user)."""
    group: str
    python: str
    config_path: str
    """The Host's config: the service reads its address, admin token and [tls] from it."""
    backup_dir: str
    """Where the backups go: `host-<UTC time>.db`, the newest `keep` kept."""
    keep: int
    path_env: str
    on_calendar: str = "daily"
    """systemd's OnCalendar= (`daily`, `*-*-* 03:00:00`, ...)."""
    version: str = ""

    def __post_init__(self) -> None:
        check_account("user", self.user)
        check_account("group", self.group)
        check_path("python", self.python)
        check_path("config path", self.config_path)
        check_path("backup directory", self.backup_dir)
        for element in self.path_env.split(":"):
            check_path("PATH element", element)
        if isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1:
            raise UnitError(f"keep must be a whole number of at least 1, not {self.keep!r}")
        if not _CALENDAR_RE.match(self.on_calendar):
            raise UnitError(f"OnCalendar value {self.on_calendar!r}: use systemd's calendar syntax (e.g. daily)")
        if _BAD_PATH_CHARS.search(self.version) or " " in self.version:
            raise UnitError(f"version {self.version!r} is not a version string")


def _backup_header(name: str, params: BackupTimerParams) -> list[str]:
    return [
        f"# {name}: generated by hakuriver.init backup-timer"
        + (f" (hakuriver {params.version})" if params.version else "")
        + ".",
        f"# Config: {_comment_safe(params.config_path)}",
        "# Customise with `systemctl edit`; regenerate rather than edit this file.",
    ]


def render_backup_service(params: BackupTimerParams) -> str:
    """The oneshot service that saves one backup through the Host's API
    (`hakuriver.admin backup --into DIR --keep N`) and prunes older ones."""
    argv = (
        params.python,
        "-m",
        "hakuriver.cli.admin",
        "--config",
        params.config_path,
        "backup",
        "--into",
        params.backup_dir,
        "--keep",
        str(params.keep),
    )
    needed = (params.config_path, params.python, params.backup_dir)
    service = [
        "Type=oneshot",
        f"User={params.user}",
        f"Group={params.group}",
        # The backups hold token hashes and tasks' environment values.
        "UMask=0077",
        "ExecStart=" + " ".join(_exec_arg(a) for a in argv),
        f'Environment="PATH={_escape(params.path_env)}"',
        # It only talks to the Host and writes into the backup directory.
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=" + _quote_if_spaced(params.backup_dir),
        f"ProtectHome={'read-only' if any(_under(p, HOME_PREFIXES) for p in needed) else 'yes'}",
    ]
    if not any(_under(p, TMP_PREFIXES) for p in needed):
        service.append("PrivateTmp=yes")
    header = _backup_header(BACKUP_SERVICE, params) + [
        f"# Keeps the newest {params.keep} backups in {_comment_safe(params.backup_dir)}; "
        "they hold token hashes: keep them private."
    ]
    parts = [
        *header,
        "",
        "[Unit]",
        "Description=HakuRiver Host database backup",
        "After=network.target hakuriver-host.service",
        "",
        "[Service]",
        *service,
    ]
    return "\n".join(parts) + "\n"


def render_backup_timer(params: BackupTimerParams) -> str:
    """The timer that starts `BACKUP_SERVICE`; `Persistent=` catches up on a
    run missed while the machine was off."""
    parts = [
        *_backup_header(BACKUP_TIMER, params),
        "",
        "[Unit]",
        "Description=Back up the HakuRiver Host database",
        "",
        "[Timer]",
        f"OnCalendar={_escape(params.on_calendar)}",
        "Persistent=true",
        "RandomizedDelaySec=15min",
        f"Unit={BACKUP_SERVICE}",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------ values
def check_instance(instance: str) -> str:
    if not _INSTANCE_RE.match(instance):
        raise UnitError(
            f"instance name {instance!r}: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)"
        )
    return instance


def check_account(kind: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise UnitError(f"{kind} {name!r} is not a valid user or group name")
    return name


def check_path(what: str, path: str) -> str:
    if not path:
        raise UnitError(f"{what} is empty")
    if _BAD_PATH_CHARS.search(path):
        raise UnitError(
            f"{what} {path!r} contains a quote, backslash or control character, which a unit file cannot carry safely"
        )
    if not os.path.isabs(path):
        raise UnitError(f"{what} {path!r} must be an absolute path")
    return path


def validate_params(params: UnitParams) -> None:
    if params.role not in ROLES:
        raise UnitError(f"unknown role {params.role!r} (host or runner)")
    check_account("user", params.user)
    check_account("group", params.group)
    check_path("python", params.python)
    check_path("config path", params.config_path)
    check_path("working directory (paths.shared_dir)", params.working_directory)
    for element in params.path_env.split(":"):
        check_path("PATH element", element)
    if params.instance is not None:
        check_instance(params.instance)
        unit_name(params.role, params.instance)
    if params.harden and params.role != "host":
        raise UnitError("hardening is offered for the Host unit only (the Runner reaches its launcher through sudo)")
    for p in params.read_write_paths:
        check_path("read-write path", p)
    if _BAD_PATH_CHARS.search(params.version) or " " in params.version:
        raise UnitError(f"version {params.version!r} is not a version string")


def _escape(value: str) -> str:
    return value.replace("%", "%%")


def _exec_arg(arg: str) -> str:
    arg = _escape(arg)
    return f'"{arg}"' if (" " in arg or "\t" in arg) else arg


def _quote_if_spaced(path: str) -> str:
    path = _escape(path)
    return f'"{path}"' if " " in path else path


def _comment_safe(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def build_path_env(python: str, system_path: str | None) -> str:
    """`<dir of python>:<system path>`: absolute elements only (relative and
    empty ones are dropped), no duplicates, the interpreter's bin directory
    first. No system path (None, or nothing absolute in it) means
    `DEFAULT_SYSTEM_PATH`."""
    system = [e.rstrip("/") or e for e in (system_path or "").split(":") if e and os.path.isabs(e)]
    elements: list[str] = []
    for element in [os.path.dirname(python), *(system or DEFAULT_SYSTEM_PATH.split(":"))]:
        if element not in elements:
            elements.append(element)
    return ":".join(elements)


def _under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def _dedupe(paths: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for p in paths:
        p = os.path.normpath(p)
        if p not in out:
            out.append(p)
    return tuple(out)


# ------------------------------------------------------------------ config
def required_keys(role: str) -> tuple[str, ...]:
    """What the service refuses to start without (see host/app.py, runner/app.py),
    besides its credentials (see `missing_credentials`)."""
    if role == "host":
        return ("database.db_file", "paths.shared_dir")
    return ("paths.shared_dir", "paths.local_temp_dir")


def missing_credentials(config: Config, role: str) -> str | None:
    """What the service says when its credentials are missing, or None. The
    Host needs an admin token and the runner secret, a Runner the runner
    secret; the single 0.4-dev `auth.token` stands in for either."""
    auth = config.auth
    if role == "host" and not (auth.effective_admin_token() and auth.effective_runner_token()):
        return "auth.admin_token and auth.runner_token (or the single auth.token)"
    if role != "host" and not auth.effective_runner_token():
        return "auth.runner_token (or the single auth.token)"
    return None


def unit_params_from_config(
    config: Config,
    role: str,
    user: str,
    group: str,
    python: str,
    path_env: str,
    instance: str | None = None,
    harden: bool = False,
    version: str = "",
) -> UnitParams:
    """Params for `role`'s unit from a config that was read from a file.

    `config.source` becomes the unit's `--config` (it must be absolute: the
    service does not start where `hakuriver.init` ran), `paths.shared_dir`
    its working directory. The keys the service requires must be set.
    """
    if role not in ROLES:
        raise UnitError(f"unknown role {role!r} (host or runner)")
    if not config.source:
        raise UnitError("a unit needs a config file; the built-in defaults have no auth token or paths")
    source = config.source
    try:
        config.require(*required_keys(role))
    except Exception as exc:  # noqa: BLE001 - ConfigError; keep this module free of hakuriver imports
        raise UnitError(str(getattr(exc, "message", exc))) from None
    missing = missing_credentials(config, role)
    if missing:
        raise UnitError(f"{missing} must be set in {source}")
    shared = os.path.expanduser(config.paths.shared_dir)
    check_path(f"paths.shared_dir in {source}", shared)
    rw: tuple[str, ...] = ()
    if harden:
        wanted = [shared]
        if role == "host":
            wanted.append(os.path.dirname(os.path.expanduser(config.database.db_file)))
            if config.paths.host_log_file:
                wanted.append(os.path.dirname(os.path.expanduser(config.paths.host_log_file)))
        for p in wanted:
            check_path(f"a path in {source}", p)
        rw = _dedupe(wanted)
    return UnitParams(
        role=role,
        user=user,
        group=group,
        python=python,
        config_path=source,
        working_directory=shared,
        path_env=path_env,
        instance=instance,
        harden=harden,
        read_write_paths=rw,
        version=version,
    )


__all__ = [
    "BACKUP_SERVICE",
    "BACKUP_TIMER",
    "DEFAULT_SYSTEM_PATH",
    "BackupTimerParams",
    "ROLES",
    "UnitError",
    "UnitParams",
    "build_path_env",
    "check_account",
    "check_instance",
    "check_path",
    "missing_credentials",
    "render_backup_service",
    "render_backup_timer",
    "render_host_unit",
    "render_runner_unit",
    "render_unit",
    "required_keys",
    "unit_name",
    "unit_params_from_config",
]
