"""`hakuriver.task`: submit tasks and follow them through their lifecycle.

    hakuriver.task submit --target node1:0 --cores 4 --memory 8G -- python train.py --lr 0.1
    hakuriver.task list --state running,pending
    hakuriver.task history --user alice --since 7d
    hakuriver.task logs ID --follow
    hakuriver.task wait ID ID --timeout 600

The command after `--` is an argv list: it travels to the runner as a JSON
array and is executed without a shell, so `'$(id)'` or `'a;b'` arrive as the
literal arguments typed. Flag values are checked locally with the same
parsers (and messages) as the Host before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from ..client import ApiError, HostClient, is_final
from ..errors import HakuRiverError, HostUnreachable, ValidationError
from ..host.retries import MAX_RETRIES, parse_retries
from ..models import SYSTEMD_CONTAINER, TaskState
from ..parsing import (
    expand_sweep,
    format_array,
    format_duration,
    parse_array,
    parse_cores,
    parse_duration,
    parse_env,
    parse_mount,
    parse_size,
    parse_sweep_limit,
    parse_target,
    validate_container,
    validate_node_name,
)
from ..policy import DEFAULT_PRIORITY, MAX_DEPENDENCIES, PRIORITY_MAX, PRIORITY_MIN, check_priority
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TIMEOUT,
    MAX_PAGE,
    WAIT_EXIT_CODES_EPILOG,
    CliParser,
    Connect,
    UsageError,
    add_page_options,
    common_options,
    execute,
    format_command,
    format_size,
    format_time,
    non_negative_int_arg,
    positive_int_arg,
    print_json,
    seconds_arg,
    table,
    task_id_arg,
)
from .history import add_history

PROG = "hakuriver.task"
FOLLOW_INTERVAL = 0.5
"""Seconds between polls of `logs --follow` when nothing new was written."""
FOLLOW_RETRY_FIRST = 0.5
FOLLOW_RETRY_MAX = 5.0
"""`logs --follow` retries a lost Host after 0.5 s, doubling up to 5 s between tries."""
RETRY_NOTE = "Host unreachable, retrying..."
LIST_COMMAND_WIDTH = 40


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Submit HakuRiver tasks and manage their lifecycle.",
        epilog=WAIT_EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_submit(sub)
    _add_status(sub)
    _add_list(sub)
    add_history(sub)
    _add_control(
        sub,
        "kill",
        "kill a task (pending, assigning, running or paused), or given a batch id every task of the batch "
        "that has not ended",
    )
    _add_priority(sub)
    _add_control(sub, "pause", "pause a running task (it keeps its cores, memory and GPUs)")
    _add_control(sub, "resume", "resume a paused task")
    _add_logs(sub)
    _add_wait(sub)
    return parser


def _subparser(sub: Any, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text[:1].upper() + help_text[1:] + ".",
        parents=[common_options(subcommand=True)],
        **kwargs,
    )


# ------------------------------------------------------------------ submit
def _add_submit(sub: Any) -> None:
    p = _subparser(
        sub,
        "submit",
        "submit a command as one task per --target (or one automatically placed task)",
        usage=f"{PROG} submit [options] -- COMMAND [ARG ...]",
        epilog="The command and its arguments are passed as a list, never through a shell.\n\n"
        + WAIT_EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TARGET",
        help="where to run: HOST, HOST:NUMA, HOST::GPU,GPU or HOST:NUMA::GPU,... "
        "(repeatable: one task per target; none: automatic placement)",
    )
    p.add_argument("--cores", type=positive_int_arg, metavar="N", help="CPU cores (default 1)")
    p.add_argument("--memory", metavar="SIZE", help="memory limit, e.g. 512M, 4G")
    p.add_argument(
        "--gpus",
        type=non_negative_int_arg,
        metavar="N",
        help="number of GPUs for automatic placement (with --target, name GPU ids in the target instead)",
    )
    p.add_argument(
        "--container",
        metavar="NAME",
        help=f"environment to run in (default: the cluster's default); "
        f"{SYSTEMD_CONTAINER} runs the task as a transient systemd service on the node instead of Docker",
    )
    p.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable for the task (repeatable)"
    )
    p.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="HOST_PATH:CONTAINER_PATH",
        help="extra bind mount, optionally with :ro (repeatable; Docker tasks only, subject to the "
        "cluster's docker.allowed_mount_prefixes)",
    )
    p.add_argument(
        "--privileged",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the container privileged, or explicitly not (default: the cluster's "
        "docker.tasks_privileged; privileged only where the cluster allows it)",
    )
    p.add_argument(
        "--time",
        metavar="LIMIT",
        help="time limit: wall time from the start (paused time counts), e.g. 2h, 90m, 45s, 1h30m, "
        "1:30:00 or D-HH:MM:SS (at most 30 days); at the limit the task gets SIGTERM, then SIGKILL "
        "after the node's runner.timeout_grace, and ends 'timeout'",
    )
    p.add_argument(
        "--retries",
        metavar="N",
        help=f"run the task again, up to N times (0 to {MAX_RETRIES}), when it ends lost (its node stopped "
        "heartbeating) or failed on the node's side (it could not start: no image, a runner or executor "
        "error); it keeps its id and is queued again, on another node where one fits; each attempt is "
        "recorded (status shows them); killed, timeout, killed_oom and cancelled tasks are never retried",
    )
    p.add_argument(
        "--retry-on-exit",
        action="store_true",
        help="with --retries: retry a non-zero exit of the command too (by default a non-zero exit is "
        "the command's own answer and ends the task failed)",
    )
    p.add_argument(
        "--after",
        action="append",
        default=[],
        type=task_ids_arg,
        metavar="ID[,ID...]",
        help="start only after every named task ended completed; if one ends otherwise, this task ends "
        "cancelled (repeatable)",
    )
    p.add_argument(
        "--after-any",
        action="append",
        default=[],
        type=task_ids_arg,
        metavar="ID[,ID...]",
        help="start only after every named task ended, however it ended (repeatable; with --after, both must hold)",
    )
    p.add_argument(
        "--array",
        metavar="SPEC",
        help="submit one task per index, in one batch: 0-99, 0-99:2 (step), 1,3,5, and %%N for at most N "
        "running at once (0-99%%8); each task gets HAKURIVER_ARRAY_INDEX and HAKURIVER_BATCH_ID; "
        "at most one --target",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="HakuRiver 0.3's hakurun sweep: each command word span:{A..B} (integers, both included) or "
        "span:[a,b,...] stands for each of its values, and one task runs per combination, as an array "
        "(index = combination number, the first span varying slowest); --array may then give only %%N",
    )
    p.add_argument(
        "--priority",
        type=priority_arg,
        metavar="N",
        help=f"queue priority, {PRIORITY_MIN}..{PRIORITY_MAX}, higher first (default {DEFAULT_PRIORITY}); "
        f"anyone may go lower, only an admin above {DEFAULT_PRIORITY}; every task of an --array gets it",
    )
    p.add_argument("--wait", action="store_true", help="wait until every task has ended and print a summary")
    p.add_argument(
        "--wait-timeout",
        type=seconds_arg,
        metavar="SECONDS",
        help="give up waiting after this long (implies --wait; default: wait forever)",
    )
    p.add_argument(
        "command_argv", nargs=argparse.REMAINDER, metavar="COMMAND", help="the program and its arguments, after '--'"
    )
    p.set_defaults(func=_cmd_submit)


def priority_arg(text: str) -> int:
    """argparse `type=` for a priority: an integer in PRIORITY_MIN..PRIORITY_MAX."""
    try:
        return check_priority(int(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an integer priority") from None
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(exc.message.replace("field 'priority'", "the priority")) from None


def task_ids_arg(text: str) -> list[str]:
    """argparse `type=` for `ID[,ID...]`: task ids, each a positive 64-bit number."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected task ids separated by commas, like 123,456")
    return [task_id_arg(p) for p in parts]


def _flat_ids(groups: list[list[str]]) -> list[str]:
    return list(dict.fromkeys(i for group in groups for i in group))


def submit_request(args: argparse.Namespace) -> dict[str, Any]:
    """Check the submit flags locally and build `HostClient.submit`'s arguments."""
    command = list(args.command_argv)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise UsageError(f"no command given: {PROG} submit [options] -- COMMAND [ARG ...]")
    if not command[0]:
        raise UsageError("the program (the first word after '--') must not be empty")
    targets = [str(parse_target(t)) for t in args.target]
    memory = parse_size(args.memory) if args.memory is not None else None
    cores = parse_cores(args.cores) if args.cores is not None else None
    env: dict[str, str] = {}
    for spec in args.env:
        key, value = parse_env(spec)
        if key.startswith("HAKURIVER_"):
            raise ValidationError(f"env name {key!r} is reserved: HAKURIVER_* variables are set by the runner")
        env[key] = value
    mounts = [str(parse_mount(m)) for m in args.mount]
    container = args.container
    if container is not None:
        validate_container(container)  # the Host says the same; this spares the round trip
    systemd = container == SYSTEMD_CONTAINER
    if args.privileged and systemd:
        raise ValidationError("--privileged applies to Docker tasks only, not to --container NULL")
    if mounts and systemd:
        raise ValidationError("--mount applies to Docker tasks only; --container NULL tasks see the node's filesystem")
    if args.gpus and targets:
        raise ValidationError(
            "give GPUs either as a count (--gpus) for automatic placement or as ids in --target (node::0,1), not both"
        )
    time_limit = parse_duration(args.time) if args.time is not None else None
    if args.sweep:
        if not any(word.startswith("span:") for word in command):
            raise ValidationError("--sweep needs a span:{A..B} or span:[a,b,...] word in the command")
        expand_sweep(command)  # the Host expands it; this checks it first
        array = f"%{parse_sweep_limit(args.array)}" if args.array is not None else None
    else:
        array = format_array(parse_array(args.array)) if args.array is not None else None
    if array is not None and len(targets) > 1:
        raise ValidationError("an array runs on one target or is placed automatically: give at most one --target")
    retries = parse_retries(args.retries) if args.retries is not None else 0
    if args.retry_on_exit and not retries:
        raise ValidationError("--retry-on-exit needs --retries N (N at least 1)")
    after, after_any = _flat_ids(args.after), _flat_ids(args.after_any)
    if len(set(after) | set(after_any)) > MAX_DEPENDENCIES:
        raise ValidationError(f"too many dependencies; at most {MAX_DEPENDENCIES} in --after and --after-any together")
    return {
        "command": command,
        "time_limit": time_limit,
        "cores": cores,
        "memory": memory,
        "container": container,
        "env": env or None,
        "mounts": mounts or None,
        "privileged": args.privileged,
        "targets": targets or None,
        "gpus": args.gpus or None,
        "after": after or None,
        "after_any": after_any or None,
        "array": array,
        "sweep": True if args.sweep else None,
        "retries": retries or None,
        "retry_on_exit": True if args.retry_on_exit else None,
        "priority": args.priority,
    }


async def _cmd_submit(args: argparse.Namespace, connect: Connect) -> int:
    request = submit_request(args)
    command = request.pop("command")
    wait = args.wait or args.wait_timeout is not None
    async with connect() as host:
        # Only `--json` without `--wait` prints the new tasks' views; the rest print ids.
        result = await host.submit(command, **request, views=args.json and not wait)
        if not wait:
            if args.json:
                print_json(result)
            else:
                print("\n".join(result["task_ids"]))
            return EXIT_OK
        if not args.json:
            print("\n".join(result["task_ids"]), flush=True)
        waited = await host.wait(result["task_ids"], timeout=args.wait_timeout)
    if args.json:
        print_json({**result, "tasks": waited["tasks"], "done": waited["done"]})
    else:
        print(_summary(waited["tasks"]))
    return wait_status(waited)


# --------------------------------------------------------- status / list
def _add_status(sub: Any) -> None:
    p = _subparser(sub, "status", "show one task in detail")
    p.add_argument("task_id", type=task_id_arg, metavar="ID")
    p.set_defaults(func=_cmd_status)


async def _cmd_status(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        task = await host.get_task(args.task_id)
    if args.json:
        print_json(task)
    else:
        print(describe_task(task))
    return EXIT_OK


def describe_task(task: dict[str, Any]) -> str:
    """A task's fields, one per line, for people."""
    placement = task.get("node") or "-"
    extra = []
    if task.get("numa") is not None:
        extra.append(f"numa {task['numa']}")
    if task.get("gpus"):
        extra.append("gpus " + ",".join(str(g) for g in task["gpus"]))
    if extra:
        placement += f" ({', '.join(extra)})"
    env = task.get("env") or {}
    rows = [
        ("task", task.get("task_id")),
        ("batch", task.get("batch_id")),
        ("state", task.get("state")),
        ("position", task.get("position")),
        ("priority", task.get("priority")),
        ("waiting", task.get("pending_reason")),
        (
            "fair share",
            f"{task['fairshare_passed_by']} later task(s) of lighter users ahead"
            if task.get("fairshare_passed_by")
            else None,
        ),
        ("exit code", task.get("exit_code")),
        ("error", task.get("error")),
        ("output", f"INCOMPLETE: {task['output_error']}" if task.get("output_error") else None),
        ("after", ",".join(task.get("after") or [])),
        ("after any", ",".join(task.get("after_any") or [])),
        ("waits for", ",".join(task.get("waiting_for") or [])),
        ("command", format_command(task.get("command") or [])),
        ("target", task.get("target") or "auto"),
        ("node", placement),
        ("cores", task.get("cores")),
        ("memory", format_size(task.get("memory"))),
        ("time limit", format_duration(task["time_limit"]) if task.get("time_limit") else None),
        ("gpu count", task.get("gpu_count") or None),
        ("container", task.get("container")),
        ("privileged", "yes" if task.get("privileged") else "no"),
        ("env", " ".join(shlex.quote(f"{k}={v}") for k, v in env.items())),
        ("mounts", " ".join(task.get("mounts") or [])),
        ("submitted", format_time(task.get("submitted_at"))),
        ("assigned", format_time(task.get("assigned_at"))),
        ("started", format_time(task.get("started_at"))),
        ("finished", format_time(task.get("finished_at"))),
    ]
    if task.get("array_index") is not None:  # only for array tasks: other tasks' layout stays as it was
        rows[2:2] = [("array index", task["array_index"]), ("array limit", task.get("array_max_running"))]
    if task.get("retries") or (task.get("attempt") or 1) > 1:  # only for tasks with retries, likewise
        after_state = rows.index(("state", task.get("state"))) + 1
        rows[after_state:after_state] = _retry_rows(task)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {'-' if v is None or v == '' else v}" for k, v in rows)


def _retry_rows(task: dict[str, Any]) -> list[tuple[str, Any]]:
    """`attempt 2 of 3` and one line per earlier attempt: how it ended, where, when."""
    retries = int(task.get("retries") or 0)
    rows: list[tuple[str, Any]] = [
        ("attempt", f"{task.get('attempt') or 1} of {retries + 1}"),
        ("retries", f"{retries}" + (" (non-zero exits too)" if task.get("retry_on_exit") else "")),
    ]
    for a in task.get("attempts") or []:
        how = str(a.get("state"))
        if a.get("exit_code") is not None:
            how += f" (exit code {a['exit_code']})"
        ended = format_time(a.get("finished_at"))
        when = f"{format_time(a['started_at'])} to {ended}" if a.get("started_at") else f"never started, {ended}"
        text = f"{how} on {a.get('node') or '-'}, {when}"
        if a.get("error"):
            text += f": {a['error']}"
        rows.append((f"attempt {a.get('attempt')}", text))
    return rows


OUTPUT_MARK = "!"
"""Follows a task's state in tables when its output files are incomplete (`output_error`)."""


def shown_state(task: dict[str, Any]) -> str:
    """The task's state for a table: `completed!` when its output is incomplete."""
    return str(task["state"]) + (OUTPUT_MARK if task.get("output_error") else "")


def _mark_note(tasks: list[dict[str, Any]]) -> None:
    if any(t.get("output_error") for t in tasks):
        print(f"({OUTPUT_MARK}: the output files are incomplete; `{PROG} status ID` says why)", file=sys.stderr)


def _add_list(sub: Any) -> None:
    p = _subparser(sub, "list", "list tasks, newest first")
    p.add_argument(
        "--state",
        metavar="STATE[,STATE]",
        help="only these states: "
        + ", ".join(s.value for s in TaskState)
        + ". With --state pending: the queue in order (priority, then fair share: the user with less "
        "recent usage first, then submission), each task's place in it (POS), its priority (PRI), "
        "its owner's decayed usage in core-hours (USAGE: yours, or everyone's to an admin) and why it waits "
        "(REASON: limit: a per-user limit or an array's %%N, reserved: the protected head of the queue, "
        "resources: no room, "
        "node offline, position: behind an earlier task)",
    )
    p.add_argument("--node", metavar="NODE", help="only tasks placed on this node")
    p.add_argument("--batch", type=task_id_arg, metavar="BATCH_ID", help="only the tasks of this batch (an --array)")
    add_page_options(p)
    p.set_defaults(func=_cmd_list)


def _check_states(text: str) -> str:
    known = {s.value for s in TaskState}
    states = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in states if s not in known]
    if bad or not states:
        raise UsageError(f"unknown state {', '.join(bad) or repr(text)}; states are: {', '.join(sorted(known))}")
    return ",".join(states)


async def _cmd_list(args: argparse.Namespace, connect: Connect) -> int:
    states = _check_states(args.state) if args.state else None
    if args.node:
        validate_node_name(args.node)
    if args.limit > MAX_PAGE:
        raise UsageError(f"--limit must be at most {MAX_PAGE}")
    async with connect() as host:
        result = await host.list_tasks(
            state=states, node=args.node, limit=args.limit, before=args.before, batch=args.batch
        )
    if args.json:
        print_json(result)
        return EXIT_OK
    if states == TaskState.PENDING.value:
        print(pending_table(result["tasks"]))
        if result.get("next_before"):
            print(f"(more: {PROG} list --state pending --before {result['next_before']})", file=sys.stderr)
        return EXIT_OK
    rows = [
        (
            t["task_id"],
            shown_state(t),
            t.get("node"),
            t.get("cores"),
            format_size(t.get("memory")),
            format_command(t.get("command") or [], LIST_COMMAND_WIDTH),
            format_time(t.get("submitted_at")),
        )
        for t in result["tasks"]
    ]
    print(table(("ID", "STATE", "NODE", "CORES", "MEM", "COMMAND", "SUBMITTED"), rows))
    _mark_note(result["tasks"])
    if result.get("next_before"):
        print(f"(more: {PROG} list --before {result['next_before']})", file=sys.stderr)
    return EXIT_OK


def pending_table(tasks: list[dict[str, Any]]) -> str:
    """`list --state pending`: the queue in its order (priority, then fair
    share, then submission), each task with its place (POS), its priority
    (PRI), its owner's decayed usage in core-hours where the Host shows it
    (USAGE: only your own, or everyone's to an admin) and why it waits
    (REASON: the Host's latest scheduling pass)."""
    ordered = sorted(tasks, key=lambda t: (t.get("position") is None, t.get("position") or 0, int(t["task_id"])))
    rows = [
        (
            t["task_id"],
            t.get("position") or "-",
            t.get("priority", 0),
            t.get("owner") or "-",
            _usage_cell(t.get("fairshare_usage")),
            t.get("cores"),
            format_size(t.get("memory")),
            t.get("gpu_count") or len(t.get("gpus") or []) or "-",
            format_command(t.get("command") or [], LIST_COMMAND_WIDTH),
            _reason_cell(t),
        )
        for t in ordered
    ]
    return table(("ID", "POS", "PRI", "USER", "USAGE", "CORES", "MEM", "GPUS", "COMMAND", "REASON"), rows)


def _reason_cell(task: dict[str, Any]) -> str:
    """The Host's reason, and when fair share put later tasks ahead, how many."""
    why = task.get("pending_reason") or "-"
    passed = task.get("fairshare_passed_by") or 0
    return f"{why} (fair share: {passed} later ahead)" if passed else why


def _usage_cell(value: float | None) -> str:
    """Core-hours: small numbers with their first digits, large ones whole."""
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


# ------------------------------------------------------ kill/pause/resume
def _add_control(sub: Any, action: str, help_text: str) -> None:
    p = _subparser(sub, action, help_text)
    p.add_argument("task_id", type=task_id_arg, metavar="ID")
    p.set_defaults(func=_cmd_control, action=action)


async def task_or_batch(
    for_task: Callable[[], Awaitable[dict[str, Any]]], for_batch: Callable[[], Awaitable[dict[str, Any]]]
) -> tuple[bool, dict[str, Any]]:
    """(False, the task call's answer), or when the id is no task (404),
    (True, the batch call's answer): task and batch ids come from one sequence,
    so an id that is no task may be a batch. When it is neither, the task's 404."""
    try:
        return False, await for_task()
    except ApiError as exc:
        if exc.status != 404:
            raise
        try:
            return True, await for_batch()
        except ApiError as batch_exc:
            if batch_exc.status != 404:
                raise
            raise exc from None


async def control_task(args: argparse.Namespace, connect: Connect, action: str) -> int:
    async with connect() as host:
        method = {"kill": host.kill, "pause": host.pause, "resume": host.resume}[action]
        if action == "kill":
            # `kill BATCH_ID` kills all of it.
            is_batch, task = await task_or_batch(lambda: method(args.task_id), lambda: host.kill_batch(args.task_id))
        else:
            is_batch, task = False, await method(args.task_id)
    if is_batch:
        if args.json:
            print_json(task)
        else:
            print(_summary(task["tasks"]))
        return EXIT_OK
    if args.json:
        print_json(task)
    else:
        print(f"{task['task_id']}  {task['state']}")
    return EXIT_OK


async def _cmd_control(args: argparse.Namespace, connect: Connect) -> int:
    return await control_task(args, connect, args.action)


# ---------------------------------------------------------------- priority
def _add_priority(sub: Any) -> None:
    p = _subparser(
        sub,
        "priority",
        "change a pending task's queue priority, or given a batch id that of every pending task of the "
        f"batch: its owner may lower it, only an admin may raise it (above {DEFAULT_PRIORITY}, or above what "
        "it has)",
    )
    p.add_argument("task_id", type=task_id_arg, metavar="ID", help="a task id, or a batch id for all of its tasks")
    p.add_argument("priority", type=priority_arg, metavar="N", help=f"{PRIORITY_MIN}..{PRIORITY_MAX}, higher first")
    p.set_defaults(func=_cmd_priority)


async def _cmd_priority(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        is_batch, task = await task_or_batch(
            lambda: host.set_priority(args.task_id, args.priority),
            lambda: host.set_batch_priority(args.task_id, args.priority),
        )
    if is_batch:
        if args.json:
            print_json(task)
        else:
            print(
                f"batch {task['batch_id']}  priority {task['priority']}: {len(task['changed'])} pending "
                f"task(s) changed, {len(task['unchanged'])} not pending left as they are"
            )
        return EXIT_OK
    if args.json:
        print_json(task)
    else:
        print(f"{task['task_id']}  priority {task['priority']}  position {task.get('position') or '-'}")
    return EXIT_OK


# -------------------------------------------------------------------- logs
def _add_logs(sub: Any) -> None:
    p = _subparser(sub, "logs", "print a task's output (stdout, or stderr with --stderr)")
    p.add_argument("task_id", type=task_id_arg, metavar="ID")
    p.add_argument("--stderr", action="store_true", help="show the standard error stream instead of stdout")
    p.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="keep printing new output until the task has ended (a Host restart is waited out)",
    )
    p.add_argument("-n", "--tail", type=non_negative_int_arg, metavar="N", help="start with the last N lines")
    p.add_argument(
        "--attempt",
        type=positive_int_arg,
        metavar="N",
        help="the output of attempt N of a retried task (--retries; `status` lists them), not the current one's",
    )
    p.add_argument(
        "--interval",
        type=seconds_arg,
        default=FOLLOW_INTERVAL,
        metavar="SECONDS",
        help=f"with --follow, seconds between polls when nothing is new (default {FOLLOW_INTERVAL})",
    )
    p.set_defaults(func=_cmd_logs)


async def stream_logs(
    host: HostClient,
    task_id: str,
    *,
    stream: str = "stdout",
    tail: int | None = None,
    follow: bool = False,
    interval: float = FOLLOW_INTERVAL,
    out: Any = None,
    note: Any = None,
    attempt: int | None = None,
) -> str:
    """Copy a task's log to `out` (a binary file); returns the task's last seen state.

    Without `follow`: read what exists now. With `follow`: keep polling from
    the returned offset until a read comes back empty *and* the task was
    already final when that read was made (the Host reads the state before
    the file), so nothing written before the end is missed.

    A Host that goes away while following (restarted, upgraded) is waited for:
    the task runs on, and so does its log. Reads are retried with backoff, one
    note on `note` (stderr) says so, and reading resumes at the same offset, so
    no line is printed twice. A Host unreachable at the first read is still an
    error: then there is nothing to follow yet, and probably a wrong address.

    Each attempt of a retried task has its own log (`attempt`: that one's).
    Without `attempt`, the current attempt's is read, and kept to once known
    (offsets are per file). When a read comes back empty and the Host says
    the task is at a later attempt (read before the file: that attempt had
    ended, its log whole), following ends for an `attempt` asked for, and
    otherwise goes on with the new attempt's log from its start, with a note
    on `note`.
    """
    out = out if out is not None else sys.stdout.buffer
    note = note if note is not None else sys.stderr
    offset = 0
    reached = False
    retry_delay = FOLLOW_RETRY_FIRST
    noted = False
    reading = attempt
    while True:
        try:
            data, next_offset, state, current = await host.log_chunk(task_id, stream, offset, tail, reading)
        except (HostUnreachable, ApiError) as exc:
            # 503: a Host that is starting or stopping; anything else it says is final.
            if not (follow and reached) or (isinstance(exc, ApiError) and exc.status != 503):
                raise
            if not noted:
                print(RETRY_NOTE, file=note, flush=True)
                noted = True
            await asyncio.sleep(retry_delay)
            retry_delay = min(retry_delay * 2, FOLLOW_RETRY_MAX)
            continue
        reached = True
        retry_delay = FOLLOW_RETRY_FIRST
        tail = None
        if reading is None:
            reading = current  # the attempt just read (None: a Host that does not say)
        if data:
            out.write(data)
            out.flush()
            if next_offset <= offset:
                raise HakuRiverError(
                    f"the Host's log offset for task {task_id} did not advance past {offset}", code="bad_response"
                )
            offset = next_offset
            continue  # there may be more right away: read on without sleeping
        if not follow or is_final(state):
            return state
        if reading is not None and current is not None and current > reading:
            if attempt is not None:
                return state
            print(f"task {task_id} was retried: attempt {current}'s own output follows", file=note, flush=True)
            reading, offset = current, 0
            continue
        await asyncio.sleep(interval)


async def _cmd_logs(args: argparse.Namespace, connect: Connect) -> int:
    sys.stdout.flush()
    async with connect() as host:
        await stream_logs(
            host,
            args.task_id,
            stream="stderr" if args.stderr else "stdout",
            tail=args.tail,
            follow=args.follow,
            interval=args.interval,
            attempt=args.attempt,
        )
    return EXIT_OK


# -------------------------------------------------------------------- wait
def _add_wait(sub: Any) -> None:
    p = _subparser(
        sub,
        "wait",
        "wait until tasks have ended; exit 0 only if all completed",
        epilog=WAIT_EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "task_ids", type=task_id_arg, nargs="+", metavar="ID", help="task ids, or batch ids for all of their tasks"
    )
    p.add_argument("--timeout", type=seconds_arg, metavar="SECONDS", help="give up after this long (default: never)")
    p.set_defaults(func=_cmd_wait)


async def _cmd_wait(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        ids: list[str] = []
        for given in args.task_ids:
            # A batch id stands for every task of its batch; any other id is a task's.
            ids.extend(await host.batch_task_ids(given) or [given])
        waited = await host.wait(ids, timeout=args.timeout)
    if args.json:
        print_json(waited)
    else:
        print(_summary(waited["tasks"]))
    return wait_status(waited)


def wait_status(waited: dict[str, Any]) -> int:
    """0 if every task completed; 1 if any ended otherwise; 124 if some are still not final."""
    states = [t["state"] for t in waited["tasks"]]
    if any(is_final(s) and s != TaskState.COMPLETED for s in states):
        return EXIT_FAILURE
    if not waited.get("done") or not all(is_final(s) for s in states):
        return EXIT_TIMEOUT
    return EXIT_OK


def _summary(tasks: list[dict[str, Any]]) -> str:
    rows = [
        (
            t["task_id"],
            shown_state(t),
            t.get("exit_code"),
            t.get("node"),
            "; ".join(filter(None, (t.get("error"), t.get("output_error") and f"output: {t['output_error']}"))),
        )
        for t in tasks
    ]
    return table(("ID", "STATE", "EXIT", "NODE", "ERROR"), rows)


# -------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
