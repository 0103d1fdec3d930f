"""`hakuriver.client`: the cluster view (nodes, health) plus quick task status/kill.

hakuriver.client login             # keep the token your admin gave you (asked for, not echoed)
hakuriver.client nodes
hakuriver.client health            # cluster summary and live node stats
hakuriver.client health node1      # one node: resources, NUMA, temperatures, GPUs
hakuriver.client dashboard         # the address of the Host's web dashboard
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from ..models import NodeCapabilities, TaskState
from ..parsing import validate_node_name
from .common import (
    EXIT_CODES_EPILOG,
    EXIT_OK,
    CliParser,
    Connect,
    common_options,
    execute,
    format_ago,
    format_cpus,
    format_size,
    format_time,
    print_json,
    printable,
    table,
    task_id_arg,
)
from .login import add_login_parser
from .task import control_task, describe_task

PROG = "hakuriver.client"


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Look at the HakuRiver cluster: nodes, their health, and tasks.",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents: list[Any] = [common_options(subcommand=True)]

    add_login_parser(sub, parents)

    p = sub.add_parser(
        "nodes",
        help="list nodes with their allocated and total resources",
        description="List nodes with their allocated and total resources. A node an admin drained "
        "(hakuriver.admin node drain) shows as 'online, drained' (no new task goes there), with who "
        "drained it, when and why under the table.",
        parents=parents,
    )
    p.set_defaults(func=_cmd_nodes)

    p = sub.add_parser(
        "health",
        help="cluster summary, or one node's live stats",
        description="Without HOST: the cluster summary and every node's live stats. "
        "With HOST: that node in detail (NUMA, temperatures, GPU stats).",
        parents=parents,
    )
    p.add_argument("host", nargs="?", metavar="HOST", help="a node name")
    p.set_defaults(func=_cmd_health)

    p = sub.add_parser(
        "status", help="show one task in detail", description="Show one task in detail.", parents=parents
    )
    p.add_argument("task_id", type=task_id_arg, metavar="ID")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("kill", help="kill a task", description="Kill a task.", parents=parents)
    p.add_argument("task_id", type=task_id_arg, metavar="ID")
    p.set_defaults(func=_cmd_kill)

    p = sub.add_parser(
        "dashboard",
        help="print the address of the Host's web dashboard",
        description="Print the address of the Host's web dashboard, after checking that the Host serves "
        "it. Open it in a browser and log in with your token (hakuriver.admin token create makes one).",
        parents=parents,
    )
    p.set_defaults(func=_cmd_dashboard)
    return parser


async def _cmd_dashboard(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        url = await host.dashboard_url()
    print(url)
    return EXIT_OK


# ------------------------------------------------------------------ nodes
def _allocated(node: dict[str, Any]) -> tuple[int, int, int]:
    """(cores, memory bytes, GPU count) the scheduler has handed out on a node."""
    alloc = node.get("allocated") or {}
    if not isinstance(alloc, dict):
        return 0, 0, 0
    gpus = alloc.get("gpus") or 0
    gpu_count = len(gpus) if isinstance(gpus, (list, tuple)) else int(gpus)
    return int(alloc.get("cores") or 0), int(alloc.get("memory") or 0), gpu_count


def _node_state(node: dict[str, Any]) -> str:
    state = "online" if node.get("online") else "offline"
    return f"{state}, drained" if node.get("drained") else state


def _drain_text(node: dict[str, Any], now: float | None = None) -> str | None:
    """`5m ago by alice: kernel upgrade`, or None for a node not drained."""
    drain = node.get("drained")
    if not isinstance(drain, dict):
        return None
    who = f" by {printable(str(drain['by']))}" if drain.get("by") else ""
    reason = drain.get("reason") or "no reason given"
    return f"{format_ago(drain.get('at'), now)}{who}: {printable(str(reason))}"


def drain_line(node: dict[str, Any], now: float | None = None) -> str | None:
    """`node3 drained 5m ago by alice: kernel upgrade`, or None for a node not drained."""
    text = _drain_text(node, now)
    return None if text is None else f"{node['hostname']} drained {text}"


def node_runs(node: dict[str, Any]) -> str:
    """What a node's runner says it can run: `docker,null`, or
    `docker (null: systemd is not PID 1)`; `unknown` for a runner that does
    not say (an older one: the Host sends it any task)."""
    raw = node.get("capabilities")
    if raw is None:
        return "unknown"
    try:
        return NodeCapabilities.from_json(raw).summary()
    except ValueError:
        return "unknown"  # a newer Host's record: show nothing rather than fail


def nodes_table(nodes: list[dict[str, Any]]) -> str:
    rows = []
    for n in nodes:
        cores, memory, gpus = _allocated(n)
        total_gpus = len(n.get("gpus") or [])
        rows.append(
            (
                n["hostname"],
                _node_state(n),
                f"{cores}/{n.get('cores', 0)}",
                f"{format_size(memory) if memory else '0'}/{format_size(n.get('memory'))}",
                f"{gpus}/{total_gpus}" if total_gpus else "-",
                len(n.get("numa") or []) or "-",
                format_ago(n.get("last_heartbeat")),
                node_runs(n),
            )
        )
    # RUNS last: its reasons are the one long, free-text cell.
    text = table(("NODE", "STATE", "CORES", "MEMORY", "GPUS", "NUMA", "LAST SEEN", "RUNS"), rows)
    # A drain's reason is free text too: one line per drained node, under the table.
    drains = [line for n in nodes if (line := drain_line(n)) is not None]
    return "\n".join([text, "", *drains]) if drains else text


async def _cmd_nodes(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.nodes()
    if args.json:
        print_json(result)
    elif not result["nodes"]:
        print("no nodes have registered yet", file=sys.stderr)
    else:
        print(nodes_table(result["nodes"]))
    return EXIT_OK


# ----------------------------------------------------------------- health
def _pct(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}%"


def _max_temp(stats: dict[str, Any]) -> str:
    temps = [v for v in (stats.get("temperatures") or {}).values() if isinstance(v, (int, float))]
    return f"{max(temps):.0f}C" if temps else "-"


def _load(stats: dict[str, Any]) -> str:
    load = stats.get("load_average")
    return " ".join(f"{x:.2f}" for x in load) if load else "-"


def _ordered_counts(counts: dict[str, int]) -> list[tuple[str, int]]:
    order = {s.value: i for i, s in enumerate(TaskState)}
    return sorted(counts.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def health_summary(health: dict[str, Any], nodes: list[dict[str, Any]]) -> str:
    node_counts = health.get("nodes") or {}
    task_counts = health.get("tasks") or {}
    lines = [
        f"status  {health.get('status', '?')}",
        f"nodes   {node_counts.get('online', 0)} online, {node_counts.get('offline', 0)} offline",
        "tasks   " + (", ".join(f"{k} {v}" for k, v in _ordered_counts(task_counts) if v) or "none"),
    ]
    if nodes:
        rows = []
        for n in nodes:
            s = n.get("stats") or {}
            gpu_util = [g.get("utilization") for g in s.get("gpus") or [] if g.get("utilization") is not None]
            rows.append(
                (
                    n["hostname"],
                    _node_state(n),
                    _pct(s.get("cpu_percent")),
                    _pct(s.get("memory_percent")),
                    _load(s),
                    _max_temp(s),
                    " ".join(f"{u}%" for u in gpu_util) or "-",
                    format_ago(n.get("last_heartbeat")),
                )
            )
        lines += ["", table(("NODE", "STATE", "CPU", "MEM", "LOAD", "TEMP", "GPU UTIL", "LAST SEEN"), rows)]
    return "\n".join(lines)


def node_detail(node: dict[str, Any]) -> str:
    stats = node.get("stats") or {}
    cores, memory, gpus_used = _allocated(node)
    used_mem, total_mem = stats.get("memory_used"), stats.get("memory_total")
    mem_now = f"; in use {format_size(used_mem)}/{format_size(total_mem)}" if used_mem and total_mem else ""
    rows = [
        ("node", node["hostname"]),
        ("url", node.get("url")),
        ("state", f"{_node_state(node)}, last heartbeat {format_ago(node.get('last_heartbeat'))}"),
        ("registered", format_time(node.get("registered_at"))),
        ("cores", f"{cores}/{node.get('cores', 0)} allocated; cpu {_pct(stats.get('cpu_percent'))}"),
        ("memory", f"{format_size(memory) if memory else '0'}/{format_size(node.get('memory'))} allocated{mem_now}"),
        ("load", _load(stats)),
        ("runs", node_runs(node)),
    ]
    drained = _drain_text(node)
    if drained is not None:
        rows.append(("drained", drained))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v if v not in (None, '') else '-'}" for k, v in rows]
    numa = node.get("numa") or []
    if numa:
        lines += [
            "",
            "NUMA",
            table(
                ("ID", "CPUS", "MEMORY"),
                [(n["id"], format_cpus(n.get("cpus") or []), format_size(n.get("memory"))) for n in numa],
            ),
        ]
    temps = stats.get("temperatures") or {}
    if temps:
        lines += ["", "TEMPERATURES", table(("SENSOR", "C"), [(k, f"{v:.1f}") for k, v in sorted(temps.items())])]
    gpu_stats = {g.get("index"): g for g in stats.get("gpus") or []}
    gpus = node.get("gpus") or []
    if gpus or gpu_stats:
        gpu_rows: list[tuple[Any, ...]] = []
        for g in gpus or [{"index": i} for i in sorted(gpu_stats)]:
            s = gpu_stats.get(g["index"], {})
            mem_used, mem_total = s.get("memory_used"), s.get("memory_total") or g.get("memory_total")
            gpu_rows.append(
                (
                    g["index"],
                    g.get("name"),
                    _pct(s.get("utilization")),
                    f"{format_size(mem_used) if mem_used else '0'}/{format_size(mem_total)}" if mem_total else "-",
                    f"{s['temperature']}C" if s.get("temperature") is not None else "-",
                    f"{s['power_watts']}W" if s.get("power_watts") is not None else "-",
                )
            )
        lines += [
            "",
            f"GPUS ({gpus_used} allocated)",
            table(("INDEX", "NAME", "UTIL", "MEMORY", "TEMP", "POWER"), gpu_rows),
        ]
    return "\n".join(lines)


async def _cmd_health(args: argparse.Namespace, connect: Connect) -> int:
    if args.host is not None:
        validate_node_name(args.host)
        async with connect() as host:
            node = await host.node(args.host)
        if args.json:
            print_json(node)
        else:
            print(node_detail(node))
        return EXIT_OK
    async with connect() as host:
        if args.json:
            print_json(await host.health())
            return EXIT_OK
        health, nodes = await asyncio.gather(host.health(), host.nodes())
    print(health_summary(health, nodes["nodes"]))
    return EXIT_OK


# ------------------------------------------------------------------ tasks
async def _cmd_status(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        task = await host.get_task(args.task_id)
    if args.json:
        print_json(task)
    else:
        print(describe_task(task))
    return EXIT_OK


async def _cmd_kill(args: argparse.Namespace, connect: Connect) -> int:
    return await control_task(args, connect, "kill")


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
