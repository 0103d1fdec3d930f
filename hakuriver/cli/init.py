"""`hakuriver.init`: a starter config, systemd units, the Runner's sudoers drop-in, TLS certificates.

    hakuriver.init config --shared-dir /mnt/cluster --db-file /var/lib/hakuriver/host.db
    hakuriver.init service --host --config ~/.hakuriver/config.toml
    hakuriver.init service --runner --instance gpu1 --config /etc/hakuriver/gpu1.toml --print
    hakuriver.init backup-timer --config /etc/hakuriver/host.toml --dir /var/lib/hakuriver/backups --keep 7
    hakuriver.init sudoers --runner --user hakuriver --output hakuriver.sudoers
    hakuriver.init tls ca --dir /var/lib/hakuriver/tls-ca
    hakuriver.init tls cert gpu1 --dir /var/lib/hakuriver/tls-ca --ip 10.0.0.11

It only writes files (or prints them): it never runs sudo, never copies into
/etc and never reloads systemd. It prints the commands that do, for a person
or a playbook to run. Unit text comes from `hakuriver.deploy.units`, the
generator the Ansible roles use too; the config text from
`hakuriver.deploy.configfile`.
"""

from __future__ import annotations

import argparse
import dataclasses
import grp
import json
import os
import pwd
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .. import __version__, launcher
from ..config import load_config, read_config_file
from ..deploy import launcher_install, preflight, units
from ..deploy.configfile import new_token, render_config, write_private_file
from ..deploy.sudoers import DEFAULT_SUDOERS_PATH, render_sudoers
from ..deploy.units import UnitError, check_account
from ..errors import HakuRiverError, ValidationError
from ..parsing import validate_node_name
from ..safefiles import write_file
from .common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CliParser,
    UsageError,
    fail,
    positive_int_arg,
)

PROG = "hakuriver.init"
DEFAULT_CONFIG_OUTPUT = "~/.hakuriver/config.toml"
MIN_TOKEN_LENGTH = 16
SUDOERS_DROPIN = DEFAULT_SUDOERS_PATH
"""Where the Runner's sudoers rule goes."""

EPILOG = """\
exit status:
  0    success
  1    failure: a missing or invalid config, a file that exists (config or tls without --force),
       a directory that does not exist, a file that cannot be written, no CA to sign with
  2    usage error (bad flags or values; nothing was written)"""


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Set up HakuRiver on a machine: write a starter config, generate systemd units for\n"
        "the Host and Runner, the Runner's sudoers drop-in, and a cluster CA with node certificates\n"
        "for HTTPS. Writes files (or prints them) and prints the commands that install them; never\n"
        "runs sudo or systemctl itself.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_config(sub)
    _add_service(sub)
    _add_backup_timer(sub)
    _add_sudoers(sub)
    _add_launcher(sub)
    _add_tls(sub)
    return parser


# ------------------------------------------------------------------- config
def _add_config(sub: Any) -> None:
    p = sub.add_parser(
        "config",
        help="write a commented starter config with fresh credentials",
        description="Write a commented config with every key, its default, and fresh random credentials\n"
        "(auth.admin_token for the first admin, auth.runner_token for the Runners, metrics.scrape_token\n"
        "for a Prometheus server), readable by its owner only (mode 0600). Flags set common values so\n"
        "scripts need no editing. Paths given as flags are stored as absolute paths.\n\n"
        "On a Runner: --runner-token-file FILE (the Host's runner_token), no admin token.\n"
        "For a lab member: --client --token-file FILE writes only the Host's address and their token.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", metavar="PATH", help=f"where to write it (default: {DEFAULT_CONFIG_OUTPUT})")
    p.add_argument("--force", action="store_true", help="overwrite an existing file (its token is replaced)")
    g = p.add_argument_group("network")
    g.add_argument(
        "--host-address", metavar="ADDR", help="network.host_reachable_address: how Runners and CLIs reach the Host"
    )
    g.add_argument("--host-bind-ip", metavar="ADDR", help="network.host_bind_ip: the address the Host listens on")
    g.add_argument("--host-port", type=_port_arg, metavar="PORT", help="network.host_port")
    g.add_argument("--runner-address", metavar="ADDR", help="network.runner_address: how the Host reaches this Runner")
    g.add_argument("--runner-port", type=_port_arg, metavar="PORT", help="network.runner_port")
    g = p.add_argument_group("paths")
    g.add_argument("--shared-dir", metavar="DIR", help="paths.shared_dir: the same path on every node")
    g.add_argument("--local-temp-dir", metavar="DIR", help="paths.local_temp_dir: node-local scratch")
    g.add_argument("--db-file", metavar="FILE", help="database.db_file: the Host's SQLite file")
    g.add_argument("--host-log-file", metavar="FILE", help="paths.host_log_file")
    g.add_argument("--runner-log-file", metavar="FILE", help="paths.runner_log_file")
    g = p.add_argument_group("identity")
    g.add_argument("--runner-name", metavar="NAME", help="runner.name: the node name this Runner registers as")
    g.add_argument(
        "--runner-user",
        metavar="USER",
        help="environment.runner_user: the account --container NULL tasks of users without a Unix account run as",
    )
    g = p.add_argument_group("credentials")
    tok = g.add_mutually_exclusive_group()
    tok.add_argument(
        "--token",
        metavar="TOKEN",
        help="auth.token: a user's token, or a single token for everything (visible in ps: prefer --token-file)",
    )
    tok.add_argument(
        "--token-file", metavar="FILE", help="read auth.token from FILE ('-': stdin); with --client, the user's token"
    )
    tok.add_argument(
        "--runner-token-file",
        metavar="FILE",
        help="read auth.runner_token from FILE ('-': stdin): a Runner's config, with the Host's runner token",
    )
    g.add_argument(
        "--client",
        action="store_true",
        help="a client-only config: the Host's address and port and the user's token (--token-file), nothing else",
    )
    p.set_defaults(func=_cmd_config)


def _cmd_config(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {}

    def put(key: str, value: Any) -> None:
        if value is not None:
            section, _, name = key.partition(".")
            overrides.setdefault(section, {})[name] = value

    put("network.host_reachable_address", _address(args.host_address, "--host-address"))
    put("network.host_bind_ip", _address(args.host_bind_ip, "--host-bind-ip"))
    put("network.host_port", args.host_port)
    put("network.runner_address", _address(args.runner_address, "--runner-address"))
    put("network.runner_port", args.runner_port)
    for flag, key in (
        ("shared_dir", "paths.shared_dir"),
        ("local_temp_dir", "paths.local_temp_dir"),
        ("db_file", "database.db_file"),
        ("host_log_file", "paths.host_log_file"),
        ("runner_log_file", "paths.runner_log_file"),
    ):
        value = getattr(args, flag)
        if value is not None:
            if not value.strip():
                raise UsageError(f"--{flag.replace('_', '-')} must not be empty")
            put(key, os.path.abspath(os.path.expanduser(value)))
    if args.runner_name is not None:
        put("runner.name", _usage("--runner-name", validate_node_name, args.runner_name))
    if args.runner_user is not None:
        put("environment.runner_user", _usage("--runner-user", check_account, "user", args.runner_user))
    if args.token is not None:
        put("auth.token", _check_token(args.token, "--token"))
        origin = "the token given"
    elif args.token_file is not None:
        put("auth.token", _check_token(_read_token_file(args.token_file), f"the token in {args.token_file}"))
        origin = f"the token from {args.token_file}"
    elif args.runner_token_file is not None:
        secret = _read_token_file(args.runner_token_file, "--runner-token-file")
        put("auth.runner_token", _check_token(secret, f"the token in {args.runner_token_file}"))
        origin = f"the runner token from {args.runner_token_file}"
    elif args.client:
        raise UsageError("--client needs the user's token: --token-file FILE (or --token TOKEN)")
    else:
        put("auth.admin_token", new_token())
        put("auth.runner_token", new_token())
        put("metrics.scrape_token", new_token())
        origin = "a fresh admin token, runner token and metrics scrape token"
    if args.client:
        return _write_client_config(args, overrides, origin)

    path = _output_path(args)
    _check_home(args)
    text = render_config(
        overrides,
        header=(
            f"HakuRiver config, written by hakuriver.init config (hakuriver {__version__}).\n"
            "Every key is listed with its default; an unknown key is an error. Mode 0600: it holds the token."
        ),
    )
    try:
        write_private_file(path, text, overwrite=args.force)
    except FileExistsError:
        raise _Failure(f"{path} exists; pass --force to overwrite it (its auth token changes)") from None
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path} (mode 0600, {origin})")
    paths = overrides.get("paths", {})
    db_file = overrides.get("database", {}).get("db_file", "")
    for finding in preflight.path_findings(
        [
            ("paths.shared_dir", paths.get("shared_dir", "")),
            ("paths.local_temp_dir", paths.get("local_temp_dir", "")),
            ("database.db_file's directory", os.path.dirname(db_file) if db_file else ""),
        ],
        str(path),
    ):
        _note(finding.message)
    print("next:")
    print(f"  review it, then: hakuriver.init service --host --config {shlex.quote(str(path))}   (on the Host)")
    print(f"            or:   hakuriver.init service --runner --config {shlex.quote(str(path))} (on a Runner)")
    if "admin_token" in overrides.get("auth", {}):
        print("  Runners need this file's auth.runner_token: hakuriver.init config --runner-token-file FILE on them")
        print("  lab members get their own token: hakuriver.admin user add NAME, then hakuriver.init config --client")
    return EXIT_OK


def _check_home(args: argparse.Namespace) -> None:
    """Without --output the config goes to the invoking user's home: say so when
    that home is missing (a `useradd --system` without --create-home), instead of
    the "Permission denied" that writing below it would end in."""
    if args.output:
        return
    home = os.path.expanduser("~")
    if home == "~" or os.path.isdir(home):
        return
    try:
        name = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        name = f"uid {os.geteuid()}"
    account = preflight.Account(name, os.geteuid(), os.getegid(), home, frozenset())
    finding = preflight.missing_home(account)
    if finding:
        raise _Failure(finding.message)


def _output_path(args: argparse.Namespace) -> Path:
    expanded = os.path.expanduser(args.output or DEFAULT_CONFIG_OUTPUT)
    if expanded.startswith("~"):
        raise _Failure(f"cannot tell where {expanded} is (no home directory); pass --output PATH")
    return Path(os.path.abspath(expanded))


def _port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _address(value: str | None, flag: str) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or any(c.isspace() or c in "/\"'\\" for c in value):
        raise UsageError(f"{flag} {value!r} is not a host name or IP address")
    return value


def _check_token(token: str, what: str) -> str:
    if len(token) < MIN_TOKEN_LENGTH:
        raise UsageError(f"{what} is shorter than {MIN_TOKEN_LENGTH} characters: too easy to guess")
    if any(not c.isprintable() or c.isspace() for c in token):
        raise UsageError(f"{what} contains whitespace or control characters")
    return token


def _read_token_file(name: str, flag: str = "--token-file") -> str:
    try:
        if name == "-":
            return sys.stdin.readline().strip()
        with open(os.path.expanduser(name), encoding="utf-8") as fh:
            return fh.readline().strip()
    except OSError as exc:
        raise _Failure(f"cannot read {flag} {name}: {exc.strerror or exc}") from None


def _write_client_config(args: argparse.Namespace, overrides: dict[str, dict[str, Any]], origin: str) -> int:
    """A lab member's config: where the Host is, and their own token. It holds
    no cluster secret, so a leaked client config costs one user's token."""
    from ..deploy.configfile import write_private_file

    network = overrides.get("network", {})
    lines = [
        f"# HakuRiver client config, written by hakuriver.init config --client (hakuriver {__version__}).",
        "# Mode 0600: it holds your API token. $HAKURIVER_TOKEN, when set, wins over auth.token.",
        "",
        "[network]",
        f"host_reachable_address = {_toml_str(network.get('host_reachable_address', '127.0.0.1'))}",
        f"host_port = {int(network.get('host_port', 8000))}",
        "",
        "[auth]",
        f"token = {_toml_str(overrides['auth']['token'])}",
        "",
    ]
    path = _output_path(args)
    _check_home(args)
    try:
        write_private_file(path, "\n".join(lines), overwrite=args.force)
    except FileExistsError:
        raise _Failure(f"{path} exists; pass --force to overwrite it") from None
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"wrote {path} (mode 0600, client only, {origin})")
    print(f"next: hakuriver.task --config {shlex.quote(str(path))} list   (or put it at ~/.hakuriver/config.toml)")
    return EXIT_OK


def _toml_str(value: str) -> str:
    import json

    return json.dumps(value)  # a TOML basic string is a JSON string for printable text


# ------------------------------------------------------------------ service
def _add_service(sub: Any) -> None:
    p = sub.add_parser(
        "service",
        help="generate systemd units for the Host and/or the Runner",
        description="Generate hakuriver-host.service and/or hakuriver-runner.service from a config.\n"
        "User, group and python default to the invoking user and this interpreter; the unit\n"
        "runs `<python> -m hakuriver.cli.<role> --config <absolute config path>` in the\n"
        "config's paths.shared_dir. Without --config the usual lookup applies\n"
        "($HAKURIVER_CONFIG, then ~/.hakuriver/config.toml).\n\n"
        "Several Runners on one machine: give each its own config (runner.name,\n"
        "network.runner_port) and --instance NAME, which writes hakuriver-runner-NAME.service.",
        epilog="Writes files only; then, as root: cp the unit(s) to /etc/systemd/system,\n"
        "systemctl daemon-reload, systemctl enable --now UNIT; logs: journalctl -u UNIT.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    role = p.add_mutually_exclusive_group(required=True)
    role.add_argument(
        "--host", action="store_const", const=("host",), dest="roles", help="the Host unit (hakuriver-host.service)"
    )
    role.add_argument(
        "--runner",
        action="store_const",
        const=("runner",),
        dest="roles",
        help="the Runner unit (hakuriver-runner.service)",
    )
    role.add_argument("--all", action="store_const", const=("host", "runner"), dest="roles", help="both units")
    p.add_argument("--config", metavar="PATH", help="config for both units")
    p.add_argument("--host-config", metavar="PATH", help="config for the Host unit (overrides --config)")
    p.add_argument("--runner-config", metavar="PATH", help="config for the Runner unit (overrides --config)")
    p.add_argument("--output-dir", metavar="DIR", default=".", help="where to write the unit files (default: .)")
    p.add_argument(
        "--print",
        action="store_true",
        dest="print_unit",
        help="print the unit to stdout instead of writing a file (one role only)",
    )
    g = p.add_argument_group("overrides")
    g.add_argument("--user", metavar="USER", help="User= (default: the invoking user); it must exist here")
    g.add_argument(
        "--group", metavar="GROUP", help="Group= (default: --user's primary group, else the invoking user's group)"
    )
    g.add_argument(
        "--python", metavar="PATH", help="interpreter with hakuriver installed (default: the one running this command)"
    )
    g.add_argument(
        "--system-path",
        metavar="PATH",
        help="the PATH after the interpreter's bin directory (default: systemd's own, "
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; a service should not "
        "depend on the PATH of whoever generated it)",
    )
    g.add_argument(
        "--instance",
        metavar="NAME",
        help="Runner instance: writes hakuriver-runner-NAME.service (several Runners on one machine)",
    )
    g.add_argument(
        "--harden",
        action="store_true",
        help="add systemd sandboxing to the Host unit (ProtectSystem=strict with write access "
        "only to the database directory, shared dir and log directory; ProtectHome, "
        "PrivateTmp, NoNewPrivileges, ...); the Runner unit is never hardened (it uses sudo)",
    )
    p.set_defaults(func=_cmd_service)


def _cmd_service(args: argparse.Namespace) -> int:
    roles: tuple[str, ...] = args.roles
    if args.instance is not None and "runner" not in roles:
        raise UsageError("--instance names a Runner unit; add --runner or --all")
    if args.harden and roles == ("runner",):
        raise UsageError("--harden applies to the Host unit only (the Runner reaches its launcher through sudo)")
    if args.print_unit and len(roles) > 1:
        raise UsageError("--print prints one unit: choose --host or --runner")
    # A per-role config flag for a role not generated would be dropped without a word.
    for flag, role_name in (("host_config", "host"), ("runner_config", "runner")):
        if getattr(args, flag) is not None and role_name not in roles:
            raise UsageError(
                f"--{flag.replace('_', '-')} applies to the {role_name.title()} unit; "
                f"add --{role_name} or --all, or use --config"
            )
    instance = _usage("--instance", units.check_instance, args.instance) if args.instance is not None else None
    user, group, python, path_env = _unit_account(args)
    account = preflight.lookup_account(user)

    out_dir = Path(os.path.expanduser(args.output_dir))
    if not args.print_unit and not out_dir.is_dir():
        raise _Failure(f"--output-dir {args.output_dir} does not exist or is not a directory")

    rendered: list[tuple[str, str]] = []
    notes: list[str] = []
    findings: list[preflight.Finding] = []
    for role in roles:
        config_arg = (args.host_config if role == "host" else args.runner_config) or args.config
        config = _service_config(config_arg)
        params = units.unit_params_from_config(
            config,
            role,
            user=user,
            group=group,
            python=python,
            path_env=path_env,
            instance=instance if role == "runner" else None,
            harden=args.harden and role == "host",
            version=__version__,
        )
        if params.instance and not config.runner.name:
            notes.append(
                f"runner.name is empty in {config.source}: every Runner instance on this machine "
                "would register under the hostname; give each its own runner.name"
            )
        findings += preflight.service_findings(config, role, account)
        rendered.append((units.unit_name(role, params.instance), units.render_unit(params)))
    findings = preflight.unique(findings)
    for finding in findings:
        if finding.level == preflight.ERROR:
            raise _Failure(finding.message)
    notes[:0] = [f.message for f in findings]
    if not os.path.exists(python):
        notes.append(f"{python} does not exist here; the unit will not start where it does not")
    if user == "root":
        notes.append("the unit runs as root; pass --user to run it as a dedicated user")
    if args.harden and "runner" in roles:
        notes.append("--harden applied to the Host unit only")

    if args.print_unit:
        [(_, text)] = rendered
        sys.stdout.write(text)
        for note in dict.fromkeys(notes):
            _note(note)
        return EXIT_OK

    written = []
    for name, text in rendered:
        path = out_dir / name
        _write_public(path, text)
        written.append((name, path))
        print(f"wrote {path}")
    print("next, as root:")
    files = " ".join(shlex.quote(str(p)) for _, p in written)
    names = " ".join(n for n, _ in written)
    print(f"  cp {files} /etc/systemd/system/")
    print("  systemctl daemon-reload")
    print(f"  systemctl enable --now {names}")
    print(f"  systemctl status {names}")
    print("  journalctl -u " + " -u ".join(n for n, _ in written) + " -f")
    if "runner" in roles:
        # The sudoers rule alone enables nothing: the Runner needs the launcher and its
        # allow-list too, which `init launcher` writes together with the rule.
        runner_config = args.runner_config or args.config
        config_flag = f" --config {shlex.quote(runner_config)}" if runner_config else ""
        print(
            f"  for --container NULL tasks: hakuriver.init launcher{config_flag} --user {user} "
            "--task-user ACCOUNT, run the steps it prints, then restart the Runner"
        )
    for note in dict.fromkeys(notes):
        _note(note)
    return EXIT_OK


def _unit_account(args: argparse.Namespace) -> tuple[str, str, str, str]:
    """User=, Group=, the interpreter and PATH of a unit, from --user, --group,
    --python and --system-path (defaults: the invoking user and interpreter)."""
    if args.user:
        user = _usage("--user", units.check_account, "user", args.user)
        # The unit runs as this account here: one that does not exist would fail at
        # start, and the invoker's group (root's, when run as root) must not be
        # handed to it silently.
        if preflight.lookup_account(user) is None:
            raise _Failure(f"--user {user}: no such user on this machine; create it first (useradd --system ...)")
    else:
        user = _current_user()
    if args.group:
        group = _usage("--group", units.check_account, "group", args.group)
    elif args.user:
        try:
            group = preflight.primary_group(user)
        except ValueError as exc:
            raise _Failure(str(exc)) from None
    else:
        group = _current_group()
    python = args.python or sys.executable
    if not python:
        raise _Failure("cannot tell which python runs this command; pass --python")
    python = os.path.abspath(os.path.expanduser(python))  # not resolved: a venv's python is a symlink
    return user, group, python, units.build_path_env(python, args.system_path)


# ------------------------------------------------------------------ backup timer
def _add_backup_timer(sub: Any) -> None:
    p = sub.add_parser(
        "backup-timer",
        help="generate the Host's daily database backup (a systemd service and timer)",
        description="Generate hakuriver-host-backup.service and hakuriver-host-backup.timer: once a day\n"
        "(--on-calendar) the service runs `hakuriver.admin --config CONFIG backup --into DIR --keep N`\n"
        "as the Host's service user, which saves an online copy of the Host database through the\n"
        "Host's API and removes all but the newest N. CONFIG is the Host's config (its admin token\n"
        "and address). The backups hold users' token hashes and tasks' environment values: DIR\n"
        "must be private to the service user (0700); copy them to another machine to survive a\n"
        "lost disk.",
        epilog="Writes files only; then, as root: cp both units to /etc/systemd/system,\n"
        "systemctl daemon-reload, systemctl enable --now hakuriver-host-backup.timer;\n"
        "run one now: systemctl start hakuriver-host-backup.service.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="PATH", help="the Host's config (default: the usual lookup)")
    p.add_argument("--dir", metavar="DIR", required=True, help="where the backups go (absolute; must exist)")
    p.add_argument(
        "--keep", type=positive_int_arg, default=7, metavar="N", help="how many backups to keep (default: 7)"
    )
    p.add_argument(
        "--on-calendar",
        metavar="WHEN",
        default="daily",
        help="the timer's OnCalendar= (default: daily; e.g. '*-*-* 03:00:00')",
    )
    p.add_argument("--output-dir", metavar="DIR", default=".", help="where to write the unit files (default: .)")
    p.add_argument(
        "--print",
        choices=("service", "timer"),
        dest="print_unit",
        help="print that unit to stdout instead of writing files",
    )
    g = p.add_argument_group("overrides")
    g.add_argument("--user", metavar="USER", help="User= (default: the invoking user); the Host's service user")
    g.add_argument("--group", metavar="GROUP", help="Group= (default: --user's primary group)")
    g.add_argument("--python", metavar="PATH", help="interpreter with hakuriver installed (default: this one)")
    g.add_argument("--system-path", metavar="PATH", help="the PATH after the interpreter's bin directory")
    p.set_defaults(func=_cmd_backup_timer)


def _cmd_backup_timer(args: argparse.Namespace) -> int:
    user, group, python, path_env = _unit_account(args)
    config = _service_config(args.config)
    backup_dir = os.path.expanduser(args.dir)
    try:
        params = units.BackupTimerParams(
            user=user,
            group=group,
            python=python,
            config_path=config.source,
            backup_dir=backup_dir,
            keep=args.keep,
            path_env=path_env,
            on_calendar=args.on_calendar,
            version=__version__,
        )
    except units.UnitError as exc:
        raise UsageError(str(exc)) from None
    if not config.auth.client_token():
        raise _Failure(f"{config.source} has no admin token (auth.admin_token): the backup service needs one")
    rendered = {
        "service": (units.BACKUP_SERVICE, units.render_backup_service(params)),
        "timer": (units.BACKUP_TIMER, units.render_backup_timer(params)),
    }
    notes = []
    if not os.path.isdir(backup_dir):
        notes.append(f"{backup_dir} does not exist here; create it, owned by {user}, mode 0700")
    elif os.stat(backup_dir).st_mode & 0o077:
        notes.append(f"{backup_dir} is readable by others; the backups hold token hashes: chmod 0700 it")
    if args.print_unit:
        sys.stdout.write(rendered[args.print_unit][1])
        for note in notes:
            _note(note)
        return EXIT_OK
    out_dir = Path(os.path.expanduser(args.output_dir))
    if not out_dir.is_dir():
        raise _Failure(f"--output-dir {args.output_dir} does not exist or is not a directory")
    paths = []
    for name, text in rendered.values():
        path = out_dir / name
        _write_public(path, text)
        paths.append(path)
        print(f"wrote {path}")
    print("next, as root:")
    print(f"  cp {' '.join(shlex.quote(str(p)) for p in paths)} /etc/systemd/system/")
    print("  systemctl daemon-reload")
    print(f"  systemctl enable --now {units.BACKUP_TIMER}")
    print(f"  systemctl start {units.BACKUP_SERVICE}   # one backup now; journalctl -u {units.BACKUP_SERVICE}")
    for note in notes:
        _note(note)
    return EXIT_OK


def _service_config(path: str | None) -> Any:
    if path:
        absolute = Path(os.path.abspath(os.path.expanduser(path)))
        if not absolute.is_file():
            raise _Failure(f"config file {absolute} does not exist")
        config = read_config_file(absolute)
        return dataclasses.replace(config, source=str(absolute))
    config = load_config(None)
    if config.source is None:
        raise _Failure(
            "no config file found ($HAKURIVER_CONFIG, ~/.hakuriver/config.toml): "
            "run 'hakuriver.init config' first or pass --config PATH"
        )
    return config


def _write_public(path: Path, text: str, mode: int = 0o644) -> None:
    """Atomically (temp file + rename) write a generated file with `mode`."""
    try:
        write_file(path, text, mode=mode, overwrite=True)
    except OSError as exc:
        raise _Failure(f"cannot write {path}: {exc.strerror or exc}") from None


def _current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        raise _Failure(f"uid {os.geteuid()} has no user name; pass --user") from None


def _current_group() -> str:
    try:
        return grp.getgrgid(os.getegid()).gr_name
    except KeyError:
        raise _Failure(f"gid {os.getegid()} has no group name; pass --group") from None


# ------------------------------------------------------------------ sudoers
def _add_sudoers(sub: Any) -> None:
    p = sub.add_parser(
        "sudoers",
        help="print or write the Runner's sudoers drop-in",
        description="The sudoers rule that lets the Runner's user start --container NULL tasks through\n"
        "HakuRiver's root-owned launcher, and nothing else. Check it with `visudo -cf FILE`,\n"
        f"install it as {SUDOERS_DROPIN} with mode 0440 (owner root).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--runner", action="store_true", required=True, help="the Runner's rule (the only one there is)")
    p.add_argument("--user", metavar="USER", help="the user the Runner service runs as (default: the invoking user)")
    p.add_argument("--output", "-o", metavar="PATH", help="write it to PATH (mode 0440) instead of stdout")
    p.set_defaults(func=_cmd_sudoers)


def _cmd_sudoers(args: argparse.Namespace) -> int:
    user = _usage("--user", check_account, "user", args.user) if args.user else _current_user()
    try:
        text = render_sudoers(user)
    except ValueError as exc:
        hint = "" if args.user else " (pass --user: the user the Runner service runs as)"
        raise _Failure(f"{exc}{hint}") from None
    if not args.output:
        sys.stdout.write(text)
        return EXIT_OK
    path = Path(os.path.abspath(os.path.expanduser(args.output)))
    if not path.parent.is_dir():
        raise _Failure(f"directory {path.parent} does not exist")
    _write_public(path, text, 0o440)
    quoted = shlex.quote(str(path))
    print(f"wrote {path} (mode 0440)")
    print("next, as root:")
    print(f"  visudo -cf {quoted}")
    print(f"  install -m 0440 -o root -g root {quoted} {SUDOERS_DROPIN}")
    return EXIT_OK


# ----------------------------------------------------------------- launcher
def _add_launcher(sub: Any) -> None:
    p = sub.add_parser(
        "launcher",
        help="write the files that enable --container NULL tasks on a Runner",
        description="Write the three files a Runner node needs for --container NULL tasks into --output-dir:\n"
        "the root-owned task launcher, its allow-list, and the sudoers drop-in that lets the Runner's\n"
        "user run the launcher and nothing else. Prints the commands that install them as root; never\n"
        "writes outside --output-dir. Restart the Runner afterwards: it looks for the launcher when it\n"
        "starts.\n\n"
        "A NULL task runs as its submitter's Unix account (hakuriver.admin user add NAME --unix-user\n"
        "ACCOUNT), or as environment.runner_user for submitters without one. The allow-list names the\n"
        "accounts that may be used: --task-user accounts and --task-group members, plus\n"
        "environment.runner_user; nobody by default. The launcher refuses root, the Runner's own user,\n"
        "and members of root-equivalent groups (docker, sudo, wheel, adm, disk, lxd, libvirt and the\n"
        "Runner's group) unless --allow-privileged-user names them. The shared and temp dirs and\n"
        "numactl come from the Runner's config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="PATH", help="the Runner's config (default: the usual lookup)")
    p.add_argument(
        "--user",
        metavar="USER",
        help="the user the Runner service runs as (default: the invoking user; required when run as root)",
    )
    p.add_argument(
        "--group",
        metavar="GROUP",
        help="the Runner service's group, whose members are refused as task accounts (default: --user's primary group)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        default=launcher.DEFAULT_STATE_DIR,
        help=f"where the launcher records how tasks ended (default: {launcher.DEFAULT_STATE_DIR}); "
        "it and every directory above it must be owned by root and writable by root only",
    )
    p.add_argument(
        "--task-user",
        metavar="USER",
        action="append",
        default=[],
        help="an account --container NULL tasks may run as (repeatable)",
    )
    p.add_argument(
        "--task-group",
        metavar="GROUP",
        action="append",
        default=[],
        help="tasks may run as any member of this group, primary or supplementary (repeatable)",
    )
    p.add_argument(
        "--allow-privileged-user",
        metavar="USER",
        action="append",
        default=[],
        help="let tasks run as this account even though it is root, the Runner's user or in a "
        "root-equivalent group (repeatable; it must also be allowed by --task-user or --task-group)",
    )
    p.add_argument("--output-dir", metavar="DIR", default=".", help="where to write the files (default: .)")
    p.add_argument(
        "--pin-digest",
        action="store_true",
        help="pin the launcher's sha256 in the sudoers rule (reinstall both together on upgrade)",
    )
    p.set_defaults(func=_cmd_launcher)


def _primary_group(user: str) -> str:
    try:
        gid = pwd.getpwnam(user).pw_gid
    except KeyError:
        raise _Failure(
            f"user {user!r} does not exist on this machine: pass --group (the Runner service's group)"
        ) from None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        raise _Failure(f"the primary group (gid {gid}) of {user!r} has no name; pass --group") from None


def _cmd_launcher(args: argparse.Namespace) -> int:
    task_users = [_usage("--task-user", check_account, "user", u) for u in args.task_user]
    task_groups = [_usage("--task-group", check_account, "group", g) for g in args.task_group]
    privileged = [_usage("--allow-privileged-user", check_account, "user", u) for u in args.allow_privileged_user]
    config = _service_config(args.config)
    if not args.user and os.geteuid() == 0:
        # The default (the invoker) would make root the Runner's user: no sudoers rule
        # is written and the allow-list records root, which is rarely what was meant.
        raise UsageError(
            "run as root, pass --user: the account the Runner service runs as (for example --user hakuriver); "
            "a Runner running as root needs no launcher"
        )
    user = _usage("--user", check_account, "user", args.user) if args.user else _current_user()
    group = _usage("--group", check_account, "group", args.group) if args.group else _primary_group(user)
    missing = [k for k in ("paths.shared_dir", "paths.local_temp_dir") if not getattr(config.paths, k.split(".")[1])]
    if missing:
        raise _Failure(f"{', '.join(missing)} must be set in {config.source}")
    out_dir = Path(os.path.expanduser(args.output_dir))
    if not out_dir.is_dir():
        raise _Failure(f"--output-dir {args.output_dir} does not exist or is not a directory")
    state_dir = os.path.abspath(args.state_dir)
    problem = preflight.state_dir_problem(state_dir)
    if problem:
        # Every task would fail with this line; say it now (e.g. a service user's
        # home at /var/lib/hakuriver makes that directory the user's).
        raise _Failure(f"{problem} (fix the ownership or pass --state-dir)")
    try:
        allow_list = launcher_install.launcher_config_for(
            config,
            runner_user=user,
            runner_group=group,
            task_users=task_users,
            task_groups=task_groups,
            allow_privileged_users=privileged,
            state_dir=state_dir,
        )
        plan = launcher_install.install_plan(user, allow_list, pin_digest=args.pin_digest)
    except ValueError as exc:
        raise _Failure(str(exc)) from None
    steps = []
    for item in plan:
        local = out_dir.resolve() / Path(item.path).name
        _write_public(local, item.content, item.mode)
        print(f"wrote {local} (for {item.path}, mode {item.mode:04o})")
        parent = shlex.quote(str(Path(item.path).parent))
        if item.path.startswith("/etc/sudoers"):
            steps.append(f"visudo -cf {shlex.quote(str(local))}")
        else:
            steps.append(f"install -d -m 0755 -o root -g root {parent}")
        steps.append(f"install -m {item.mode:04o} -o root -g root {shlex.quote(str(local))} {shlex.quote(item.path)}")
    for note in _launcher_notes(launcher.parse_config(json.loads(allow_list)), config.environment.runner_user):
        _note(note)
    print("next, as root:")
    for step in steps:
        print(f"  {step}")
    print("  systemctl restart hakuriver-runner.service")
    return EXIT_OK


# ---------------------------------------------------------------------- tls
def _add_tls(sub: Any) -> None:
    p = sub.add_parser(
        "tls",
        help="make the cluster CA and node certificates for HTTPS",
        description="HTTPS for the cluster: a CA made once (its key never leaves the machine it was made\n"
        "on), and one certificate per node, signed by it, valid for the names and addresses the\n"
        "other nodes dial. The Host and the Runners serve HTTPS with their certificate; the CLIs,\n"
        "the Runners and the Host verify the server they call against the CA (tls.ca_file).\n"
        "Private keys are written with mode 0600 from the first byte.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tls_sub = p.add_subparsers(dest="tls_command", metavar="ACTION", required=True)
    ca = tls_sub.add_parser(
        "ca",
        help="make a new cluster CA: ca.pem and ca-key.pem in DIR",
        description="Make a new cluster CA in DIR (created with mode 0700 when missing): ca.pem, the\n"
        "certificate every node and client gets (tls.ca_file), and ca-key.pem (mode 0600), which\n"
        "stays in DIR. Refuses to replace an existing CA without --force: every certificate it\n"
        "signed would stop being trusted.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ca.add_argument("--dir", required=True, metavar="DIR", help="where the CA lives")
    ca.add_argument(
        "--days", type=_days_arg, default=3650, metavar="N", help="validity in days (default: 3650, ten years)"
    )
    ca.add_argument("--force", action="store_true", help="replace an existing CA (re-sign every node afterwards)")
    ca.set_defaults(func=_cmd_tls_ca)
    cert = tls_sub.add_parser(
        "cert",
        help="sign a node certificate: NAME.pem and NAME-key.pem",
        description="Sign a certificate for the node NAME with the CA in DIR: NAME.pem and NAME-key.pem\n"
        "(mode 0600), written to --out-dir (default: DIR). It is valid for NAME and every --dns\n"
        "name and --ip address: give the addresses the others dial, network.host_reachable_address\n"
        "for the Host and network.runner_address for a Runner. Copy both files to the node (the\n"
        "key owned by the service's user, mode 0600) with DIR's ca.pem, and set [tls] in its config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cert.add_argument("name", metavar="NAME", help="the node's name (an IP address is taken as one)")
    cert.add_argument("--dir", required=True, metavar="DIR", help="where the CA lives (hakuriver.init tls ca)")
    cert.add_argument("--dns", action="append", default=[], metavar="NAME", help="another DNS name (repeatable)")
    cert.add_argument("--ip", action="append", default=[], metavar="ADDR", help="an IP address (repeatable)")
    cert.add_argument("--out-dir", metavar="DIR", help="where to write the two files (default: the CA's DIR)")
    cert.add_argument(
        "--days",
        type=_days_arg,
        default=1825,
        metavar="N",
        help="validity in days (default: 1825, five years; never past the CA's)",
    )
    cert.add_argument("--force", action="store_true", help="replace an existing certificate and key")
    cert.set_defaults(func=_cmd_tls_cert)


def _days_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= 36500:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 to 36500 days")
    return value


def _tls_dir(value: str, flag: str) -> Path:
    if not value.strip():
        raise UsageError(f"{flag} must not be empty")
    return Path(os.path.abspath(os.path.expanduser(value)))


def _cmd_tls_ca(args: argparse.Namespace) -> int:
    from .. import tls

    directory = _tls_dir(args.dir, "--dir")
    try:
        written = tls.write_ca(directory, overwrite=args.force, days=args.days)
    except FileExistsError as exc:
        raise _Failure(
            f"a CA is already there: {exc}; pass --force to replace it "
            "(every certificate it signed stops being trusted)"
        ) from None
    except OSError as exc:
        raise _Failure(f"cannot write the CA in {directory}: {exc.strerror or exc}") from None
    print(f"wrote {written.cert} (the CA certificate: every node and client gets a copy, as tls.ca_file)")
    print(f"wrote {written.key} (mode 0600: the CA's key; keep it here, never copy it)")
    print(f"valid until {written.not_after:%Y-%m-%d}")
    print(f"next: hakuriver.init tls cert NAME --dir {shlex.quote(str(directory))} --ip ADDR   (one per node)")
    return EXIT_OK


def _cmd_tls_cert(args: argparse.Namespace) -> int:
    from .. import tls

    name = _usage("NAME", tls.check_cert_name, args.name)
    for value in args.dns:
        _usage("--dns", tls.check_dns_name, value)
    for value in args.ip:
        _usage("--ip", tls.check_ip, value)
    directory = _tls_dir(args.dir, "--dir")
    out_dir = _tls_dir(args.out_dir, "--out-dir") if args.out_dir is not None else directory
    if not (directory / tls.CA_CERT).exists():
        raise _Failure(
            f"no CA in {directory} (no {tls.CA_CERT}); make one first: "
            f"hakuriver.init tls ca --dir {shlex.quote(str(directory))}"
        )
    try:
        written = tls.write_node_cert(
            directory, name, dns=args.dns, ips=args.ip, days=args.days, overwrite=args.force, out_dir=out_dir
        )
    except FileExistsError as exc:
        raise _Failure(f"already there: {exc}; pass --force to replace them") from None
    except OSError as exc:
        raise _Failure(f"cannot write the certificate in {out_dir}: {exc.strerror or exc}") from None
    print(f"wrote {written.cert} (valid for {', '.join(written.sans)}, until {written.not_after:%Y-%m-%d})")
    print(f"wrote {written.key} (mode 0600: copy it to the node, owned by the service's user, mode 0600)")
    print(f"in {name}'s config, with these files and {directory / tls.CA_CERT} copied there:")
    print("  [tls]")
    print("  enabled = true")
    print(f"  ca_file = {_toml_str(str(directory / tls.CA_CERT))}")
    print(f"  cert_file = {_toml_str(str(written.cert))}")
    print(f"  key_file = {_toml_str(str(written.key))}")
    return EXIT_OK


def _launcher_notes(cfg: Any, fallback: str) -> list[str]:
    """What the admin should know about the allow-list just written: nobody allowed,
    or a named account the launcher will refuse on this machine (checked here)."""
    if not cfg.task_users and not cfg.task_groups:
        return [
            "the allow-list names no task accounts: --container NULL tasks are refused until you add "
            "--task-user or --task-group (or set environment.runner_user)"
        ]
    notes = []
    for name in dict.fromkeys([*cfg.task_users, *cfg.allow_privileged_users]):
        try:
            launcher.check_task_account(cfg, name)
        except launcher.Refused as exc:
            if "does not exist" in str(exc):
                notes.append(f"task user {name!r} does not exist on this machine (the launcher checks each task)")
            else:
                notes.append(f"the launcher will refuse tasks as {name!r}: {exc}")
        else:
            if name in cfg.allow_privileged_users:
                notes.append(f"--allow-privileged-user {name}: tasks may run as {name!r}, whatever its groups")
    if fallback:
        notes.append(f"tasks of users without a Unix account run as {fallback!r} (environment.runner_user)")
    return notes


# ------------------------------------------------------------------ running
class _Failure(Exception):
    """A one-line failure: exit 1."""


def _usage(flag: str, check: Callable[..., Any], *values: str) -> Any:
    """`check(*values)`; a refused value becomes a usage error naming `flag`."""
    try:
        return check(*values)
    except (ValueError, ValidationError) as exc:
        raise UsageError(f"{flag}: {getattr(exc, 'message', exc)}") from None


def _note(message: str) -> None:
    print(f"{PROG}: note: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_USAGE)
    try:
        return args.func(args)
    except UsageError as exc:
        return fail(PROG, str(exc), EXIT_USAGE)
    except HakuRiverError as exc:  # ConfigError: a missing or invalid config
        return fail(PROG, exc.message, EXIT_FAILURE)
    except (UnitError, _Failure) as exc:
        return fail(PROG, str(exc), EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
