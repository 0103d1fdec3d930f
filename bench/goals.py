"""The goals table of issue 16, each row beside its floor, from one run's raw numbers.

`goal_rows(raw)` reads what the phases left in `harness.RAW` and adds one
row per goal to the results table, in the section `GOALS`: the measured
value with its floor (the same load against a bare server, or the empty
database) in brackets, the goal, and OK/MISS. A phase that did not run
leaves its row as "not measured". Pure but for `harness.add`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

from bench import harness

GOALS = "Goals (issue 16): each measure beside its floor, from this run"


def _ms(x: float) -> str:
    return harness.ms(x)


def _get(raw: dict[str, Any], *path: str) -> Any:
    node: Any = raw
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def goal_rows(raw: dict[str, Any]) -> None:
    """Add the goals section to the table (see the module doc)."""
    rows: list[tuple[str, Callable[[dict[str, Any]], tuple[str, bool] | None], str]] = [
        ("durable submits/s, 100 runners, c32 (median of rounds); p99", _submits, ">= 2,000 /s, p99 <= 100 ms"),
        ("tasks/s through one 1,000-task array submit (empty DB)", _array, ">= 20,000"),
        ("Host CPU per task, submit -> completed, all requests", _cpu_per_task, "<= 0.5 ms"),
        ("1,000 idle runners at 5 s: Host CPU", _idle, "<= 1.5x floor"),
        ("--container NULL overhead over bare systemd-run --scope, p50", _null, "<= 50 ms"),
        ("1M tasks: status p99 / 1,000-row page p99", _big_reads, "<= 20 ms / <= 100 ms"),
        ("1M tasks: GET /api/health p50 / p99", _big_health, "<= 5 ms, independent of size"),
        ("1M tasks: submits/s beside an empty DB; start-up", _big_submits, "within 10 %"),
        ("1M tasks, 10,000 pending: Host RSS", _big_rss, "<= 300 MiB"),
        ("durability: lost / refused / falsely offline / over-commit", _durability, "0 / 0 / 0 / 0"),
    ]
    for metric, measure, goal in rows:
        try:
            got = measure(raw)
        except (KeyError, TypeError, ValueError, ZeroDivisionError, statistics.StatisticsError):
            got = None
        if got is None:
            harness.add(GOALS, metric, "not measured in this run", goal, "", None)
        else:
            value, ok = got
            harness.add(GOALS, metric, value, goal, "", ok)


def _submits(raw: dict[str, Any]) -> tuple[str, bool] | None:
    rounds = _get(raw, "throughput", "rounds")
    if not rounds:
        return None
    rate = statistics.median(r["rate"] for r in rounds)
    p99 = statistics.median(r["p99"] for r in rounds)
    floor = _get(raw, "submit_floor")
    beside = f" (floor {floor['rate']:.0f} /s, p99 {_ms(floor['p99'])})" if floor else " (no floor)"
    return f"{rate:.0f} /s, p99 {_ms(p99)}{beside}", rate >= 2000 and p99 <= 0.100


def _array(raw: dict[str, Any]) -> tuple[str, bool] | None:
    empty = _get(raw, "bigdb", "empty", "array")
    if empty is None:
        return None
    floor = _get(raw, "submit_floor", "array")
    beside = f" (floor {floor:.0f})" if floor else " (no floor)"
    views = _get(raw, "bigdb", "empty", "array_views")
    with_views = f"; answered with every view: {views:.0f}" if views else ""
    return f"{empty:.0f} tasks/s, ids answered (as the CLI){beside}{with_views}", empty >= 20_000


def _cpu_per_task(raw: dict[str, Any]) -> tuple[str, bool] | None:
    t = _get(raw, "throughput")
    if not t or not t.get("accepted"):
        return None
    per_task = t["host_cpu_s"] / t["accepted"]
    floor = _get(raw, "submit_floor", "cpu_per_submit")
    beside = f" (floor, the submit alone: {floor * 1000:.2f} ms)" if floor and not math.isnan(floor) else ""
    return f"{per_task * 1000:.2f} ms{beside}", per_task <= 0.0005


def _idle(raw: dict[str, Any]) -> tuple[str, bool] | None:
    idle, floor = _get(raw, "idle", "host_cpu"), _get(raw, "idle_floor", "host_cpu")
    if idle is None:
        return None
    if not floor:
        return f"{idle:.1f} % of a core (no floor: --floor-seconds 0)", False
    ratio = idle / floor
    return f"{idle:.1f} % of a core = {ratio:.2f}x (floor {floor:.1f} %)", ratio <= 1.5


def _null(raw: dict[str, Any]) -> tuple[str, bool] | None:
    r = _get(raw, "systemd_e2e")
    if not r:
        return None
    bare = harness.pct(r["bare_scope"], 50)
    overhead = harness.pct(r["to_done"], 50) - bare
    return f"{_ms(overhead)} (floor: bare {_ms(bare)}; ours {_ms(harness.pct(r['to_done'], 50))})", overhead <= 0.050


def _big(raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int] | None:
    b = _get(raw, "bigdb")
    if not b:
        return None
    return b["big"], b["empty"], int(b["tasks"])


def _big_pair(
    raw: dict[str, Any], first: tuple[str, float], second: tuple[str, float], ok: Callable[[float, float], bool]
) -> tuple[str, bool] | None:
    """Two (latency list, percentile) figures of the big database, beside the
    empty one's; `ok` judges the big ones."""
    got = _big(raw)
    if got is None:
        return None
    big, empty, n = got
    a, b = (harness.pct(big[key], q) for key, q in (first, second))
    floor = " / ".join(_ms(harness.pct(empty[key], q)) for key, q in (first, second))
    return f"{_ms(a)} / {_ms(b)} at {n:,} tasks (floor, empty: {floor})", ok(a, b)


def _big_reads(raw: dict[str, Any]) -> tuple[str, bool] | None:
    return _big_pair(raw, ("status", 99), ("page", 99), lambda s99, p99: s99 <= 0.020 and p99 <= 0.100)


def _big_health(raw: dict[str, Any]) -> tuple[str, bool] | None:
    return _big_pair(raw, ("health", 50), ("health", 99), lambda p50, _p99: p50 <= 0.005)


def _big_submits(raw: dict[str, Any]) -> tuple[str, bool] | None:
    got = _big(raw)
    if got is None:
        return None
    big, empty, n = got
    ratio = big["submits"] / empty["submits"]
    value = (
        f"{big['submits']:.0f} /s = {100 * ratio:.0f} % of empty's {empty['submits']:.0f} /s; "
        f"start-up {big['startup']:.2f} s (empty {empty['startup']:.2f} s) at {n:,} tasks"
    )
    return value, ratio >= 0.9


def _big_rss(raw: dict[str, Any]) -> tuple[str, bool] | None:
    got = _big(raw)
    if got is None:
        return None
    big, empty, n = got
    return f"{big['rss']:.0f} MiB at {n:,} tasks (floor, empty: {empty['rss']:.0f} MiB)", big["rss"] <= 300


def _durability(raw: dict[str, Any]) -> tuple[str, bool] | None:
    t = _get(raw, "throughput")
    if not t:
        return None
    counts = t["counts"]
    lost = sum(v for k, v in counts.items() if k != "completed")
    refused = sum(r["refused"] for r in t["rounds"])
    offline = max(t["offline_max"], t["offline_after"])
    over = t["overcommit_events"]
    return f"{lost} / {refused} / {offline} / {over}", lost == refused == offline == over == 0
