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
import random
import secrets
import shutil
import signal
import socket
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
from aiohttp import web

from bench.dashboards import Dashboards
from hakuriver.models import TaskState
from tests.harness import procs
from tests.harness.procs import free_port, host_argv, loopback_config, runner_argv, runner_config

CLK_TCK = os.sysconf("SC_CLK_TCK")
GIB = 1 << 30
BENCH_LABEL = "org.hakuriver.bench"
ENV_NAME = "hakuriver-test"
ENV_IMAGE = f"hakuriver/{ENV_NAME}:base"

# The reference's numbers for the original HakuRiver (same machine class).
ORIGINAL = {
    "submits_per_s": "33",
    "submit_p99": "4 s",
    "host_cpu_load": "93 %",
    "false_offline": "79 / 100",
    "refused": "27 %",
    "overcommit": "256 busy on 64",
    "list": "0.8 s, 7 MB (10k), loop blocked",
    "idle_cpu": "38 %",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ============================================================== small helpers
def pct(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    f = math.floor(k)
    c = min(f + 1, len(s) - 1)
    return s[f] + (s[c] - s[f]) * (k - f)


def ms(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 10 else f"{x:.1f} s"


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return int(rest[11]) / CLK_TCK, int(rest[12]) / CLK_TCK


def proc_cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all its threads), in seconds."""
    return sum(proc_cpu_split(pid))


def proc_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


class CpuWindow:
    """CPU % of a process (or of this process when pid is None) over a window."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = self._cpu()
        self.s0 = proc_cpu_split(pid) if pid is not None else (0.0, 0.0)

    def _cpu(self) -> float:
        return time.process_time() if self.pid is None else proc_cpu_seconds(self.pid)

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        return 100.0 * (self._cpu() - self.c0) / wall if wall > 0 else math.nan

    def seconds(self) -> float:
        return self._cpu() - self.c0

    def split_percent(self) -> tuple[float, float]:
        """(user %, system %) since the start; processes only."""
        wall = time.monotonic() - self.t0
        u, s = proc_cpu_split(self.pid) if self.pid is not None else (0.0, 0.0)
        return 100.0 * (u - self.s0[0]) / wall, 100.0 * (s - self.s0[1]) / wall


def system_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class OthersWindow:
    """CPU used on this machine by everything except this process and its live
    children (other jobs sharing the box, and the Docker daemon): a noise gauge."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.sys0 = system_busy_seconds()
        self.ours0 = self._ours()

    @staticmethod
    def _ours() -> dict[int, float]:
        out = {0: time.process_time()}
        for p in CHILDREN:
            if p.alive:
                with contextlib.suppress(OSError):
                    out[p.pid] = proc_cpu_seconds(p.pid)
        return out

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        ours1 = self._ours()
        ours = sum(ours1[k] - self.ours0[k] for k in ours1 if k in self.ours0)
        return 100.0 * (system_busy_seconds() - self.sys0 - ours) / wall if wall > 0 else math.nan


# ============================================================ processes
CHILDREN: list[Proc] = []
"""Every process started here, for the last-resort cleanup in main()."""
HOST_LAUNCHER = ""
"""--host-launcher: a script run instead of `-m hakuriver.cli.host` (instrumentation experiments)."""
RUNNER_NAMES: list[str] = []
"""Real runners started here (their task containers carry the name as a label)."""


class Proc(procs.Proc):
    """A child process of the bench (tests/harness/procs.py), remembered for the last-resort cleanup."""

    def start(self) -> None:
        super().start()
        CHILDREN.append(self)


def child_env(home: Path) -> dict[str, str]:
    return procs.child_env(home, repo_on_path=True)


@dataclass
class HostSetup:
    """A Host's generated config and process in its own temp dir."""

    root: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    port: int = field(default_factory=free_port)
    heartbeat_interval: float = 5.0
    heartbeat_timeout_factor: float = 6.0
    proc: Proc | None = None
    started_at: float = 0.0
    launcher: str = ""
    """A script run instead of `-m hakuriver.cli.host` (default: --host-launcher)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_config: dict[str, Any] = field(default_factory=dict)
    """Config sections merged over the generated one (section -> keys)."""

    def __post_init__(self) -> None:
        for sub in ("shared", "host_temp", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def grace(self) -> float:
        return self.heartbeat_interval * self.heartbeat_timeout_factor

    def config(self) -> dict[str, Any]:
        config = loopback_config(
            self.root,
            port=self.port,
            token=self.token,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout_factor=self.heartbeat_timeout_factor,
            docker={"default_container_name": ENV_NAME},
        )
        for section, keys in self.extra_config.items():
            config.setdefault(section, {}).update(keys)
        return config

    async def start(self, session: aiohttp.ClientSession) -> None:
        path = self.root / "host.toml"
        path.write_text(toml.dumps(self.config()))
        env = {**child_env(self.root), **self.extra_env}
        self.proc = Proc("host", host_argv(path, self.launcher or HOST_LAUNCHER), self.root / "logs" / "host.log", env)
        self.proc.start()
        self.started_at = time.time()
        deadline = time.monotonic() + 30
        while True:
            if not self.proc.alive:
                raise RuntimeError(f"the Host exited:\n{self.proc.tail()}")
            try:
                async with session.get(
                    self.url + "/api/health", headers=self.headers, timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Host did not answer /api/health in 30 s:\n{self.proc.tail()}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    @property
    def uptime(self) -> float:
        return time.time() - self.started_at


# ========================================================= simulated runners
@dataclass
class SimRunner:
    name: str
    url: str = ""
    cores: int = 8
    memory: int = 32 * GIB
    tasks: dict[int, asyncio.Task[None]] = field(default_factory=dict)
    started: set[int] = field(default_factory=set)
    finishing: set[int] = field(default_factory=set)
    cores_used: int = 0
    max_cores_used: int = 0
    overcommit_events: int = 0
    accepted: int = 0
    last_ack: float = 0.0
    max_ack_gap: float = 0.0
    beat: asyncio.Task[None] | None = None


class SimCluster:
    """Many fake runners behind one aiohttp server in this process.

    A runner's URL is http://127.0.0.1:PORT/r/<name>; with `port_per_runner`
    each runner gets its own listening port (as distinct machines would: the
    Host's connection pool is per host:port), else all share one.
    """

    def __init__(
        self,
        host: HostSetup,
        *,
        task_runtime: tuple[float, float] = (1.0, 3.0),
        start_delay: tuple[float, float] = (0.01, 0.03),
    ):
        self.host = host
        self.task_runtime = task_runtime
        self.start_delay = start_delay
        self.runners: dict[str, SimRunner] = {}
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/r/{name}/api/tasks", self._run_task),
                web.post("/r/{name}/api/tasks/{task_id}/{action:kill|pause|resume}", self._control),
                web.get("/r/{name}/api/health", self._health),
            ]
        )
        self.site_runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.shared_port = 0
        self.auth_failures = 0
        self.kills = 0
        self.controls = Counter[str]()
        self.report_failures = 0
        self.accept_at: dict[int, float] = {}
        self.report_rtt: list[float] = []
        self.hb_lat: list[tuple[float, float]] = []  # (monotonic end time, latency)
        self.hb_errors = Counter[str]()
        self.hb_kill_orders = 0
        self.hb_kill_orders_live = 0
        self.heartbeats_ok = 0
        self.running = True
        self.measure_gaps = False

    # ------------------------------------------------------------ lifecycle
    async def start(self, port_per_runner_names: list[str] = ()) -> dict[str, int]:
        self.site_runner = web.AppRunner(self.app, access_log=None)
        await self.site_runner.setup()
        ports: dict[str, int] = {}
        sock = self._listen()
        self.shared_port = sock.getsockname()[1]
        await web.SockSite(self.site_runner, sock).start()
        for name in port_per_runner_names:
            s = self._listen()
            ports[name] = s.getsockname()[1]
            await web.SockSite(self.site_runner, s).start()
        connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=60)
        self.session = aiohttp.ClientSession(
            connector=connector, headers=self.host.headers, timeout=aiohttp.ClientTimeout(total=60)
        )
        return ports

    @staticmethod
    def _listen() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1024)
        return s

    async def close(self) -> None:
        self.running = False
        pending = []
        for r in self.runners.values():
            if r.beat is not None:
                r.beat.cancel()
                pending.append(r.beat)
            for t in r.tasks.values():
                t.cancel()
                pending.append(t)
        await asyncio.gather(*pending, return_exceptions=True)
        if self.session is not None:
            await self.session.close()
        if self.site_runner is not None:
            await self.site_runner.cleanup()

    # -------------------------------------------------------- runner API
    def _authorized(self, request: web.Request) -> bool:
        if request.headers.get("Authorization") != f"Bearer {self.host.token}":
            self.auth_failures += 1
            return False
        return True

    async def _run_task(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)
        r = self.runners.get(request.match_info["name"])
        if r is None:
            return web.json_response({"error": {"code": "not_found", "message": "no runner"}}, status=404)
        if not self.running:  # closing: a task accepted now could never report
            return web.json_response({"error": {"code": "unavailable", "message": "closing"}}, status=503)
        body = await request.json()
        task_id = int(body["task_id"])
        if task_id not in r.tasks:  # idempotent, as a real runner
            cores = int(body.get("cores") or 1)
            r.cores_used += cores
            r.max_cores_used = max(r.max_cores_used, r.cores_used)
            if r.cores_used > r.cores:
                r.overcommit_events += 1
            r.accepted += 1
            self.accept_at.setdefault(task_id, time.monotonic())
            r.finishing.add(task_id)
            r.tasks[task_id] = asyncio.ensure_future(self._lifecycle(r, task_id, cores))
        return web.json_response({"task_id": str(task_id), "status": "accepted"}, status=202)

    async def _control(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)
        r = self.runners.get(request.match_info["name"])
        action = request.match_info["action"]
        self.controls[action] += 1
        task_id = int(request.match_info["task_id"])
        if r is not None and action == "kill":
            self.kills += 1
            t = r.tasks.get(task_id)
            if t is not None:
                t.cancel()
        return web.json_response({"task_id": str(task_id), "status": f"{action} sent"})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _lifecycle(self, r: SimRunner, task_id: int, cores: int) -> None:
        freed = False
        try:
            await asyncio.sleep(random.uniform(*self.start_delay))  # "container start"
            r.started.add(task_id)
            r.finishing.discard(task_id)
            await self._report(r, task_id, {"state": "running"})
            await asyncio.sleep(random.uniform(*self.task_runtime))
            # The container has exited: its cores are free before the Host hears of it.
            r.cores_used -= cores
            freed = True
            r.started.discard(task_id)
            r.finishing.add(task_id)
            await self._report(r, task_id, {"state": "completed", "exit_code": 0})
        finally:
            if not freed:
                r.cores_used -= cores
            r.started.discard(task_id)
            r.finishing.discard(task_id)
            r.tasks.pop(task_id, None)

    async def _report(self, r: SimRunner, task_id: int, payload: dict[str, Any]) -> None:
        assert self.session is not None
        url = f"{self.host.url}/api/runner/tasks/{task_id}/status"
        delay = 0.2
        for _ in range(30):
            if not self.running or self.session.closed:
                return
            t0 = time.monotonic()
            try:
                async with self.session.post(url, json={"hostname": r.name, **payload}) as resp:
                    await resp.read()
                    self.report_rtt.append(time.monotonic() - t0)
                    if resp.status == 200 or resp.status in (404, 409):
                        if resp.status != 200:
                            self.report_failures += 1
                        return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            self.report_failures += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # ----------------------------------------------------- host link
    async def register(self, r: SimRunner) -> None:
        assert self.session is not None
        payload = {
            "hostname": r.name,
            "url": r.url,
            "cores": r.cores,
            "memory": r.memory,
            "numa": [],
            "gpus": [],
            "tasks": [],
        }
        for attempt in range(20):
            try:
                async with self.session.post(self.host.url + "/api/runner/register", json=payload) as resp:
                    await resp.read()
                    if resp.status == 200:
                        r.last_ack = time.monotonic()
                        return
                    raise RuntimeError(f"register {r.name}: HTTP {resp.status}")
            except (TimeoutError, aiohttp.ClientError, OSError):
                await asyncio.sleep(0.2 * (attempt + 1))
        raise RuntimeError(f"could not register {r.name}")

    def heartbeat_payload(self, r: SimRunner) -> dict[str, Any]:
        return {
            "hostname": r.name,
            "stats": {
                "cpu_percent": round(random.uniform(0, 100), 1),
                "memory_used": 8 * GIB,
                "memory_total": r.memory,
                "memory_percent": 25.0,
                "temperatures": {},
                "load_average": [1.0, 1.0, 1.0],
                "gpus": [],
            },
            "tasks": [{"task_id": str(i), "state": "running"} for i in r.started],
            "finishing": [str(i) for i in r.finishing],
        }

    async def heartbeat_once(self, r: SimRunner) -> float:
        assert self.session is not None
        t0 = time.monotonic()
        async with self.session.post(self.host.url + "/api/runner/heartbeat", json=self.heartbeat_payload(r)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        end = time.monotonic()
        for raw in json.loads(body).get("kill") or []:
            # A kill order for a task this runner still runs is a real problem; one
            # for a task it already finished (listed as running when the beat was
            # built, completed and reported before the Host processed the beat) is
            # the stale-list race: harmless, but counted apart.
            if int(raw) in r.started:
                self.hb_kill_orders_live += 1
            else:
                self.hb_kill_orders += 1
        if self.measure_gaps:
            r.max_ack_gap = max(r.max_ack_gap, end - r.last_ack)
        r.last_ack = end
        self.heartbeats_ok += 1
        lat = end - t0
        self.hb_lat.append((end, lat))
        return lat

    async def _beat_loop(self, r: SimRunner, interval: float) -> None:
        # Random phase, then every `interval` with +-5 % jitter on a steady schedule.
        await asyncio.sleep(random.uniform(0, interval))
        next_at = time.monotonic()
        while self.running:
            next_at += interval * random.uniform(0.95, 1.05)
            try:
                await self.heartbeat_once(r)
            except Exception as exc:  # counted, never fatal
                self.hb_errors[type(exc).__name__] += 1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def add_runners(
        self, names: list[str], ports: dict[str, int], interval: float, concurrency: int = 64
    ) -> None:
        for name in names:
            port = ports.get(name, self.shared_port)
            self.runners[name] = SimRunner(name=name, url=f"http://127.0.0.1:{port}/r/{name}")
        sem = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with sem:
                await self.register(self.runners[name])
            self.runners[name].beat = asyncio.ensure_future(self._beat_loop(self.runners[name], interval))

        await asyncio.gather(*(one(n) for n in names))

    def hb_since(self, t: float) -> list[float]:
        return [lat for end, lat in self.hb_lat if end >= t]


# ============================================================== host queries
async def get_json(session: aiohttp.ClientSession, host: HostSetup, path: str, timeout: float = 30) -> Any:
    async with session.get(host.url + path, headers=host.headers, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {r.status} {body[:200]!r}")
        return json.loads(body)


async def post_json(
    session: aiohttp.ClientSession, host: HostSetup, path: str, payload: Any, timeout: float = 60
) -> tuple[int, Any]:
    async with session.post(
        host.url + path, json=payload, headers=host.headers, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as r:
        body = await r.read()
        try:
            return r.status, json.loads(body)
        except ValueError:
            return r.status, body


async def offline_among(session: aiohttp.ClientSession, host: HostSetup, names: set[str]) -> tuple[int, int]:
    nodes = (await get_json(session, host, "/api/nodes"))["nodes"]
    mine = [n for n in nodes if n["hostname"] in names]
    return sum(not n["online"] for n in mine), len(mine)


class Profiler:
    """Optional py-spy recording of a process (raw collapsed stacks)."""

    def __init__(self, out_dir: str | None):
        self.out_dir = out_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = ""

    def start(self, pid: int, name: str) -> None:
        if not self.out_dir:
            return
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if not Path(spy).exists():
            log("py-spy not found; --profile ignored (pip install py-spy)")
            return
        os.makedirs(self.out_dir, exist_ok=True)
        self.path = os.path.join(self.out_dir, f"{name}.txt")
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "100", "--format", "raw", "--threads", "-o", self.path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        log(f"py-spy profile written to {self.path}")
        self.proc = None


# =================================================================== results
@dataclass
class Row:
    section: str
    metric: str
    value: str
    target: str = ""
    original: str = ""
    ok: bool | None = None


RESULTS: list[Row] = []
RAW: dict[str, Any] = {}


def add(section: str, metric: str, value: str, target: str = "", original: str = "", ok: bool | None = None) -> None:
    RESULTS.append(Row(section, metric, value, target, original, ok))


def print_table() -> None:
    headers = ("metric", "value", "target", "original", "")
    out: list[str] = []
    rows_by_section: dict[str, list[Row]] = {}
    for r in RESULTS:
        rows_by_section.setdefault(r.section, []).append(r)
    cells = [
        [r.metric, r.value, r.target, r.original, "" if r.ok is None else ("OK" if r.ok else "MISS")] for r in RESULTS
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]

    def line(c: list[str] | tuple[str, ...]) -> str:
        return "  ".join(x.ljust(w) for x, w in zip(c, widths)).rstrip()

    out.append(line(headers))
    out.append(line(["-" * w for w in widths]))
    for section, rows in rows_by_section.items():
        out.append(f"[{section}]")
        for r in rows:
            out.append(
                line([r.metric, r.value, r.target, r.original, "" if r.ok is None else ("OK" if r.ok else "MISS")])
            )
    print("\n".join(out), flush=True)


# ====================================================== phase 1: throughput
async def setup_throughput_host(
    args: argparse.Namespace, root: Path, session: aiohttp.ClientSession, stack: contextlib.AsyncExitStack
) -> tuple[HostSetup, SimCluster, list[str]]:
    host = HostSetup(root / "throughput")
    stack.callback(host.stop)
    await host.start(session)
    sim = SimCluster(host, task_runtime=(args.task_min, args.task_max))
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
    """`args.submits` single-core submits by `args.concurrency` workers over keep-alive connections."""
    connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=60)
    payload = {"command": ["true"], "cores": 1}
    out = Load()
    todo = iter(range(args.submits))

    async def worker(client: aiohttp.ClientSession) -> None:
        for _ in todo:
            t0 = time.perf_counter()
            try:
                async with client.post(host.url + "/api/tasks", json=payload) as resp:
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
        ">= 500 /s",
        ORIGINAL["submits_per_s"],
        rate >= 500,
    )
    add(
        sec,
        "round 1: submit latency p50 / p99 / max",
        f"{ms(p50)} / {ms(p99)} / {ms(max(lat) if lat else math.nan)}",
        "p99 <= 100 ms",
        ORIGINAL["submit_p99"],
        p99 <= 0.100,
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
        "<= 2.8 ms (10x)",
        "28 ms (93 % at 33/s)",
        per_task <= 0.0028,
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
        f"{ms(max(sim.report_rtt) if sim.report_rtt else math.nan)}  ({len(sim.report_rtt)} reports)",
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
            ">= 500 /s",
            "",
            min(rates) >= 500,
        )
        add(
            sec,
            f"all {len(rounds)} rounds: submit p99",
            " / ".join(ms(x) for x in p99s) + f"  (median {ms(statistics.median(p99s))})",
            "p99 <= 100 ms",
            "",
            max(p99s) <= 0.100,
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

app = web.Application(middlewares=[auth])
app.add_routes([web.post("/api/runner/register", register), web.post("/api/runner/heartbeat", heartbeat),
                web.get("/api/health", health)])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


class FloorSetup(HostSetup):
    """A bare aiohttp server answering register/heartbeat with no work behind
    them: the cost of the HTTP layer alone, for comparison with the Host."""

    async def start(self, session: aiohttp.ClientSession) -> None:
        self.proc = Proc(
            "floor",
            [sys.executable, "-c", FLOOR_SERVER, str(self.port), self.token],
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
    for c in client.containers.list(all=True, filters={"label": label}):
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
    p.add_argument("--profile", metavar="DIR", help="record py-spy profiles of the Host (throughput, idle) into DIR")
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
    global HOST_LAUNCHER
    args = parse_args(argv)
    HOST_LAUNCHER = os.path.abspath(args.host_launcher) if args.host_launcher else ""
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
    # Phase modules (bench/scheduling.py) import this one as `bench.run`: one
    # copy, so their rows land in the same table.
    sys.modules.setdefault("bench.run", sys.modules[__name__])
    sys.exit(main())
