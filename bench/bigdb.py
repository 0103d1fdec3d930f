"""Phase 6, bigdb: the Host on a database of a million tasks, beside an empty one.

    python -m bench.run --only bigdb            # ~3 minutes on 2 cores
    python -m bench.run --only bigdb --quick    # 100,000 tasks

A database file is made with the Host's own schema (`Database.open` migrates
it) and filled with `--bigdb-tasks` tasks over the last 30 days, written with
the Host's own row builder: all final but 10,000 pending, from 20 users. A Host is started on it and,
beside it, a Host on an empty database, each with one simulated runner whose
tasks never end (after its 8 cores, nothing is placed: this is the database
and the API, not the scheduler). Measured on each:

* start-up: process start to the first `GET /api/health` answered;
* `GET /api/tasks/{id}` of random tasks (status) and `GET /api/tasks?limit=1000`
  (a page), p50/p99;
* `GET /api/health`, p50/p99 (it must not count the table);
* durable single-task submits/s at concurrency 32 (the median of
  `SUBMIT_ROUNDS` rounds, the two Hosts taking turns), and tasks/s through
  one 1,000-task array submit;
* the Host's RSS at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench import harness
from hakuriver.host.db import Database
from hakuriver.host.db.rows import _task_params
from hakuriver.host.db.schema import _TASK_COLUMNS
from hakuriver.ids import IdGenerator
from hakuriver.models import FINAL_STATES, Task, TaskState

USERS = 20
PENDING = 10_000
DAY = 86_400.0


def fill(path: Path, n: int, pending: int, rng: random.Random) -> list[int]:
    """Write `n` tasks into the (migrated, empty) database at `path`; return a sample of ids."""
    start = time.time() - 30 * DAY
    clock = [start]
    ids = IdGenerator(generator=1023, clock=lambda: clock[0])
    finals = [s for s in FINAL_STATES if s != TaskState.LOST] + [TaskState.COMPLETED] * 6
    columns = _TASK_COLUMNS + ", updated_at"
    marks = ",".join("?" * (columns.count(",") + 1))
    sample: list[int] = []
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")  # a fixture, not the Host's writes
        conn.execute("BEGIN")
        rows = []
        step = 30 * DAY / n
        for i in range(n):
            clock[0] = start + i * step
            task_id = ids.next()
            is_pending = i >= n - pending
            state = TaskState.PENDING if is_pending else rng.choice(finals)
            t = Task(
                id=task_id,
                batch_id=task_id,
                state=state,
                command=["python3", "train.py", f"--seed={i}"],
                cores=rng.choice((1, 2, 4, 8)),
                memory=rng.choice((None, 4 << 30, 16 << 30)),
                container="hakuriver-test",
                env={"RUN": str(i)},
                mounts=[],
                privileged=False,
                target=None,
                owner=f"user{i % USERS:02d}",
                submitted_at=clock[0],
            )
            if not is_pending:
                t.node = f"node{i % 50:02d}"
                t.assigned_at = t.started_at = clock[0] + 1
                t.finished_at = clock[0] + 1 + rng.uniform(10, 7200)
                t.exit_code = 0 if state == TaskState.COMPLETED else 1
            rows.append(_task_params(t, clock[0]))
            if len(rows) >= 20_000:
                conn.executemany(f"INSERT INTO tasks ({columns}) VALUES ({marks})", rows)
                rows.clear()
            if i % max(1, n // 2000) == 0:
                sample.append(task_id)
        if rows:
            conn.executemany(f"INSERT INTO tasks ({columns}) VALUES ({marks})", rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return sample


async def make_db(path: Path, n: int, rng: random.Random) -> list[int]:
    db = await Database.open(path)  # the Host's schema, every migration
    await db.close()
    return await asyncio.to_thread(fill, path, n, min(PENDING, n // 10), rng)


async def timed_get(session: aiohttp.ClientSession, host: harness.HostSetup, paths: list[str]) -> list[float]:
    out = []
    for path in paths:
        t0 = time.perf_counter()
        async with session.get(host.url + path, headers=host.headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {r.status}")
        out.append(time.perf_counter() - t0)
    return out


SUBMIT_ROUNDS = 3
"""Rounds of single-task submits per Host; the row reports their median."""


async def submits(host: harness.HostSetup, n: int, concurrency: int) -> float:
    """Single-task submits/s (each durable before its answer)."""
    todo = iter(range(n))
    body = {"command": ["true"]}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=host.headers) as client:

        async def worker() -> None:
            for _ in todo:
                async with client.post(host.url + "/api/tasks", json=body) as r:
                    await r.read()
                    if r.status != 201:
                        raise RuntimeError(f"submit: HTTP {r.status}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


async def array_rate(session: aiohttp.ClientSession, host: harness.HostSetup, rounds: int, path: str) -> float:
    """Median tasks/s of one 1,000-task array submit to `path` (`/api/tasks`,
    answered with every task's view, or `/api/tasks?reply=ids`, the CLI's)."""
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        status, body = await harness.post_json(session, host, path, {"command": ["true"], "array": "0-999"})
        if status != 201 or len(body.get("task_ids", ())) != 1000:
            raise RuntimeError(f"array submit: HTTP {status} {str(body)[:200]}")
        rates.append(1000 / (time.perf_counter() - t0))
    return statistics.median(rates)


async def start_host(
    name: str,
    root: Path,
    n: int,
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    rng: random.Random,
    stack: contextlib.AsyncExitStack,
) -> tuple[harness.HostSetup, dict[str, Any]]:
    """A Host on a database of `n` tasks with one runner, and its start-up,
    status, page and health figures; it stays up until `stack` closes."""
    sroot = root / f"bigdb-{name}"
    host = harness.HostSetup(sroot)
    db_file = sroot / "host.db"
    sample: list[int] = []
    if n:
        t0 = time.perf_counter()
        sample = await make_db(db_file, n, rng)
        harness.log(f"bigdb/{name}: {n:,} tasks written in {time.perf_counter() - t0:.0f} s")
        # The file was written just now: its pages are still being written back,
        # which would slow every fsync of the Host measured on it. A database that
        # grew to this size over weeks has none of that, so wait for it first.
        t0 = time.perf_counter()
        await asyncio.to_thread(os.sync)
        harness.log(f"bigdb/{name}: written back to disk in {time.perf_counter() - t0:.1f} s")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    await host.start(session)
    out["startup"] = time.perf_counter() - t0
    stack.callback(host.stop)
    # One node, so that submits are accepted; its tasks never end, so
    # after its 8 cores are taken everything stays pending.
    sim = harness.SimCluster(host, task_runtime=(3600.0, 3600.0))
    node = [f"bigdb-{name}"]
    ports = await sim.start(node)
    stack.push_async_callback(sim.close)
    await sim.add_runners(node, ports, interval=host.heartbeat_interval)
    if not sample:
        status, body = await harness.post_json(session, host, "/api/tasks", {"command": ["true"]})
        if status != 201:
            raise RuntimeError(f"submit on the {name} Host: HTTP {status} {str(body)[:300]}")
        sample = [int(body["task_ids"][0])]
    out["status"] = await timed_get(
        session, host, [f"/api/tasks/{rng.choice(sample)}" for _ in range(args.bigdb_requests)]
    )
    out["page"] = await timed_get(session, host, ["/api/tasks?limit=1000"] * max(5, args.bigdb_requests // 25))
    out["health"] = await timed_get(session, host, ["/api/health"] * args.bigdb_requests)
    return host, out


def report(empty: dict[str, Any], big: dict[str, Any], n: int) -> None:
    sec = f"6. Database at scale: {n:,} tasks ({min(PENDING, n // 10):,} pending) beside an empty database"

    def p(values: list[float], q: float) -> str:
        return harness.ms(harness.pct(values, q))

    harness.add(sec, "Host start-up, empty / big", f"{empty['startup']:.2f} s / {big['startup']:.2f} s")
    harness.add(
        sec,
        "status GET /api/tasks/{id} p99, big (empty)",
        f"{p(big['status'], 99)} ({p(empty['status'], 99)})",
        "<= 20 ms",
        "",
        harness.pct(big["status"], 99) <= 0.020,
    )
    harness.add(
        sec,
        "1,000-row page p99, big (empty)",
        f"{p(big['page'], 99)} ({p(empty['page'], 99)})",
        "<= 100 ms",
        "",
        harness.pct(big["page"], 99) <= 0.100,
    )
    harness.add(
        sec,
        "GET /api/health p50 / p99, big (empty)",
        f"{p(big['health'], 50)} / {p(big['health'], 99)} ({p(empty['health'], 50)} / {p(empty['health'], 99)})",
        "<= 5 ms, independent of size",
        "",
        harness.pct(big["health"], 50) <= 0.005,
    )
    ratio = big["submits"] / empty["submits"] if empty["submits"] else 0
    harness.add(
        sec,
        f"durable submits/s (c32, median of {SUBMIT_ROUNDS} rounds), big beside empty",
        f"{big['submits']:.0f} / {empty['submits']:.0f} ({100 * ratio:.0f} %)",
        "within 10 %",
        "",
        ratio >= 0.9,
    )
    harness.add(
        sec,
        "tasks/s through one 1,000-task array submit (?reply=ids, as the CLI), big (empty); with views",
        f"{big['array']:.0f} ({empty['array']:.0f}); {big['array_views']:.0f} ({empty['array_views']:.0f})",
        ">= 20,000",
        "",
        big["array"] >= 20_000,
    )
    harness.add(
        sec,
        "Host RSS, big (empty)",
        f"{big['rss']:.0f} MiB ({empty['rss']:.0f} MiB)",
        "<= 300 MiB",
        "",
        big["rss"] <= 300,
    )
    harness.RAW["bigdb"] = {"tasks": n, "empty": empty, "big": big}


async def bench_bigdb(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession) -> None:
    rng = random.Random(5)
    async with contextlib.AsyncExitStack() as stack:
        hosts = {
            "empty": await start_host("empty", root, 0, args, session, rng, stack),
            "big": await start_host("big", root, args.bigdb_tasks, args, session, rng, stack),
        }
        # The two Hosts' submit rounds take turns: measured one after the other,
        # the same code's ratio swung from half to twice (the machine's state
        # moves more between two Hosts' runs than between two rounds).
        for out in (out for _host, out in hosts.values()):
            out["submit_rounds"] = []
        for _round in range(SUBMIT_ROUNDS):
            for host, out in hosts.values():
                out["submit_rounds"].append(await submits(host, args.bigdb_submits, args.concurrency))
        for host, out in hosts.values():
            out["submits"] = statistics.median(out["submit_rounds"])
            out["array"] = await array_rate(session, host, 5, "/api/tasks?reply=ids")
            out["array_views"] = await array_rate(session, host, 5, "/api/tasks")
            assert host.proc is not None
            out["rss"] = harness.proc_rss_mib(host.proc.pid)
    empty, big = hosts["empty"][1], hosts["big"][1]
    report(empty, big, args.bigdb_tasks)
    harness.log("bigdb: " + json.dumps({k: round(v, 3) for k, v in big.items() if isinstance(v, float)}))
