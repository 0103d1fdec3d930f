"""`hakuriver.admin`: what only an admin may do: users, their tokens, nodes, backups.

hakuriver.admin user add alice --unix-user alice     # prints alice's token, once
hakuriver.admin user add bob --admin
hakuriver.admin user add carol --max-gpus 2 --max-running 4
hakuriver.admin user set carol --max-cores 16 --max-gpus none   # none: back to the [limits] default
hakuriver.admin user list
hakuriver.admin user token alice --revoke-all        # a new token; the old ones stop working
hakuriver.admin user remove alice
hakuriver.admin node forget node3                    # free a node name for a new runner
hakuriver.admin node drain node3 --reason "kernel upgrade" --wait --timeout 3600
hakuriver.admin node resume node3                    # place tasks there again
hakuriver.admin usage --since 2026-11-01 --by node   # core-hours and GPU-hours of final tasks
hakuriver.admin fairshare                            # each user's decayed usage: the queue's fair share
hakuriver.admin backup /safe/place/host.db           # an online copy of the Host database
hakuriver.admin backup --into /var/backups/hakuriver --keep 7   # what the backup timer runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import HakuRiverError, ValidationError
from ..parsing import format_duration, validate_node_name
from .common import (
    EXIT_CODES_EPILOG,
    EXIT_OK,
    EXIT_TIMEOUT,
    CliParser,
    Connect,
    UsageError,
    common_options,
    execute,
    format_time,
    positive_int_arg,
    print_json,
    printable,
    seconds_arg,
    since_arg,
    table,
)

PROG = "hakuriver.admin"

ADVICE = "This token is shown only once. Give it to the user; they put it in $HAKURIVER_TOKEN or auth.token."


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Manage HakuRiver users, their API tokens, and nodes; back up the Host database. "
        "Needs an admin token "
        "(auth.admin_token on the Host machine, or a user added with --admin).",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents: list[Any] = [common_options(subcommand=True)]

    user = sub.add_parser(
        "user", help="add, list and remove users; set their limits; issue tokens", description="Manage users."
    )
    users = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    p = users.add_parser(
        "add",
        help="add a user and print their first token",
        description="Add a user and print their API token (shown only this once).",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME", help="the user name (a-z, 0-9, _ . -)")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    p.add_argument(
        "--unix-user",
        metavar="USER",
        help="the Unix account the user's tasks run as on every node (files they write belong to it)",
    )
    _add_limit_flags(p, clearable=False)
    p.set_defaults(func=_cmd_user_add)

    p = users.add_parser(
        "set",
        help="change a user's limits",
        description="Change a user's own limits; the flags not given keep their setting. 'none' clears one "
        "back to the cluster default ([limits] in the Host config); 0 means unlimited for this user. A task "
        "that would put its owner over a limit waits (pending, with the reason shown); it is counted only "
        "while it holds resources (assigning, running, paused).",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME")
    _add_limit_flags(p, clearable=True)
    p.set_defaults(func=_cmd_user_set)

    p = users.add_parser(
        "list", help="list users", description="List users, their roles and accounts.", parents=parents
    )
    p.set_defaults(func=_cmd_user_list)

    p = users.add_parser(
        "remove",
        help="remove a user and revoke their tokens",
        description="Remove a user and revoke all their tokens. Their tasks keep their records.",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_user_remove)

    p = users.add_parser(
        "token",
        help="issue a new token for a user",
        description="Issue a new API token for a user and print it (shown only this once).",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--revoke-all", action="store_true", help="revoke every other token of this user")
    p.set_defaults(func=_cmd_user_token)

    node = sub.add_parser("node", help="manage nodes", description="Manage nodes.")
    nodes = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    p = nodes.add_parser(
        "forget",
        help="forget a node and the runner bound to its name",
        description="Forget a node and the runner identity bound to its name, so another runner may "
        "register under it (a replaced or reinstalled machine). Refused while tasks hold resources there.",
        parents=parents,
    )
    p.add_argument("name", type=node_name_arg, metavar="NAME")
    p.set_defaults(func=_cmd_node_forget)

    p = nodes.add_parser(
        "drain",
        help="place no new task on a node; running ones finish",
        description="Drain a node: the scheduler places no new task there (tasks targeted at it wait "
        "as pending), while its running and paused tasks finish normally. The drain, its reason, who "
        "drained it and when survive a Host restart and the runner registering again. Draining a "
        "drained node replaces the reason. With --wait, return once no task holds resources on the "
        "node any more (the step before upgrading it); undo with 'hakuriver.admin node resume NAME'.",
        epilog=DRAIN_EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    p.add_argument("name", type=node_name_arg, metavar="NAME")
    p.add_argument("--reason", metavar="TEXT", help="why (shown by 'hakuriver.client nodes'; at most 500 characters)")
    p.add_argument(
        "--wait",
        action="store_true",
        help="then wait until no task runs on the node (assigning, running or paused); exit 0 then",
    )
    p.add_argument(
        "--timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="with --wait: give up after this long, exit 124 (default: never)",
    )
    p.set_defaults(func=_cmd_node_drain)

    p = nodes.add_parser(
        "resume",
        help="undo a drain: place tasks on the node again",
        description="Undo 'node drain': the scheduler places tasks on the node again, starting with the "
        "ones that waited for it. Resuming a node that is not drained changes nothing.",
        parents=parents,
    )
    p.add_argument("name", type=node_name_arg, metavar="NAME")
    p.set_defaults(func=_cmd_node_resume)

    p = sub.add_parser(
        "usage",
        help="core-hours and GPU-hours of final tasks, by user or node",
        description="Sum what final tasks used: a task's core-hours are its cores times the hours it ran "
        "(start to end), its GPU-hours its GPUs times those hours. Tasks that never started count nothing. "
        "With --since, only tasks that ended since then count, and only their time after it. An admin sees "
        "everyone's usage; any other user sees only their own (and may not name another with --user).",
        parents=parents,
    )
    p.add_argument(
        "--since",
        type=since_arg,
        metavar="DATE",
        help="only time since DATE: an ISO date or date-time in local time (2026-11-01, 2026-11-01T12:00), "
        "or a time ago (7d, 24h, 90m)",
    )
    p.add_argument("--by", choices=("user", "node"), default="user", help="one row per user (default) or per node")
    p.add_argument("--user", metavar="NAME", help="only this user's tasks")
    p.set_defaults(func=_cmd_usage)

    p = sub.add_parser(
        "fairshare",
        help="each user's decayed recent usage, which orders the queue between users",
        description="Show the fair share that orders pending tasks of equal priority: each user's recent "
        "usage (cores plus the GPU weight times GPUs, over the time their tasks held them), halved every "
        "[scheduler] fairshare_half_life, in core-hours. The lighter user's tasks go first. An admin sees "
        "every user; any other user sees only their own.",
        parents=parents,
    )
    p.set_defaults(func=_cmd_fairshare)

    p = sub.add_parser(
        "backup",
        help="save an online copy of the Host database",
        description="Save a consistent copy of the Host database while the Host serves (SQLite's online "
        "backup API, checked with integrity_check on the Host and again here). Works from any machine "
        "with an admin token. The file is written 0600 and gets its name only when complete: an "
        "interrupted backup leaves nothing at PATH. Restore it with 'hakuriver.host --restore PATH'.\n\n"
        "The copy holds every user's token hash and every task's environment values: keep it as "
        "private as the database itself.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=parents,
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="the file to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.add_argument(
        "--into",
        metavar="DIR",
        help=f"write DIR/{BACKUP_PATTERN_HELP} instead of PATH, then keep only the newest --keep of them "
        "(what the backup timer runs)",
    )
    p.add_argument(
        "--keep",
        type=positive_int_arg,
        metavar="N",
        help="with --into: how many backups to keep in DIR (older ones are removed; links and other files never)",
    )
    p.set_defaults(func=_cmd_backup)
    return parser


def node_name_arg(text: str) -> str:
    """A node name for argparse: a bad one is a one-line usage error, not a traceback."""
    try:
        return validate_node_name(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


LIMIT_FLAGS = (
    ("max_cores", "--max-cores", "cores the user's tasks may hold at once"),
    ("max_gpus", "--max-gpus", "GPUs the user's tasks may hold at once"),
    ("max_running", "--max-running", "tasks of the user holding resources at once (running, paused)"),
)
CLEAR = "none"
"""`--max-cores none`: the user's own setting is cleared; the cluster default applies."""


def limit_arg(text: str) -> int | str:
    if text.strip().lower() == CLEAR:
        return CLEAR
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or 'none'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative (0 means unlimited)")
    return value


def _add_limit_flags(p: argparse.ArgumentParser, *, clearable: bool) -> None:
    for dest, flag, what in LIMIT_FLAGS:
        p.add_argument(
            flag,
            dest=dest,
            type=limit_arg,
            metavar="N|none" if clearable else "N",
            help=f"{what}; 0: unlimited"
            + ("; none: the cluster default" if clearable else " (default: the cluster's)"),
        )


def limits_from_args(args: argparse.Namespace) -> dict[str, int | None]:
    """The limit flags given: {name: N, or None to clear}."""
    out: dict[str, int | None] = {}
    for dest, _flag, _what in LIMIT_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            out[dest] = None if value == CLEAR else int(value)
    return out


def format_limits(user: dict[str, Any]) -> tuple[str, str, str]:
    """MAX CORES / MAX GPUS / MAX RUNNING cells: `-` unlimited, `*` from the default."""
    own = user.get("limits") or {}
    effective = user.get("effective_limits") or {}
    cells = []
    for dest, _flag, _what in LIMIT_FLAGS:
        value = effective.get(dest)
        text = "-" if value is None else str(value)
        cells.append(text + ("*" if own.get(dest) is None and value is not None else ""))
    return cells[0], cells[1], cells[2]


def _print_token(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    print(result["token"])
    print(ADVICE, file=sys.stderr)


async def _cmd_user_add(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.add_user(
            args.name, admin=args.admin, unix_user=args.unix_user, limits=limits_from_args(args) or None
        )
    _print_token(result, args.json)
    return EXIT_OK


async def _cmd_user_set(args: argparse.Namespace, connect: Connect) -> int:
    limits = limits_from_args(args)
    if not limits:
        raise UsageError("give at least one of " + ", ".join(flag for _d, flag, _w in LIMIT_FLAGS))
    async with connect() as host:
        result = await host.set_user_limits(args.name, limits)
    if args.json:
        print_json(result)
    else:
        user = result["user"]
        cores, gpus, running = format_limits(user)
        print(f"limits of {user['name']}: max cores {cores}, max GPUs {gpus}, max running {running}")
        _limits_note([user])
    return EXIT_OK


def _limits_note(users: list[dict[str, Any]]) -> None:
    if not users:
        return
    print("(-: unlimited; *: the cluster default, [limits] in the Host config)", file=sys.stderr)


async def _cmd_user_list(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.list_users()
    if args.json:
        print_json(result)
    elif not result["users"]:
        print("no users yet (add one with 'hakuriver.admin user add NAME')", file=sys.stderr)
    else:
        rows = [
            (u["name"], u["role"], u["unix_user"] or "-", u["tokens"], *format_limits(u), format_time(u["created_at"]))
            for u in result["users"]
        ]
        print(table(("USER", "ROLE", "UNIX USER", "TOKENS", "MAX CORES", "MAX GPUS", "MAX RUNNING", "CREATED"), rows))
        _limits_note(result["users"])
    return EXIT_OK


async def _cmd_user_remove(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.remove_user(args.name)
    if args.json:
        print_json(result)
    else:
        print(f"removed {result['removed']}; their tokens no longer work")
    return EXIT_OK


async def _cmd_user_token(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.issue_token(args.name, revoke_all=args.revoke_all)
    _print_token(result, args.json)
    return EXIT_OK


async def _cmd_node_forget(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.forget_node(args.name)
    if args.json:
        print_json(result)
    else:
        print(f"forgot {result['forgotten']}; the next runner to register under that name is bound to it")
    return EXIT_OK


DRAIN_POLL_SECONDS = 2.0
"""How often `node drain --wait` asks the Host what still runs on the node."""

DRAIN_EXIT_CODES_EPILOG = EXIT_CODES_EPILOG.replace(
    "  130  interrupted", "  124  --wait: tasks still run on the node after --timeout\n  130  interrupted"
)


def _drain_summary(node: dict[str, Any]) -> str:
    drain = node.get("drained") or {}
    reason = drain.get("reason") or "no reason given"
    active = node.get("active_tasks") or []
    runs = f"{len(active)} task(s) still run there" if active else "no task runs there"
    return f"drained {node['hostname']} ({printable(reason)}): no new tasks go there; {runs}"


async def _cmd_node_drain(args: argparse.Namespace, connect: Connect) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout goes with --wait")
    async with connect() as host:
        node = await host.drain_node(args.name, reason=args.reason)
        if not args.json:
            print(_drain_summary(node))
        if args.wait:
            waited = bool(node.get("active_tasks"))
            node = await _wait_drained(host, args.name, node, args.timeout, quiet=args.json)
            if waited and not node.get("active_tasks") and not args.json:
                print(f"{args.name}: no task runs there any more")
    if args.json:
        print_json(node)
    if args.wait and node.get("active_tasks"):
        active = node["active_tasks"]
        print(
            f"{PROG}: error: {len(active)} task(s) still run on {args.name} after {args.timeout:g} s "
            f"(e.g. {active[0]}); it stays drained",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    return EXIT_OK


async def _wait_drained(
    host: Any, name: str, node: dict[str, Any], timeout: float | None, *, quiet: bool
) -> dict[str, Any]:
    """Poll the node until no task holds resources there, or `timeout` passes;
    the node as last read."""
    if "active_tasks" not in node:
        raise HakuRiverError("this Host does not say which tasks run on a node; upgrade it to use --wait")
    deadline = None if timeout is None else time.monotonic() + timeout
    shown: list[str] | None = None
    while node["active_tasks"]:
        if node["active_tasks"] != shown and not quiet:
            shown = node["active_tasks"]
            print(f"waiting for {len(shown)} task(s) on {name}: {' '.join(shown[:10])}", file=sys.stderr)
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        await asyncio.sleep(DRAIN_POLL_SECONDS if left is None else min(DRAIN_POLL_SECONDS, left))
        node = await host.node(name)
    return node


async def _cmd_node_resume(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        node = await host.resume_node(args.name)
    if args.json:
        print_json(node)
    else:
        print(f"resumed {node['hostname']}: tasks are placed there again")
    return EXIT_OK


BACKUP_NAME = re.compile(r"^host-[0-9]{8}T[0-9]{6}Z\.db\Z")
BACKUP_PATTERN_HELP = "host-YYYYMMDDTHHMMSSZ.db"


def _verify_backup(path: str) -> None:
    from ..host.backup import check_backup_file

    check_backup_file(path)


def prune_backups(directory: str, keep: int) -> list[str]:
    """Remove all but the newest `keep` backups named like `BACKUP_NAME` in
    `directory`. Only regular files are counted or removed: a symbolic link (or
    anything else) with such a name is left alone, never followed."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with os.scandir(dir_fd) as entries:
            names = sorted(e.name for e in entries if BACKUP_NAME.match(e.name) and e.is_file(follow_symlinks=False))
        removed = []
        for name in names[: max(0, len(names) - keep)]:
            os.unlink(name, dir_fd=dir_fd)  # unlink never follows a link, and it is one name in dir_fd
            removed.append(os.path.join(directory, name))
        return removed
    finally:
        os.close(dir_fd)


async def _cmd_backup(args: argparse.Namespace, connect: Connect) -> int:
    if args.into is None:
        if args.path is None:
            raise UsageError("name the file to write (PATH), or --into DIR")
        if args.keep is not None:
            raise UsageError("--keep goes with --into DIR")
        dest = Path(os.path.expanduser(args.path))
        if not args.force and os.path.lexists(dest):
            raise UsageError(f"{dest} exists; pass --force to replace it")
    else:
        if args.path is not None:
            raise UsageError("give PATH or --into DIR, not both")
        if args.force:
            raise UsageError("--force goes with PATH (--into never replaces a backup)")
        directory = Path(os.path.expanduser(args.into))
        if not directory.is_dir():
            raise UsageError(f"--into {directory}: no such directory")
        dest = directory / time.strftime("host-%Y%m%dT%H%M%SZ.db", time.gmtime())
    started = time.monotonic()
    async with connect() as host:
        result = await host.backup(dest, overwrite=args.force, verify=_verify_backup)
    result["seconds"] = round(time.monotonic() - started, 3)
    removed: list[str] = []
    if args.into is not None and args.keep is not None:
        try:
            removed = prune_backups(str(dest.parent), args.keep)
        except OSError as exc:
            raise HakuRiverError(
                f"wrote {dest}, but cannot prune {dest.parent}: {exc.strerror or exc}", code="local_file"
            ) from None
        result["removed"] = removed
    if args.json:
        print_json(result)
    else:
        pruned = f"; removed {len(removed)} older" if removed else ""
        print(
            f"wrote {dest} ({result['bytes']} bytes, schema version {result['schema_version']}, "
            f"{result['seconds']:.1f}s){pruned}; it holds token hashes: keep it private"
        )
    return EXIT_OK


def format_hours(hours: float) -> str:
    return f"{hours:.2f}"


async def _cmd_fairshare(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.fairshare()
    if args.json:
        print_json(result)
        return EXIT_OK
    if not result["enabled"]:
        print('fair share is off ([scheduler] fairshare_half_life = "0"): FIFO within a priority')
        return EXIT_OK
    half_life = format_duration(int(result["half_life"]))
    print(f"half-life {half_life}, one GPU counts as {result['gpu_weight']:g} cores; lightest first")
    rows = [(r["name"] or "(before users)", format_hours(r["usage_core_hours"])) for r in result["users"]]
    print(table(("USER", "USAGE (core-hours)"), rows))
    return EXIT_OK


async def _cmd_usage(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.usage(by=args.by, since=args.since, user=args.user)
    if args.json:
        print_json(result)
        return EXIT_OK
    since = f" since {format_time(result['since'])}" if result["since"] is not None else ""
    if not result["rows"]:
        print(f"no finished tasks{since}", file=sys.stderr)
        return EXIT_OK
    key = "USER" if result["by"] == "user" else "NODE"
    none = "(before users)" if result["by"] == "user" else "(no node)"
    rows = [
        (
            r["name"] or none,
            r["tasks"],
            format_hours(r["hours"]),
            format_hours(r["core_hours"]),
            format_hours(r["gpu_hours"]),
        )
        for r in result["rows"]
    ]
    total = result["total"]
    rows.append(
        (
            "TOTAL",
            total["tasks"],
            format_hours(total["hours"]),
            format_hours(total["core_hours"]),
            format_hours(total["gpu_hours"]),
        )
    )
    print(table((key, "TASKS", "HOURS", "CORE-HOURS", "GPU-HOURS"), rows))
    if since:
        print(f"(final tasks{since}; hours before then not counted)", file=sys.stderr)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
