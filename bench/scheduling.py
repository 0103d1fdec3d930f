"""Phase 5, scheduling: the scheduling pass under a deep queue.

    python -m bench.run --only scheduling            # ~3 minutes on 2 cores
    python -m bench.run --only scheduling --quick    # 2,000 tasks instead of 10,000

Two scenarios, each on its own real Host (subprocess, real SQLite file) run
through `bench/pass_timer_host.py`, which times every scheduling pass inside
the Host, with 20 simulated runners of 8 cores whose tasks run 1-3 s (the
queue churns: passes place work while it is deep):

* **fifo**, the floor: N single-core tasks from one user, one request each:
  today's plain FIFO queue.
* **policy**: the same N tasks from 20 users: per user, a tenth in one array
  with a `%8` limit, a fifth in chains of ten where each task waits
  (`after`, one in ten `after_any`) on the one before, the rest single tasks
  of 1-4 cores; requests interleaved across users at the same concurrency.

Measured for each: submits/s (single-task requests, concurrency 32) and
tasks/s overall; per pass, the whole pass (queue, scheduler, the database's
assign) and the pure placement decision, p50/p99 by queue depth, and how the
cost grows from a 1,000-deep queue to a 10,000-deep one (linear is 10x; the
sort that orders the queue makes n log n, 13x, the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import harness

LAUNCHER = str(Path(__file__).with_name("pass_timer_host.py"))
RUNNERS = 20
USERS = 20
CHAIN = 10
SEC = "5. Scheduling pass under a deep queue (fifo: one user; policy: 20 users, arrays, dependencies)"
DEPTHS = (1_000, 5_000, 10_000)
"""Queue depths the pass times are read at (each +-20 %)."""


@dataclass
class Job:
    """One client action: a single task, an array, or a chain (sequential
    submits, each waiting on the one before)."""

    token: str
    bodies: list[dict[str, Any]]
    chain: bool = False


@dataclass
class Submitted:
    tasks: int = 0
    single_lat: list[float] = field(default_factory=list)
    array_lat: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def fifo_jobs(n: int, token: str) -> list[Job]:
    return [Job(token, [{"command": ["true"], "cores": 1}]) for _ in range(n)]


def policy_jobs(n: int, tokens: list[str], rng: random.Random) -> list[Job]:
    """`n` tasks from `len(tokens)` users: arrays, dependency chains, singles."""
    per_user = n // len(tokens)
    jobs: list[Job] = []
    for token in tokens:
        array_n = per_user // 10
        chains = (per_user // 5) // CHAIN
        singles = per_user - array_n - chains * CHAIN
        jobs.append(Job(token, [{"command": ["true"], "cores": 1, "array": f"0-{array_n - 1}%8"}]))
        for _ in range(chains):
            bodies = [{"command": ["true"], "cores": rng.randint(1, 2)} for _ in range(CHAIN)]
            jobs.append(Job(token, bodies, chain=True))
        jobs += [Job(token, [{"command": ["true"], "cores": rng.randint(1, 4)}]) for _ in range(singles)]
    rng.shuffle(jobs)
    return jobs


async def submit_all(host: harness.HostSetup, jobs: list[Job], concurrency: int) -> Submitted:
    out = Submitted()
    todo = iter(jobs)
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)

    async def post(client: aiohttp.ClientSession, token: str, body: dict[str, Any]) -> list[str]:
        t0 = time.perf_counter()
        async with client.post(
            host.url + "/api/tasks", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            data = await resp.read()
            status = resp.status
        (out.array_lat if "array" in body else out.single_lat).append(time.perf_counter() - t0)
        if status != 201:
            key = f"{status} {data[:80]!r}"
            out.refused[key] = out.refused.get(key, 0) + 1
            return []
        ids = json.loads(data)["task_ids"]
        out.tasks += len(ids)
        return ids

    async def worker(client: aiohttp.ClientSession) -> None:
        for job in todo:
            previous: str | None = None
            for i, body in enumerate(job.bodies):
                if job.chain and previous is not None:
                    body = {**body, ("after_any" if i % CHAIN == CHAIN - 1 else "after"): [previous]}
                ids = await post(client, job.token, body)
                previous = ids[0] if ids else previous

    async with aiohttp.ClientSession(connector=connector) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        out.seconds = time.perf_counter() - t0
    return out


async def make_users(session: aiohttp.ClientSession, host: harness.HostSetup, n: int) -> list[str]:
    tokens = []
    for i in range(n):
        status, body = await harness.post_json(session, host, "/api/users", {"name": f"user{i:02d}"})
        if status != 201:
            raise RuntimeError(f"creating user{i:02d}: HTTP {status} {body!r}")
        tokens.append(body["token"])
    return tokens


def by_depth(passes: list[dict[str, float]], key: str) -> dict[int, tuple[int, float, float]]:
    """depth -> (passes, p50, p99) of `key` over the passes within 20 % of that depth."""
    out = {}
    for depth in DEPTHS:
        values = [p[key] for p in passes if 0.8 * depth <= p["pending"] <= 1.2 * depth]
        if values:
            out[depth] = (len(values), harness.pct(values, 50), harness.pct(values, 99))
    return out


async def scenario(
    name: str, args: argparse.Namespace, root: Path, session: aiohttp.ClientSession, rng: random.Random
) -> dict[str, Any]:
    sroot = root / f"sched-{name}"
    passes_file = sroot / "passes.json"
    host = harness.HostSetup(sroot, launcher=LAUNCHER, extra_env={"PASS_OUT": str(passes_file)})
    names = [f"sched-{name}-{i:02d}" for i in range(RUNNERS)]
    async with contextlib.AsyncExitStack() as stack:
        await host.start(session)
        stack.callback(host.stop)
        prof = harness.Profiler(getattr(args, "profile", None))
        prof.start(host.proc.pid, f"host-scheduling-{name}")
        stack.callback(prof.stop)
        sim = harness.SimCluster(host, task_runtime=(1.0, 3.0))
        ports = await sim.start(names)
        stack.push_async_callback(sim.close)
        await sim.add_runners(names, ports, interval=host.heartbeat_interval)
        if name == "fifo":
            jobs = fifo_jobs(args.sched_tasks, host.token)
        else:
            jobs = policy_jobs(args.sched_tasks, await make_users(session, host, USERS), rng)
        harness.log(f"scheduling/{name}: submitting {args.sched_tasks} tasks in {len(jobs)} jobs")
        sub = await submit_all(host, jobs, args.concurrency)
        harness.log(f"scheduling/{name}: {sub.tasks} accepted in {sub.seconds:.1f} s; holding {args.sched_hold:.0f} s")
        # Passes at full depth while the runners keep finishing work.
        await asyncio.sleep(args.sched_hold)
        overcommit = sum(r.overcommit_events for r in sim.runners.values())
    passes = json.loads(passes_file.read_text()) if passes_file.exists() else []
    return {"submitted": sub, "passes": passes, "overcommit": overcommit}


def report(results: dict[str, dict[str, Any]]) -> None:
    for name, res in results.items():
        sub: Submitted = res["submitted"]
        passes = res["passes"]
        singles = len(sub.single_lat)
        harness.add(
            SEC,
            f"{name}: single-task submits/s (c32)",
            f"{singles / sub.seconds:.0f}" if sub.seconds else "-",
            "policy within 20 % of fifo" if name == "policy" else "",
        )
        harness.add(
            SEC,
            f"{name}: submit p50 / p99",
            f"{harness.ms(harness.pct(sub.single_lat, 50))} / {harness.ms(harness.pct(sub.single_lat, 99))}",
        )
        if sub.array_lat:
            harness.add(SEC, f"{name}: array submit p50 (one request)", harness.ms(harness.pct(sub.array_lat, 50)))
        harness.add(
            SEC,
            f"{name}: tasks accepted / refused",
            f"{sub.tasks} / {sum(sub.refused.values())}",
            "0 refused",
            ok=not sub.refused,
        )
        harness.add(SEC, f"{name}: over-commit events", str(res["overcommit"]), "0", ok=res["overcommit"] == 0)
        harness.add(SEC, f"{name}: passes timed", str(len(passes)))
        whole, pure = by_depth(passes, "pass"), by_depth(passes, "schedule")
        for depth in DEPTHS:
            if depth in whole:
                n, p50, p99 = whole[depth]
                _, s50, s99 = pure[depth]
                harness.add(
                    SEC,
                    f"{name}: pass at {depth:,} pending ({n} passes)",
                    f"{harness.ms(p50)} p50 / {harness.ms(p99)} p99 (placement {harness.ms(s50)} / {harness.ms(s99)})",
                )
        lo, hi = whole.get(DEPTHS[0]), whole.get(DEPTHS[-1])
        if lo and hi and lo[1] > 0:
            growth = hi[1] / lo[1]
            # The bound of a pass that sorts the queue (13x from 1k to 10k);
            # the pending queue's buckets only merge runs (scheduler/pending.py).
            bound = (DEPTHS[-1] * math.log(DEPTHS[-1])) / (DEPTHS[0] * math.log(DEPTHS[0]))
            harness.add(
                SEC,
                f"{name}: pass growth {DEPTHS[0]:,} -> {DEPTHS[-1]:,} pending",
                f"{growth:.1f}x ({1e6 * hi[1] / DEPTHS[-1]:.1f} us per pending task)",
                f"<= {bound:.0f}x (n log n; linear is 10x)",
                ok=growth <= bound,
            )
        harness.RAW[f"scheduling_{name}"] = {
            "submits": {"tasks": sub.tasks, "seconds": sub.seconds, "refused": sub.refused},
            "passes": passes,
        }
    fifo, policy = results.get("fifo"), results.get("policy")
    if fifo and policy:
        f_sub, p_sub = fifo["submitted"], policy["submitted"]
        f_rate = len(f_sub.single_lat) / f_sub.seconds if f_sub.seconds else 0
        p_rate = len(p_sub.single_lat) / p_sub.seconds if p_sub.seconds else 0
        if f_rate:
            harness.add(
                SEC,
                "policy submits/s beside fifo",
                f"{100 * p_rate / f_rate:.0f} %",
                ">= 80 %",
                ok=p_rate >= 0.8 * f_rate,
            )


async def bench_scheduling(args: argparse.Namespace, root: Path, session: aiohttp.ClientSession) -> None:
    rng = random.Random(1)
    results = {}
    for name in ("fifo", "policy"):
        results[name] = await scenario(name, args, root, session, rng)
    report(results)
