"""`hakuriver.task history`: final tasks, newest first, with what each used.

A view over `GET /api/tasks` (final states only, `since`: finished since),
paged like `list` with `--before`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..models import FINAL_STATES
from ..parsing import format_duration
from .common import (
    EXIT_OK,
    MAX_PAGE,
    Connect,
    UsageError,
    add_page_options,
    common_options,
    format_size,
    format_time,
    print_json,
    since_arg,
    table,
)

PROG = "hakuriver.task"
FINAL_QUERY = ",".join(sorted(str(s) for s in FINAL_STATES))
HEADERS = ("ID", "USER", "NODE", "CORES", "MEM", "GPUS", "START", "END", "DURATION", "STATE", "EXIT")


def add_history(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="final tasks, newest first, with owner, node, resources, start, end and exit code",
        description="Final tasks (completed, failed, killed, timeout, cancelled, lost...), newest first: "
        "who ran them, where, with how many cores, how much memory and how many GPUs, when they started "
        "and ended, how long they ran and how they ended. 'hakuriver.admin usage' sums the same records.",
        parents=[common_options(subcommand=True)],
    )
    p.add_argument("--user", metavar="NAME", help="only tasks this user submitted")
    p.add_argument("--node", metavar="NODE", help="only tasks placed on this node")
    p.add_argument(
        "--since",
        type=since_arg,
        metavar="DATE",
        help="only tasks that ended since DATE: an ISO date or date-time in local time "
        "(2026-11-01, 2026-11-01T12:00), or a time ago (7d, 24h, 90m)",
    )
    add_page_options(p)
    p.set_defaults(func=_cmd_history)


def history_row(t: dict[str, Any]) -> tuple[object, ...]:
    started, finished = t.get("started_at"), t.get("finished_at")
    duration = format_duration(finished - started) if started and finished else "-"
    exit_code = t.get("exit_code")
    return (
        t["task_id"],
        t.get("owner") or "-",
        t.get("node") or "-",
        t.get("cores"),
        format_size(t.get("memory")),
        len(t.get("gpus") or []) or t.get("gpu_count") or "-",
        format_time(started),
        format_time(finished),
        duration,
        t.get("state"),
        "-" if exit_code is None else exit_code,
    )


async def _cmd_history(args: argparse.Namespace, connect: Connect) -> int:
    if args.limit > MAX_PAGE:
        raise UsageError(f"--limit must be at most {MAX_PAGE}")
    async with connect() as host:
        result = await host.list_tasks(
            state=FINAL_QUERY, node=args.node, user=args.user, since=args.since, limit=args.limit, before=args.before
        )
    if args.json:
        print_json(result)
        return EXIT_OK
    if not result["tasks"]:
        print("no final tasks" + (f" since {format_time(args.since)}" if args.since else ""), file=sys.stderr)
        return EXIT_OK
    print(table(HEADERS, [history_row(t) for t in result["tasks"]]))
    if result.get("next_before"):
        print(f"(more: {PROG} history --before {result['next_before']} with the same filters)", file=sys.stderr)
    return EXIT_OK
