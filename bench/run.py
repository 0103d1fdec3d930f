"""HakuRiver benchmarks, measured the way the reference measured the original.

    python -m bench.run            # full run (~4-5 minutes on 2 cores)
    python -m bench.run --quick    # smaller/shorter (~1 minute)

Phases (each prints progress on stderr; one table of numbers on stdout at the end):

1. throughput  The real Host (a subprocess, real SQLite file) and 100 simulated
               runners served by one aiohttp server in this process (one loopback
               port per runner). 2,000 single-core submits at concurrency 32.
   listing     GET /api/tasks?limit=1000 on that Host, with an event-loop probe
               (GET /api/openapi.yaml, no database) and a heartbeat alongside.
2. idle        A second Host with 1,000 simulated idle runners heartbeating every
               5 s: the Host's CPU.
3. e2e         Host + one real Runner process + real Docker: `true` tasks one after
               another, submit->running and submit->completed, beside bare
               `docker run --rm IMAGE true` and docker-SDK create/start/wait/remove.
4. scrape      A Host with simulated runners heartbeating every second and a
               pending queue: heartbeat RTT without, then with, a GET /metrics
               every second (a scrape must never hold up a heartbeat).

Host CPU is read from /proc/<pid>/stat (utime+stime, all threads) over the
measured window. Everything runs on 127.0.0.1. Every process and container
started here is stopped/removed on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import toml
from prometheus_client.parser import text_string_to_metric_families

from bench import harness
from bench.dashboards import Dashboards
from bench.goals import goal_rows
from bench.harness import (
    BENCH_LABEL,
    CHILDREN,
    ENV_IMAGE,
    ENV_NAME,
    ORIGINAL,
    RAW,
    RESULTS,
    RUNNER_NAMES,
    CpuWindow,
    HostSetup,
    OthersWindow,
    Proc,
    Profiler,
    SimCluster,
    add,
    child_env,
    get_json,
    log,
    ms,
    offline_among,
    pct,
    post_json,
    print_table,
    proc_cpu_seconds,
    proc_rss_mib,
)
from hakuriver.models import TaskState
from hakuriver.runner.api import START_REPLY_WAIT_SECONDS
from tests.harness.procs import free_port, runner_argv, runner_config


# ====================================================== phase 1: throughput
async def setup_throughput_host(
    args: argparse.Namespace, root: Path, session: aiohttp.ClientSession, stack: contextlib.AsyncExitStack
) -> tuple[HostSetup, SimCluster, list[str]]:
    host = HostSetup(root / "throughput")
    stack.callback(host.stop)
    await host.start(session)
    sim = SimCluster(host, task_runtime=(args.task_min, args.task_max), start_reply_wait=args.start_reply_wait / 1000)
    stack.push_async_callback(sim.close)
    names = [f"sim{i:03d}" for i in range(args.runners)]
    ports = await sim.start(names)
    await sim.add_runners(names, ports, host.heartbeat_interval)
    log(
        f"throughput Host pid {host.proc.pid} up; {len(names)} simulated runners registered "
        f"(8 cores each, one port each)"
    )
    return host, sim, names


@dataclass
class Load:
    accepted: int = 0
    lat: list[float] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    submitted_at: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0


async def submit_load(host: HostSetup, args: argparse.Namespace) -> Load:
    """`args.submits` single-core submits by `args.concurrency` workers over keep-alive
    connections, each asking for the ids only (`?reply=ids`), as `hakuriver.task submit` does."""
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    payload = {"command": ["true"], "cores": 1}
    out = Load()
    todo = iter(range(args.submits))

    async def worker(client: aiohttp.ClientSession) -> None:
        for _ in todo:
            t0 = time.perf_counter()
            try:
                async with client.post(host.url + "/api/tasks?reply=ids", json=payload) as resp:
                    body = await resp.read()
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                out.lat.append(time.perf_counter() - t0)
                out.refused[type(exc).__name__] += 1
                continue
            out.lat.append(time.perf_counter() - t0)
            if status == 201:
                out.accepted += 1
                out.submitted_at[int(json.loads(body)["task_ids"][0])] = time.monotonic()
            else:
                try:
                    code = json.loads(body)["error"]["code"]
                except Exception:
                    code = "?"
                out.refused[f"{status} {code}"] += 1

    async with aiohttp.ClientSession(connector=connector, headers=host.headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        out.seconds = time.perf_counter() - t0
    return out


async def drain(session: aiohttp.ClientSession, host: HostSetup, expect: int, timeout: float) -> dict[str, int]:
    """Wait until `expect` tasks in all are final; returns the Host's state counts."""
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        counts = (await get_json(session, host, "/api/health"))["tasks"]
        if sum(v for k, v in counts.items() if TaskState(k).is_final) >= expect:
            break
        await asyncio.sleep(0.25)
    return counts


async def db_commits(session: aiohttp.ClientSession, host: HostSetup) -> tuple[float, float]:
    """The Host's group commits so far and the write operations they carried (from /metrics)."""
    async with session.get(host.url + "/metrics", headers=host.headers) as resp:
        text = await resp.text()
    found = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    return found.get("hakuriver_db_commit_operations_count", 0.0), found.get("hakuriver_db_commit_operations_sum", 0.0)


async def bench_throughput(
    args: argparse.Namespace, host: HostSetup, sim: SimCluster, names: list[str], session: aiohttp.ClientSession
) -> None:
    sec = f"1. Host throughput: {len(names)} simulated runners, {args.submits} submits @ concurrency {args.concurrency}"
    # Liveness sweeps only start after the Host has been up one heartbeat timeout;
    # make sure they are armed, or "0 falsely offline" would prove nothing.
    wait = host.grace + 2 - host.uptime
    if wait > 0:
        log(f"waiting {wait:.0f} s so the Host's liveness sweep is armed (grace {host.grace:.0f} s after start)")
        await asyncio.sleep(wait)
    name_set = set(names)
    uptime_at_start = host.uptime
    sim.measure_gaps = True
    for r in sim.runners.values():
        r.max_ack_gap = 0.0
    prof = Profiler(args.profile)
    prof.start(host.proc.pid, "host-throughput")

    offline_max = 0
    monitor_errors = 0
    stop_monitor = asyncio.Event()

    async def monitor() -> None:
        nonlocal offline_max, monitor_errors
        while not stop_monitor.is_set():
            try:
                off, _ = await offline_among(session, host, name_set)
                offline_max = max(offline_max, off)
            except Exception:
                monitor_errors += 1
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop_monitor.wait(), 1.0)

    try:
        mon = asyncio.ensure_future(monitor())
        hb_mark = time.monotonic()
        commits_before = await db_commits(session, host)
        host_cpu = CpuWindow(host.proc.pid)
        own_cpu = CpuWindow(None)
        others = OthersWindow()
        t_start = time.perf_counter()
        load = await submit_load(host, args)
        accepted, lat, refused, submitted_at, t_submit = (
            load.accepted,
            load.lat,
            load.refused,
            load.submitted_at,
            load.seconds,
        )
        host_cpu_submit = host_cpu.percent()
        own_cpu_submit = own_cpu.percent()
        log(f"submitted {accepted}/{args.submits} in {t_submit:.2f} s; waiting for all to finish")
        counts = await drain(session, host, accepted, args.drain_timeout)
        t_all = time.perf_counter() - t_start
        host_cpu_all = host_cpu.percent()
        others_pct = others.percent()
        host_cpu_s = host_cpu.seconds()
        host_user, host_sys = host_cpu.split_percent()
        commits_after = await db_commits(session, host)
        hb_during = sim.hb_since(hb_mark)
        # Extra rounds on the same Host: this disk's fsync tail varies from run to run.
        rounds = [
            {"rate": accepted / t_submit, "p50": pct(lat, 50), "p99": pct(lat, 99), "refused": sum(refused.values())}
        ]
        done_total = accepted
        for i in range(1, args.rounds):
            extra = await submit_load(host, args)
            done_total += extra.accepted
            log(f"round {i + 1}: submitted {extra.accepted} in {extra.seconds:.2f} s; waiting for all to finish")
            counts = await drain(session, host, done_total, args.drain_timeout)
            rounds.append(
                {
                    "rate": extra.accepted / extra.seconds,
                    "p50": pct(extra.lat, 50),
                    "p99": pct(extra.lat, 99),
                    "refused": sum(extra.refused.values()),
                }
            )
        stop_monitor.set()
        await mon
        off_after, seen = await offline_among(session, host, name_set)
    finally:
        stop_monitor.set()
        prof.stop()

    max_cores = max(r.max_cores_used for r in sim.runners.values() if r.name in name_set)
    overcommits = sum(r.overcommit_events for r in sim.runners.values() if r.name in name_set)
    max_gap = max(r.max_ack_gap for r in sim.runners.values() if r.name in name_set)
    nodes = (await get_json(session, host, "/api/nodes"))["nodes"]
    leftover_alloc = sum(n["allocated"]["cores"] for n in nodes if n["hostname"] in name_set)
    rate = accepted / t_submit if t_submit else math.nan
    p50, p99 = pct(lat, 50), pct(lat, 99)
    n_refused = sum(refused.values())
    final_counts = {k: v for k, v in counts.items() if v}
    RAW["throughput"] = {
        "accepted": accepted,
        "submit_s": t_submit,
        "all_final_s": t_all,
        "rate": rate,
        "p50": p50,
        "p90": pct(lat, 90),
        "p99": p99,
        "max": max(lat) if lat else None,
        "rounds": rounds,
        "host_cpu_submit": host_cpu_submit,
        "host_cpu_all": host_cpu_all,
        "host_cpu_s": host_cpu_s,
        "host_user_pct": host_user,
        "host_sys_pct": host_sys,
        "others_pct": others_pct,
        "bench_cpu_submit": own_cpu_submit,
        "refused": dict(refused),
        "counts": final_counts,
        "offline_max": offline_max,
        "offline_after": off_after,
        "max_cores": max_cores,
        "overcommit_events": overcommits,
        "max_hb_gap": max_gap,
        "hb_p50": pct(hb_during, 50),
        "hb_p99": pct(hb_during, 99),
        "hb_max": max(hb_during) if hb_during else None,
        "hb_errors": dict(sim.hb_errors),
        "report_retries": sim.report_failures,
        "report_requests": len(sim.report_rtt),
        "reports_sent": sim.reports_sent,
        "task_batches": sim.batches_taken,
        "task_singles": sim.singles_taken,
        "kills": sim.kills,
        "kill_orders_stale": sim.hb_kill_orders,
        "kill_orders_live": sim.hb_kill_orders_live,
        "auth_failures": sim.auth_failures,
        "host_uptime_at_start": uptime_at_start,
    }
    add(
        sec,
        "round 1: accepted submits/s (durable: 201 after COMMIT)",
        f"{rate:.0f} /s  ({accepted} in {t_submit:.2f} s)",
        f">= {GOAL_SUBMITS_PER_S} /s",
        ORIGINAL["submits_per_s"],
        rate >= GOAL_SUBMITS_PER_S,
    )
    add(
        sec,
        "round 1: submit latency p50 / p99 / max",
        f"{ms(p50)} / {ms(p99)} / {ms(max(lat) if lat else math.nan)}",
        "p99 <= 100 ms",
        ORIGINAL["submit_p99"],
        p99 <= GOAL_SUBMIT_P99,
    )
    add(
        sec,
        "round 1: submits refused",
        f"{n_refused}" + (f" {dict(refused)}" if refused else ""),
        "0",
        ORIGINAL["refused"],
        n_refused == 0,
    )
    add(
        sec,
        "Host CPU during submits / submit->all final",
        f"{host_cpu_submit:.0f} % / {host_cpu_all:.0f} % of a core (user {host_user:.0f} %, sys {host_sys:.0f} %)",
        "",
        ORIGINAL["host_cpu_load"],
    )
    per_task = host_cpu_s / accepted if accepted else math.nan
    add(
        sec,
        "Host CPU per task, submit->completed (all its requests)",
        f"{per_task * 1000:.2f} ms",
        f"<= {GOAL_CPU_PER_TASK * 1000:.1f} ms",
        "28 ms (93 % at 33/s)",
        per_task <= GOAL_CPU_PER_TASK,
    )
    commits = commits_after[0] - commits_before[0]
    ops = commits_after[1] - commits_before[1]
    RAW["throughput"]["db_commits"] = commits
    RAW["throughput"]["db_write_ops"] = ops
    add(
        sec,
        "  per task: requests to the Host / to runners / database commits",
        f"{(accepted + len(sim.report_rtt) + len(hb_during)) / max(accepted, 1):.2f} / "
        f"{(sim.batches_taken + sim.singles_taken) / max(accepted, 1):.2f} / {commits / max(accepted, 1):.2f}"
        f"  ({ops / max(commits, 1):.1f} writes per commit; {sim.started_in_reply} starts in order answers)",
    )
    # Dispatch delay for the tasks that found free cores at once: the first
    # 80 % of the cluster's slots, in id (= submission) order.
    slots = sum(r.cores for r in sim.runners.values() if r.name in name_set)
    early = sorted(submitted_at)[: int(slots * 0.8)]
    disp = [sim.accept_at[i] - submitted_at[i] for i in early if i in sim.accept_at]
    add(
        sec,
        f"submit answered -> runner got it, first {len(early)} tasks (free cores) p50 / p99",
        f"{ms(pct(disp, 50))} / {ms(pct(disp, 99))}",
    )
    # The Host's own timestamps for the same early tasks: where the delay sits.
    all_tasks: dict[int, dict[str, Any]] = {}
    before = ""
    while True:
        page = await get_json(session, host, "/api/tasks?limit=1000" + (f"&before={before}" if before else ""))
        for t in page["tasks"]:
            all_tasks[int(t["task_id"] if "task_id" in t else t["id"])] = t
        before = page.get("next_before") or ""
        if not before:
            break
    sched = [
        all_tasks[i]["assigned_at"] - all_tasks[i]["submitted_at"]
        for i in early
        if i in all_tasks and all_tasks[i].get("assigned_at")
    ]
    to_run = [
        all_tasks[i]["started_at"] - all_tasks[i]["assigned_at"]
        for i in early
        if i in all_tasks and all_tasks[i].get("started_at") and all_tasks[i].get("assigned_at")
    ]
    add(sec, "  Host timestamps: submitted->assigned p50 / p99", f"{ms(pct(sched, 50))} / {ms(pct(sched, 99))}")
    add(
        sec,
        "  Host timestamps: assigned->running (10-30 ms sim start) p50 / p99",
        f"{ms(pct(to_run, 50))} / {ms(pct(to_run, 99))}",
    )
    RAW["throughput"]["early_dispatch"] = {
        "submit_to_runner_p50": pct(disp, 50),
        "sched_p50": pct(sched, 50),
        "sched_p99": pct(sched, 99),
        "assigned_to_running_p50": pct(to_run, 50),
    }
    add(
        sec,
        "runner state report RTT (running/completed) p50 / p99 / max",
        f"{ms(pct(sim.report_rtt, 50))} / {ms(pct(sim.report_rtt, 99))} / "
        f"{ms(max(sim.report_rtt) if sim.report_rtt else math.nan)}  "
        f"({len(sim.report_rtt)} requests carrying {sim.reports_sent} reports)",
    )
    add(sec, "bench process CPU during submits (client + 100 sims)", f"{own_cpu_submit:.0f} % of a core")
    add(sec, "other load on the machine, round 1 (not ours; of 2 cores)", f"{others_pct:.0f} % of a core")
    add(sec, "round 1: all tasks final after (incl. 1-3 s scripted runtime)", f"{t_all:.1f} s")
    add(
        sec,
        f"task states after {len(rounds)} round(s)",
        f"{final_counts}",
        "all completed",
        "~900 lost",
        final_counts.get("completed", 0) == done_total and len(final_counts) == 1,
    )
    if len(rounds) > 1:
        rates = [r["rate"] for r in rounds]
        p99s = [r["p99"] for r in rounds]
        add(
            sec,
            f"all {len(rounds)} rounds: submits/s",
            " / ".join(f"{x:.0f}" for x in rates) + f"  (median {statistics.median(rates):.0f})",
            f">= {GOAL_SUBMITS_PER_S} /s",
            "",
            statistics.median(rates) >= GOAL_SUBMITS_PER_S,
        )
        add(
            sec,
            f"all {len(rounds)} rounds: submit p99",
            " / ".join(ms(x) for x in p99s) + f"  (median {ms(statistics.median(p99s))})",
            "p99 <= 100 ms",
            "",
            statistics.median(p99s) <= GOAL_SUBMIT_P99,
        )
        add(
            sec,
            f"all {len(rounds)} rounds: refused",
            " / ".join(str(r["refused"]) for r in rounds),
            "0",
            "",
            all(r["refused"] == 0 for r in rounds),
        )
    add(
        sec,
        "nodes falsely offline (max during / after)",
        f"{offline_max} / {off_after} of {seen}",
        "0",
        ORIGINAL["false_offline"],
        offline_max == 0 and off_after == 0,
    )
    add(
        sec,
        "heartbeat RTT during load p50 / p99 / max",
        f"{ms(pct(hb_during, 50))} / {ms(pct(hb_during, 99))} / {ms(max(hb_during) if hb_during else math.nan)}"
        f"  ({len(hb_during)} beats, {sum(sim.hb_errors.values())} errors)",
    )
    add(
        sec,
        "longest gap between a runner's acked heartbeats",
        f"{max_gap:.1f} s (interval 5 s)",
        f"< {host.grace:.0f} s timeout",
        "",
        max_gap < host.grace,
    )
    add(
        sec,
        "max cores busy on one runner (of 8); over-commit events",
        f"{max_cores} / 8; {overcommits}",
        "<= 8; 0",
        ORIGINAL["overcommit"],
        max_cores <= 8 and overcommits == 0,
    )
    add(sec, "cores still allocated after drain", f"{leftover_alloc}", "0", "", leftover_alloc == 0)
    add(
        sec,
        "kill orders: for running tasks / direct kills",
        f"{sim.hb_kill_orders_live} / {sim.kills}",
        "0 / 0",
        "",
        sim.hb_kill_orders_live == 0 and sim.kills == 0,
    )
    add(sec, "kill orders for already-finished tasks (stale beat)", f"{sim.hb_kill_orders}")
    add(sec, "Host peak RSS", f"{proc_rss_mib(host.proc.pid):.0f} MiB")
    await submit_floor(args, host.root.parent / "submit-floor", session, sec)


async def submit_floor(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession, sec: str) -> None:
    """The same submits against `FLOOR_SERVER`: HTTP and one group-committed
    SQLite row per submit, nothing else. The Host's rate beside it says what
    the scheduler, validation and accounting cost on this machine and disk."""
    floor = FloorSetup(root)
    try:
        await floor.start(session)
        assert floor.proc is not None
        cpu = CpuWindow(floor.proc.pid)
        load = await submit_load(floor, args)
        cpu_s = cpu.seconds()
        arrays = []
        for _ in range(5):
            t0 = time.perf_counter()
            status, body = await post_json(session, floor, "/api/tasks", {"command": ["true"], "array": "0-999"})
            if status != 201:
                raise RuntimeError(f"floor array submit: HTTP {status} {str(body)[:200]}")
            arrays.append(1000 / (time.perf_counter() - t0))
    finally:
        floor.stop()
    rate = load.accepted / load.seconds if load.seconds else math.nan
    RAW["submit_floor"] = {
        "rate": rate,
        "p50": pct(load.lat, 50),
        "p99": pct(load.lat, 99),
        "refused": dict(load.refused),
        "cpu_per_submit": cpu_s / load.accepted if load.accepted else math.nan,
        "array": statistics.median(arrays),
    }
    add(
        sec,
        "floor: bare aiohttp + one group-committed SQLite row per submit",
        f"{rate:.0f} /s; p50 / p99 {ms(pct(load.lat, 50))} / {ms(pct(load.lat, 99))}; "
        f"{RAW['submit_floor']['cpu_per_submit'] * 1000:.2f} ms CPU per submit; "
        f"1,000-row array {RAW['submit_floor']['array']:.0f} rows/s"
        + (f"; refused {dict(load.refused)}" if load.refused else ""),
    )


async def bench_listing(
    args: argparse.Namespace, host: HostSetup, sim: SimCluster, names: list[str], session: aiohttp.ClientSession
) -> None:
    sec = "1b. Listing on the same Host"
    total = (await get_json(session, host, "/api/health"))["tasks"]
    n_tasks = sum(total.values())
    probe_runner = sim.runners[names[0]]
    probe_session = aiohttp.ClientSession(headers=host.headers)

    async def loop_probe() -> float:  # no database: pure event-loop responsiveness
        t0 = time.perf_counter()
        async with probe_session.get(host.url + "/api/openapi.yaml") as r:
            await r.read()
        return time.perf_counter() - t0

    try:
        base_loop = [await loop_probe() for _ in range(20)]
        base_hb = [await sim.heartbeat_once(probe_runner) for _ in range(20)]
        list_times: list[float] = []
        sizes: list[int] = []
        during_loop: list[float] = []
        during_hb: list[float] = []

        for _ in range(args.list_repeats):
            done = asyncio.Event()

            async def probes(done: asyncio.Event = done) -> None:
                while not done.is_set():
                    lat_l, lat_h = await asyncio.gather(loop_probe(), sim.heartbeat_once(probe_runner))
                    if not done.is_set():
                        during_loop.append(lat_l)
                        during_hb.append(lat_h)
                    await asyncio.sleep(0.002)

            p = asyncio.ensure_future(probes())
            await asyncio.sleep(0.01)
            t0 = time.perf_counter()
            async with probe_session.get(host.url + "/api/tasks?limit=1000") as r:
                body = await r.read()
                assert r.status == 200, body[:200]
            list_times.append(time.perf_counter() - t0)
            sizes.append(len(body))
            done.set()
            await p
        n_listed = len(json.loads(body)["tasks"])
    finally:
        await probe_session.close()
    lp50 = pct(list_times, 50)
    RAW["listing"] = {
        "tasks_in_db": n_tasks,
        "listed": n_listed,
        "bytes": sizes[-1],
        "p50": lp50,
        "max": max(list_times),
        "loop_probe_base_p50": pct(base_loop, 50),
        "loop_probe_during_max": max(during_loop) if during_loop else None,
        "hb_base_p50": pct(base_hb, 50),
        "hb_during_max": max(during_hb) if during_hb else None,
        "probes_during": len(during_loop),
    }
    add(
        sec,
        f"GET /api/tasks?limit=1000 ({n_listed} of {n_tasks} tasks) p50 / max",
        f"{ms(lp50)} / {ms(max(list_times))}, {sizes[-1] / 1e6:.2f} MB",
        "",
        ORIGINAL["list"],
    )
    add(
        sec,
        "event-loop probe (GET /api/openapi.yaml) idle p50 -> max during lists",
        f"{ms(pct(base_loop, 50))} -> {ms(max(during_loop) if during_loop else math.nan)}  ({len(during_loop)} probes)",
        "max << list time",
        "blocked",
        bool(during_loop) and max(during_loop) < max(0.5 * lp50, 0.02),
    )
    add(
        sec,
        "heartbeat RTT idle p50 -> max during lists",
        f"{ms(pct(base_hb, 50))} -> {ms(max(during_hb) if during_hb else math.nan)}",
    )


# ============================================================ phase 2: idle
GOAL_SUBMITS_PER_S = 2000
"""Issue 16: durable single-task submits/s at concurrency 32, 100 runners."""
GOAL_SUBMIT_P99 = 0.100
GOAL_CPU_PER_TASK = 0.0005
"""Issue 16: Host CPU seconds per task, submit -> completed, all its requests."""

FLOOR_SERVER = r"""
import sys, hmac
from aiohttp import web
token = ("Bearer " + sys.argv[2]).encode()

@web.middleware
async def auth(request, handler):
    if not hmac.compare_digest(request.headers.get("Authorization", "").encode(), token):
        return web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)
    return await handler(request)

async def register(request):
    data = await request.json()
    return web.json_response({"hostname": data["hostname"], "heartbeat_interval": 5.0})

async def heartbeat(request):
    await request.json()
    return web.json_response({"kill": []})

async def health(request):
    return web.json_response({"status": "ok"})

# The submit floor: the request parsed, one row written to a SQLite file in
# WAL mode with synchronous=FULL (as the Host's), group-committed, and the id
# answered once its COMMIT returned. No validation, scheduling or accounting.
import asyncio, itertools, json, sqlite3
db = sqlite3.connect(sys.argv[3], isolation_level=None, check_same_thread=False)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS tasks (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
ids = itertools.count(1)
queue = []
wake = asyncio.Event()

def commit(rows):
    db.execute("BEGIN")
    db.executemany("INSERT INTO tasks (id, body) VALUES (?, ?)", rows)
    db.execute("COMMIT")

async def writer(app):
    async def loop():
        while True:
            await wake.wait()
            wake.clear()
            batch = queue[:]
            del queue[:]
            await asyncio.to_thread(commit, [(i, b) for i, b, _ in batch])
            for _, _, fut in batch:
                fut.set_result(None)
    task = asyncio.create_task(loop())
    yield
    task.cancel()

async def submit(request):
    data = await request.json()
    first, _, last = str(data.get("array", "0-0")).partition("-")
    task_ids = [next(ids) for _ in range(int(last or first) - int(first) + 1)]
    body = json.dumps(data)
    futs = []
    for task_id in task_ids:
        futs.append(asyncio.get_running_loop().create_future())
        queue.append((task_id, body, futs[-1]))
    wake.set()
    await asyncio.gather(*futs)
    return web.json_response({"task_ids": [str(i) for i in task_ids]}, status=201)

app = web.Application(middlewares=[auth])
app.cleanup_ctx.append(writer)
app.add_routes([web.post("/api/runner/register", register), web.post("/api/runner/heartbeat", heartbeat),
                web.get("/api/health", health), web.post("/api/tasks", submit)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


class FloorSetup(HostSetup):
    """A bare aiohttp server answering register/heartbeat with no work behind
    them, and submits with one group-committed row each: the cost of the HTTP
    layer and of a durable write alone, for comparison with the Host."""

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.proc = Proc(
            "floor",
            [sys.executable, "-c", FLOOR_SERVER, str(self.port), self.token, str(self.root / "floor.db")],
            self.root / "logs" / "floor.log",
            child_env(self.root),
        )
        self.proc.start()
        self.started_at = time.time()
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(self.url + "/api/health", headers=self.headers) as r:
                    if r.status == 200:
                        return
            if not self.proc.alive or time.monotonic() > deadline:
                raise RuntimeError(f"the floor server did not start:\n{self.proc.tail()}")
            await asyncio.sleep(0.1)


async def measure_idle(
    args: argparse.Namespace,
    host: HostSetup,
    session: aiohttp.ClientSession,
    seconds: float,
    profile_name: str | None,
    dashboards: int = 0,
    scrape_every: float = 0.0,
) -> dict[str, Any]:
    sim = SimCluster(host)
    scrapes: list[float] = []
    scrape_errors = 0

    async def scraper() -> None:
        # A Prometheus server beside the dashboards: GET /metrics every `scrape_every` s.
        nonlocal scrape_errors
        while True:
            t0 = time.perf_counter()
            try:
                async with session.get(host.url + "/metrics", headers=host.headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        scrape_errors += 1
            except (TimeoutError, aiohttp.ClientError, OSError):
                scrape_errors += 1
            scrapes.append(time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, scrape_every - (time.perf_counter() - t0)))

    prof = Profiler(args.profile if profile_name else None)
    stack = contextlib.AsyncExitStack()
    try:
        await host.start(session)
        await sim.start()
        names = [f"idle{i:04d}" for i in range(args.idle_runners)]
        t0 = time.perf_counter()
        await sim.add_runners(names, {}, host.heartbeat_interval)
        t_reg = time.perf_counter() - t0
        log(
            f"{host.proc.name} pid {host.proc.pid}: {len(names)} runners registered in {t_reg:.1f} s; "
            f"measuring {seconds:.0f} s"
        )
        views = await stack.enter_async_context(Dashboards(host.url, host.token, dashboards)) if dashboards else None
        if scrape_every > 0:
            scraping = asyncio.ensure_future(scraper())
            stack.callback(scraping.cancel)
        await asyncio.sleep(2.0)
        if profile_name:
            prof.start(host.proc.pid, profile_name)
        fetches0 = views.fetches if views else 0
        beats0 = sim.heartbeats_ok
        mark = time.monotonic()
        cpu = CpuWindow(host.proc.pid)
        own = CpuWindow(None)
        others = OthersWindow()
        await asyncio.sleep(seconds)
        others_pct = others.percent()
        host_pct = cpu.percent()
        user, system = cpu.split_percent()
        own_pct = own.percent()
        beats = sim.heartbeats_ok - beats0
        wall = time.monotonic() - mark
        hb = sim.hb_since(mark)
        off = seen = 0
        if not isinstance(host, FloorSetup):
            off, seen = await offline_among(session, host, set(names))
        return {
            "runners": len(names),
            "register_s": t_reg,
            "window_s": wall,
            "host_cpu": host_pct,
            "host_user": user,
            "host_sys": system,
            "bench_cpu": own_pct,
            "others_pct": others_pct,
            "beats_per_s": beats / wall,
            "hb_p50": pct(hb, 50),
            "hb_p99": pct(hb, 99),
            "hb_max": max(hb) if hb else math.nan,
            "offline": off,
            "seen": seen,
            "errors": dict(sim.hb_errors),
            "dashboards": dashboards,
            "page_fetches_per_s": ((views.fetches - fetches0) / wall) if views else 0.0,
            "page_fetch_p99": pct(views.fetch_seconds, 99) if views else math.nan,
            "page_errors": views.errors if views else 0,
            "scrapes": len(scrapes),
            "scrape_p99": pct(scrapes, 99) if scrapes else math.nan,
            "scrape_errors": scrape_errors,
        }
    finally:
        prof.stop()
        await stack.aclose()
        await sim.close()
        host.stop()


async def bench_idle(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession) -> None:
    sec = f"2. Idle: {args.idle_runners} simulated runners heartbeating every 5 s"
    r = await measure_idle(args, HostSetup(root / "idle"), session, args.idle_seconds, "host-idle")
    RAW["idle"] = r
    target = 3.8 * args.idle_runners / 1000
    add(
        sec,
        f"Host CPU over {r['window_s']:.0f} s",
        f"{r['host_cpu']:.1f} % of a core (user {r['host_user']:.1f} %, sys {r['host_sys']:.1f} %)",
        f"<= {target:.1f} % (10x)",
        ORIGINAL["idle_cpu"] + ("" if args.idle_runners == 1000 else " (at 1,000)"),
        r["host_cpu"] <= target,
    )
    add(
        sec,
        "heartbeats/s handled; RTT p50 / p99 / max",
        f"{r['beats_per_s']:.0f} /s; {ms(r['hb_p50'])} / {ms(r['hb_p99'])} / {ms(r['hb_max'])}"
        f" ({sum(r['errors'].values())} errors)",
    )
    add(sec, f"registration of {r['runners']} runners (concurrency 64)", f"{r['register_s']:.2f} s")
    add(sec, "other load on the machine meanwhile (not ours)", f"{r['others_pct']:.0f} % of a core")
    add(sec, "nodes offline at end", f"{r['offline']} of {r['seen']}", "0", "", r["offline"] == 0)
    if args.dashboards > 0:
        d = await measure_idle(
            args, HostSetup(root / "idle-dashboards"), session, args.idle_seconds, None, args.dashboards, 1.0
        )
        RAW["idle_dashboards"] = d
        add(
            sec,
            f"with {d['dashboards']} dashboards open and a /metrics scrape every second: heartbeat RTT p50 / p99 / max",
            f"{ms(d['hb_p50'])} / {ms(d['hb_p99'])} / {ms(d['hb_max'])} (without: {ms(r['hb_p50'])} / "
            f"{ms(r['hb_p99'])} / {ms(r['hb_max'])}); {sum(d['errors'].values())} errors",
        )
        add(
            sec,
            "the scrapes meanwhile: count, p99, errors",
            f"{d['scrapes']}, {ms(d['scrape_p99'])}, {d['scrape_errors']}",
        )
        add(
            sec,
            f"with {d['dashboards']} dashboards open: Host CPU; page fetches",
            f"{d['host_cpu']:.1f} % of a core (without: {r['host_cpu']:.1f} %); {d['page_fetches_per_s']:.1f} /s, "
            f"p99 {ms(d['page_fetch_p99'])}, {d['page_errors']} errors",
        )
        add(
            sec,
            f"with {d['dashboards']} dashboards: nodes offline at end",
            f"{d['offline']} of {d['seen']}",
            "0",
            "",
            d["offline"] == 0,
        )
    if args.floor_seconds > 0:
        f = await measure_idle(args, FloorSetup(root / "floor"), session, args.floor_seconds, None)
        RAW["idle_floor"] = f
        add(
            sec,
            "floor: bare aiohttp server, same heartbeats, no work",
            f"{f['host_cpu']:.1f} % of a core (user {f['host_user']:.1f} %, sys {f['host_sys']:.1f} %); "
            f"RTT p99 {ms(f['hb_p99'])}",
        )
        ratio = r["host_cpu"] / f["host_cpu"] if f["host_cpu"] else math.inf
        add(
            sec,
            "Host CPU beside that floor",
            f"{ratio:.2f}x ({r['host_cpu'] - f['host_cpu']:.1f} % of a core of heartbeat processing)",
            "<= 1.5x",
            "",
            ratio <= 1.5,
        )


# ========================================================== phase 4: scrape
async def bench_scrape(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession) -> None:
    """Heartbeat RTT beside a Prometheus scrape every second: two windows of
    the same load, the first without scrapes, the second with."""
    n, seconds = args.scrape_runners, args.scrape_seconds
    sec = f"4. Scrape: {n} simulated runners heartbeating every 1 s, GET /metrics every second"
    host = HostSetup(root / "scrape", heartbeat_interval=1.0, heartbeat_timeout_factor=30.0)
    sim = SimCluster(host)
    try:
        await host.start(session)
        await sim.start()
        names = [f"scrape{i:04d}" for i in range(n)]
        await sim.add_runners(names, {}, host.heartbeat_interval)
        # A queue that stays (every node drained), so each scrape walks pending
        # tasks too, and no task traffic differs between the two windows.
        for name in names:
            status, body = await post_json(session, host, f"/api/nodes/{name}/drain", {"reason": "bench"})
            assert status == 200, body
        for _ in range(args.scrape_pending // 100):
            status, body = await post_json(session, host, "/api/tasks", {"command": ["sleep", "1"], "array": "1-100"})
            assert status == 201, body
        log(f"scrape phase: {n} runners; measuring {seconds:.0f} s without scrapes, then {seconds:.0f} s with")
        await asyncio.sleep(2.0)
        scrapes: list[float] = []
        sizes: list[int] = []
        failures: Counter[str] = Counter()

        async def scrape_until(end: float) -> None:
            while time.monotonic() < end:
                began = time.monotonic()
                try:
                    async with session.get(host.url + "/metrics", headers=host.headers) as resp:
                        body = await resp.read()
                        if resp.status != 200:
                            failures[f"HTTP {resp.status}"] += 1
                        sizes.append(len(body))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    failures[type(exc).__name__] += 1
                scrapes.append(time.monotonic() - began)
                await asyncio.sleep(max(0.0, min(1.0 - (time.monotonic() - began), end - time.monotonic())))

        # Windows without and with scrapes take turns (5 s each), so that a
        # drift in the machine's other load falls on both alike.
        windows: list[tuple[bool, float, float]] = []
        turns = max(1, round(seconds / 5.0))
        for turn in range(2 * turns):
            scraping = turn % 2 == 1
            began = time.monotonic()
            end = began + seconds / turns
            if scraping:
                await scrape_until(end)
            else:
                await asyncio.sleep(end - began)
            windows.append((scraping, began, time.monotonic()))

        def beats(scraping: bool) -> list[float]:
            return [lat for end, lat in sim.hb_lat for s, a, b in windows if s is scraping and a <= end < b]

        without, with_scrape = beats(False), beats(True)
        RAW["scrape"] = {"without": without, "with": with_scrape, "scrapes": scrapes, "sizes": sizes}
        for label, lats in (("no scrape", without), ("a scrape every second", with_scrape)):
            add(
                sec,
                f"heartbeat RTT p50 / p99 / max, {label}",
                f"{ms(pct(lats, 50))} / {ms(pct(lats, 99))} / {ms(max(lats) if lats else math.nan)} ({len(lats)} beats)",
            )
        add(
            sec,
            "scrape time p50 / max; size",
            f"{ms(pct(scrapes, 50))} / {ms(max(scrapes) if scrapes else math.nan)}; "
            f"{(max(sizes) if sizes else 0) / 1024:.0f} KiB ({len(scrapes)} scrapes, {sum(failures.values())} failed)",
        )
        add(sec, "heartbeat errors", str(sum(sim.hb_errors.values())))
    finally:
        await sim.close()
        host.stop()


# ============================================================= phase 3: e2e
def docker_client() -> Any:
    import docker  # the runner's own dependency

    return docker.from_env(timeout=120)


def remove_containers(client: Any, label: str) -> int:
    n = 0
    for c in client.containers.list(all=True, sparse=True, filters={"label": label}):
        with contextlib.suppress(Exception):
            c.remove(force=True)
            n += 1
    return n


async def bench_e2e(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession) -> None:
    sec = f"3. End-to-end: real Host + Runner + Docker, `true` x {args.e2e_n} sequential"
    try:
        from tests.images import TASK_IMAGE
    except Exception as exc:  # pragma: no cover
        add(sec, "skipped", f"cannot import tests.images: {exc}")
        return
    client = docker_client()
    try:
        client.images.get(TASK_IMAGE).tag(f"hakuriver/{ENV_NAME}", "base")
    except Exception as exc:
        add(sec, "skipped", f"task image {TASK_IMAGE} missing (python -m tests.images build): {exc}")
        return
    host = HostSetup(root / "e2e")
    runner_name = f"bench{secrets.token_hex(3)}"
    RUNNER_NAMES.append(runner_name)
    runner: Proc | None = None
    try:
        await host.start(session)
        local_temp = host.root / "runner_temp"
        local_temp.mkdir(exist_ok=True)
        cfg = runner_config(host.config(), runner_name, port=free_port(), local_temp=local_temp)
        rpath = host.root / "runner.toml"
        rpath.write_text(toml.dumps(cfg))
        runner = Proc(
            "runner",
            runner_argv(rpath),
            host.root / "logs" / "runner.log",
            child_env(host.root),
        )
        runner.start()
        deadline = time.monotonic() + 60
        while True:
            if not runner.alive:
                raise RuntimeError(f"the Runner exited:\n{runner.tail()}")
            with contextlib.suppress(Exception):
                node = await get_json(session, host, f"/api/nodes/{runner_name}")
                if node["online"]:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Runner did not come online:\n{runner.tail()}")
            await asyncio.sleep(0.1)
        log(f"e2e: Host pid {host.proc.pid}, Runner {runner_name} pid {runner.pid} online")

        async def one() -> tuple[float, float | None, float, dict[str, Any]]:
            t0 = time.time()
            status, body = await post_json(session, host, "/api/tasks", {"command": ["true"]})
            if status != 201:
                raise RuntimeError(f"submit failed: {status} {body}")
            tid = body["task_ids"][0]
            status, body = await post_json(
                session, host, "/api/tasks/wait", {"task_ids": [tid], "timeout": 60}, timeout=90
            )
            t_done = time.time()
            task = body["tasks"][0]
            if task["state"] != "completed":
                raise RuntimeError(f"task {tid} ended {task['state']}: {task.get('error')}\n{runner.tail()}")
            started = task.get("started_at")
            return t0, (started - t0) if started else None, t_done - t0, task

        def bare_cli() -> float:
            t0 = time.perf_counter()
            subprocess.run(
                ["docker", "run", "--rm", "--label", f"{BENCH_LABEL}=1", ENV_IMAGE, "true"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            return time.perf_counter() - t0

        def bare_sdk() -> float:
            t0 = time.perf_counter()
            c = client.containers.create(ENV_IMAGE, ["true"], labels={BENCH_LABEL: "1"})
            try:
                c.start()
                c.wait()
            finally:
                c.remove(force=True)
            return time.perf_counter() - t0

        # Warm-up (not counted): first container start, first connections. Then the
        # three ways interleaved, one of each per round, so drift in the Docker
        # engine's speed hits all three alike. The Host and Runner idle meanwhile.
        await one()
        await asyncio.to_thread(bare_cli)
        await asyncio.to_thread(bare_sdk)
        to_running: list[float] = []
        to_done: list[float] = []
        host_done: list[float] = []
        timeline: dict[str, list[float]] = {"assigned": [], "running": [], "finished": [], "seen": []}
        bare: list[float] = []
        sdk: list[float] = []
        for _ in range(args.e2e_n):
            t0, r, d, task = await one()
            if r is not None:
                to_running.append(r)
            to_done.append(d)
            host_done.append(task["finished_at"] - t0)
            if task.get("assigned_at") and task.get("started_at"):
                timeline["assigned"].append(task["assigned_at"] - task["submitted_at"])
                timeline["running"].append(task["started_at"] - task["assigned_at"])
                timeline["finished"].append(task["finished_at"] - task["started_at"])
                timeline["seen"].append(t0 + d - task["finished_at"])
            bare.append(await asyncio.to_thread(bare_cli))
            sdk.append(await asyncio.to_thread(bare_sdk))
        runner_cpu = proc_cpu_seconds(runner.pid)
        host_cpu = proc_cpu_seconds(host.proc.pid)
    finally:
        if runner is not None:
            runner.stop()
        host.stop()
        remove_containers(client, f"org.hakuriver.runner={runner_name}")
        remove_containers(client, BENCH_LABEL)
        client.close()

    overhead = pct(to_done, 50) - pct(bare, 50)
    RAW["e2e"] = {
        "n": args.e2e_n,
        "to_running": to_running,
        "to_done": to_done,
        "host_done": host_done,
        "timeline": timeline,
        "bare_cli": bare,
        "sdk": sdk,
        "overhead_p50": overhead,
    }
    add(
        sec,
        "submit -> running  p50 / p99 (Host's started_at)",
        f"{ms(pct(to_running, 50))} / {ms(pct(to_running, 99))}  (n={len(to_running)})",
    )
    add(
        sec,
        "submit -> completed p50 / p99 (client, via /api/tasks/wait)",
        f"{ms(pct(to_done, 50))} / {ms(pct(to_done, 99))}",
    )
    add(sec, "submit -> completed p50 (Host's finished_at)", f"{ms(pct(host_done, 50))}")
    add(
        sec,
        "  Host timeline p50: submitted->assigned / ->running / ->finished / ->client saw it",
        " / ".join(ms(pct(v, 50)) for v in timeline.values()),
    )
    add(sec, "bare `docker run --rm IMAGE true` p50 / p99", f"{ms(pct(bare, 50))} / {ms(pct(bare, 99))}")
    add(sec, "docker SDK create+start+wait+remove p50 / p99", f"{ms(pct(sdk, 50))} / {ms(pct(sdk, 99))}")
    add(
        sec,
        "scheduler overhead = completed p50 - bare docker run p50",
        f"{ms(overhead)}",
        "<= 100 ms",
        "",
        overhead <= 0.100,
    )
    add(sec, "overhead vs docker SDK p50", f"{ms(pct(to_done, 50) - pct(sdk, 50))}")
    add(sec, "CPU used by Runner / Host over the whole phase", f"{runner_cpu:.1f} s / {host_cpu:.1f} s")
    systemd_e2e(args)


def systemd_e2e(args: argparse.Namespace) -> None:
    """`--container NULL` no-op tasks in a real systemd node, beside bare systemd-run there."""
    from bench.systemd_e2e import measure

    sec = f"4. End-to-end: --container NULL in a systemd node, `true` x {args.e2e_n} sequential"
    try:
        r = measure(args.e2e_n)
    except Exception as exc:  # a node that cannot boot here is a finding, not a crash
        add(sec, "--container NULL (systemd) variant", f"not measured: {type(exc).__name__}: {exc}"[:200])
        return
    RAW["systemd_e2e"] = r
    overhead = pct(r["to_done"], 50) - pct(r["bare_scope"], 50)
    add(
        sec,
        "submit -> running  p50 / p99 (Host's started_at)",
        f"{ms(pct(r['to_running'], 50))} / {ms(pct(r['to_running'], 99))}",
    )
    add(
        sec,
        "submit -> completed p50 / p99 (Host's finished_at)",
        f"{ms(pct(r['to_done'], 50))} / {ms(pct(r['to_done'], 99))}",
    )
    add(
        sec,
        "bare `systemd-run --scope true` in the node p50 / p99",
        f"{ms(pct(r['bare_scope'], 50))} / {ms(pct(r['bare_scope'], 99))}",
    )
    add(
        sec,
        "bare `systemd-run --wait true` (transient service) p50 / p99",
        f"{ms(pct(r['bare_service'], 50))} / {ms(pct(r['bare_service'], 99))}",
    )
    add(
        sec, "scheduler overhead = completed p50 - bare scope p50", f"{ms(overhead)}", "<= 50 ms", "", overhead <= 0.050
    )
    for stage, times in r.get("stages", {}).items():
        add(sec, f"  stage p50: {stage}", ms(pct(times, 50)))
    for stage, times in r.get("timeline", {}).items():
        add(sec, f"  task timeline p50 (journal, {len(times)} tasks): {stage}", ms(pct(times, 50)))


# ===================================================================== main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer idle runners, shorter windows, fewer e2e tasks")
    p.add_argument(
        "--only",
        choices=("throughput", "idle", "e2e", "scrape", "scheduling", "bigdb"),
        action="append",
        help="run only these phases (repeatable)",
    )
    p.add_argument("--runners", type=int, default=100)
    p.add_argument("--submits", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--task-min", type=float, default=1.0, help="simulated task runtime, lower bound (s)")
    p.add_argument("--task-max", type=float, default=3.0, help="simulated task runtime, upper bound (s)")
    p.add_argument(
        "--start-reply-wait",
        type=float,
        default=START_REPLY_WAIT_SECONDS * 1000,
        metavar="MS",
        help="throughput phase: how long a simulated runner's answer to an order waits for its tasks to start "
        "(a real runner's bound; 0: answered at once, each start reported on its own)",
    )
    p.add_argument("--drain-timeout", type=float, default=120.0)
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="submit rounds on the throughput Host (round 1 detailed; default 3, quick 1)",
    )
    p.add_argument("--list-repeats", type=int, default=None)
    p.add_argument("--idle-runners", type=int, default=None)
    p.add_argument("--idle-seconds", type=float, default=None)
    p.add_argument("--e2e-n", type=int, default=None)
    p.add_argument("--scrape-runners", type=int, default=200, help="simulated runners in the scrape phase")
    p.add_argument("--scrape-seconds", type=float, default=None, help="each window of the scrape phase (s)")
    p.add_argument("--scrape-pending", type=int, default=2000, help="pending tasks during the scrape phase")
    p.add_argument(
        "--sched-tasks", type=int, default=None, help="tasks per scheduling scenario (default 10,000; quick 2,000)"
    )
    p.add_argument("--sched-hold", type=float, default=None, help="seconds of passes timed after the submits")
    p.add_argument(
        "--bigdb-tasks", type=int, default=None, help="tasks in the big database (default 1,000,000; quick 100,000)"
    )
    p.add_argument("--bigdb-requests", type=int, default=500, help="status and health requests per Host")
    p.add_argument("--bigdb-submits", type=int, default=1000, help="single-task submits per Host")
    p.add_argument(
        "--floor-seconds",
        type=float,
        default=None,
        help="also measure a bare aiohttp server under the idle heartbeats (0: skip; quick default)",
    )
    p.add_argument(
        "--dashboards",
        type=int,
        default=5,
        help="idle phase: measure again with this many dashboard pages open (bench/dashboards.py; 0: skip)",
    )
    p.add_argument(
        "--profile", metavar="DIR", help="record py-spy profiles of the Host (throughput, idle, scheduling) into DIR"
    )
    p.add_argument("--json", metavar="PATH", help="also write the raw numbers as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, databases)")
    p.add_argument(
        "--host-launcher",
        metavar="SCRIPT",
        default="",
        help="run the Host as `python SCRIPT --config ...` instead of `-m hakuriver.cli.host` "
        "(for instrumented experiments; the script must end up calling hakuriver.cli.host.main)",
    )
    a = p.parse_args(argv)
    a.list_repeats = a.list_repeats or (3 if a.quick else 10)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.idle_runners = a.idle_runners or (1000)
    a.idle_seconds = a.idle_seconds or (10.0 if a.quick else 30.0)
    a.e2e_n = a.e2e_n or (10 if a.quick else 30)
    a.sched_tasks = a.sched_tasks or (2000 if a.quick else 10_000)
    a.sched_hold = a.sched_hold if a.sched_hold is not None else (5.0 if a.quick else 15.0)
    a.bigdb_tasks = a.bigdb_tasks or (100_000 if a.quick else 1_000_000)
    a.scrape_seconds = a.scrape_seconds or (10.0 if a.quick else 20.0)
    if a.floor_seconds is None:
        a.floor_seconds = 0.0 if a.quick else 15.0
    return a


async def amain(args: argparse.Namespace, root: Path) -> None:
    phases = set(args.only or ("throughput", "idle", "e2e", "scrape", "scheduling", "bigdb"))
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        if "throughput" in phases:
            # Start the throughput Host first: while the idle phase runs on another
            # Host, this one passes its post-start liveness grace (30 s).
            async with contextlib.AsyncExitStack() as tstack:
                host, sim, names = await setup_throughput_host(args, root, session, tstack)
                if "idle" in phases:
                    await bench_idle(args, root, session)
                    phases.discard("idle")
                await bench_throughput(args, host, sim, names, session)
                await bench_listing(args, host, sim, names, session)
                RAW["throughput_host_log_tail"] = host.proc.tail(2000) if host.proc else ""
        if "idle" in phases:
            await bench_idle(args, root, session)
        if "scrape" in phases:
            await bench_scrape(args, root, session)
        if "e2e" in phases:
            await bench_e2e(args, root, session)
        if "scheduling" in phases:
            from bench.scheduling import bench_scheduling

            await bench_scheduling(args, root, session)
        if "bigdb" in phases:
            from bench.bigdb import bench_bigdb

            await bench_bigdb(args, root, session)


def _loadavg() -> str:
    try:
        with open("/proc/loadavg") as fh:
            return " ".join(fh.read().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness.HOST_LAUNCHER = os.path.abspath(args.host_launcher) if args.host_launcher else ""
    root = Path(tempfile.mkdtemp(prefix="hakuriver-bench-"))
    log(f"work dir {root}; python {sys.version.split()[0]}; {os.cpu_count()} CPUs; quick={args.quick}")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    # A background job may inherit SIGINT ignored; Ctrl-C must always work.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    load_start = _loadavg()
    rc = 0
    try:
        asyncio.run(amain(args, root))
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        rc = 130
    except Exception as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}")
        for p in CHILDREN:
            log(f"--- {p.name} log tail ---\n{p.tail(3000)}")
        rc = 1
    finally:
        for p in CHILDREN:  # last resort: whatever a phase did not stop
            with contextlib.suppress(Exception):
                p.stop(timeout=10)
        with contextlib.suppress(Exception):
            c = docker_client()
            remove_containers(c, BENCH_LABEL)
            for name in RUNNER_NAMES:
                remove_containers(c, f"org.hakuriver.runner={name}")
            c.close()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            log(f"kept {root}")
    if RESULTS:
        goal_rows(RAW)
        print(
            f"\nHakuRiver benchmark ({'quick' if args.quick else 'full'}), "
            f"{os.cpu_count()} CPUs, total {time.monotonic() - t0:.0f} s, "
            f"load average at start {load_start}, at end {_loadavg()}\n"
        )
        print_table()
    if args.json:
        Path(args.json).write_text(json.dumps(RAW, indent=2, default=str))
    return rc


if __name__ == "__main__":
    sys.exit(main())
