"""What every benchmark phase shares: simulated runners, a Host in a temp dir,
CPU and latency helpers, and the one table of results (`add`, `print_table`).

The phases (`bench/run.py`, `bench/scheduling.py`, `bench/bigdb.py`) import this
module; it imports none of them."""

from __future__ import annotations

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
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import toml
from aiohttp import web

from hakuriver.runner.api import START_REPLY_WAIT_SECONDS
from tests.harness import procs
from tests.harness.procs import free_port, host_argv, loopback_config

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
    ready: list[tuple[dict[str, Any], asyncio.Future[None]]] = field(default_factory=list)
    """Reports waiting for the next batch (as a real runner's HostLink gathers them), each with its
    lifecycle's wait for delivery."""
    ready_event: asyncio.Event = field(default_factory=asyncio.Event)
    deliver: asyncio.Task[None] | None = None
    awaiting_reply: dict[int, asyncio.Event] = field(default_factory=dict)
    """Tasks whose order is still being answered: a start meanwhile sets the
    event and goes in the answer, not in a report of its own."""


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
        start_reply_wait: float = START_REPLY_WAIT_SECONDS,
    ):
        self.host = host
        self.task_runtime = task_runtime
        self.start_delay = start_delay
        self.start_reply_wait = start_reply_wait
        """How long an order's answer waits for its tasks to start, as a real
        runner's does (`runner/api.py`); 0: answered at once, every start
        reported on its own (a runner before that change)."""
        self.runners: dict[str, SimRunner] = {}
        self.app = web.Application()
        self.app.add_routes(
            [
                web.post("/r/{name}/api/tasks", self._run_task),
                web.post("/r/{name}/api/tasks/batch", self._run_tasks),
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
        """Each report request's round trip (a batch counts once)."""
        self.reports_sent = 0
        """Reports the Host answered (a batch counts each of its items)."""
        self.batch_reports = True
        """False once the Host answered 404/405 to the batch route: one report per request then."""
        self.batches_taken = 0
        """Task orders that came in a batch request, and alone (`singles_taken`)."""
        self.singles_taken = 0
        self.started_in_reply = 0
        """Tasks whose start went in the answer to their order."""
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
            for loop_task in (r.beat, r.deliver):
                if loop_task is not None:
                    loop_task.cancel()
                    pending.append(loop_task)
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

    def _refusal(self, request: web.Request) -> tuple[SimRunner | None, web.Response | None]:
        """The runner a task order is for, or the answer refusing the order."""
        if not self._authorized(request):
            return None, web.json_response({"error": {"code": "unauthorized", "message": "bad token"}}, status=401)
        r = self.runners.get(request.match_info["name"])
        if r is None:
            return None, web.json_response({"error": {"code": "not_found", "message": "no runner"}}, status=404)
        if not self.running:  # closing: a task accepted now could never report
            return None, web.json_response({"error": {"code": "unavailable", "message": "closing"}}, status=503)
        return r, None

    def _take(self, r: SimRunner, body: dict[str, Any]) -> str:
        task_id = int(body["task_id"])
        if task_id in r.tasks:  # idempotent, as a real runner
            return "already_accepted"
        cores = int(body.get("cores") or 1)
        r.cores_used += cores
        r.max_cores_used = max(r.max_cores_used, r.cores_used)
        if r.cores_used > r.cores:
            r.overcommit_events += 1
        r.accepted += 1
        self.accept_at.setdefault(task_id, time.monotonic())
        r.finishing.add(task_id)
        r.tasks[task_id] = asyncio.ensure_future(self._lifecycle(r, task_id, cores))
        return "accepted"

    async def _run_task(self, request: web.Request) -> web.Response:
        r, refusal = self._refusal(request)
        if r is None:
            assert refusal is not None
            return refusal
        body = await request.json()
        self.singles_taken += 1
        task_id = int(body["task_id"])
        status = self._take(r, body)
        (answer,) = await self._answer(r, [(task_id, status)])
        return web.json_response(answer, status=202)

    async def _run_tasks(self, request: web.Request) -> web.Response:
        r, refusal = self._refusal(request)
        if r is None:
            assert refusal is not None
            return refusal
        items = (await request.json())["tasks"]
        self.batches_taken += 1
        taken = [(int(item["task_id"]), self._take(r, item)) for item in items]
        return web.json_response({"results": await self._answer(r, taken)})

    async def _answer(self, r: SimRunner, taken: list[tuple[int, str]]) -> list[dict[str, Any]]:
        """Each order's outcome, once its newly accepted tasks have started or
        `start_reply_wait` has passed: a task that started says so in it."""
        waits = {i: r.awaiting_reply.setdefault(i, asyncio.Event()) for i, status in taken if status == "accepted"}
        if waits and self.start_reply_wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.start_reply_wait):
                    for event in waits.values():
                        await event.wait()
        answers = []
        for task_id, status in taken:
            event = r.awaiting_reply.pop(task_id, None) if task_id in waits else None
            answer = {"task_id": str(task_id), "status": status}
            if event is not None and event.is_set():
                answer["state"] = "running"
                self.started_in_reply += 1
            answers.append(answer)
        return answers

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
            waiting = r.awaiting_reply.get(task_id)
            if waiting is not None:
                waiting.set()  # its order's answer says it runs
            else:
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
        """Hand a report to the runner's delivery loop; return once the Host answered it."""
        if not self.batch_reports:
            await self._report_alone(r, task_id, payload)
            return
        done = asyncio.get_running_loop().create_future()
        r.ready.append(({"task_id": str(task_id), **payload}, done))
        r.ready_event.set()
        await done

    async def _deliver_loop(self, r: SimRunner) -> None:
        """Send every report ready in one request (at most 500), as HostLink does."""
        while self.running:
            await r.ready_event.wait()
            r.ready_event.clear()
            batch, r.ready = r.ready[:500], r.ready[500:]
            if r.ready:
                r.ready_event.set()
            if batch:
                await self._send_batch(r, batch)

    async def _send_batch(self, r: SimRunner, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        assert self.session is not None
        url = f"{self.host.url}/api/runner/reports"
        delay = 0.2
        try:
            for _ in range(30):
                if not self.running or self.session.closed:
                    return
                t0 = time.monotonic()
                try:
                    payload = {"hostname": r.name, "reports": [item for item, _ in batch]}
                    async with self.session.post(url, json=payload) as resp:
                        body = await resp.read()
                        self.report_rtt.append(time.monotonic() - t0)
                        if resp.status in (404, 405):  # an older Host: one report per request
                            self.batch_reports = False
                            await asyncio.gather(
                                *(self._report_alone(r, int(item["task_id"]), item) for item, _ in batch)
                            )
                            return
                        if resp.status == 200:
                            kept = []
                            for entry, result in zip(batch, json.loads(body)["results"], strict=True):
                                if result["status"] == 200 or result["status"] in (404, 409):
                                    self.reports_sent += 1
                                    if result["status"] != 200:
                                        self.report_failures += 1
                                    if not entry[1].done():
                                        entry[1].set_result(None)
                                else:
                                    kept.append(entry)
                            batch = kept
                            if not batch:
                                return
                except (TimeoutError, aiohttp.ClientError, OSError):
                    pass
                self.report_failures += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        finally:
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _report_alone(self, r: SimRunner, task_id: int, payload: dict[str, Any]) -> None:
        assert self.session is not None
        url = f"{self.host.url}/api/runner/tasks/{task_id}/status"
        fields = {k: v for k, v in payload.items() if k != "task_id"}
        delay = 0.2
        for _ in range(30):
            if not self.running or self.session.closed:
                return
            t0 = time.monotonic()
            try:
                async with self.session.post(url, json={"hostname": r.name, **fields}) as resp:
                    await resp.read()
                    self.report_rtt.append(time.monotonic() - t0)
                    if resp.status == 200 or resp.status in (404, 409):
                        self.reports_sent += 1
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
            self.runners[name].deliver = asyncio.ensure_future(self._deliver_loop(self.runners[name]))

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
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                os.environ.get("BENCH_PYSPY_RATE", "100"),
                *([] if os.environ.get("BENCH_PYSPY_BLOCKING") else ["--nonblocking"]),
                "--format",
                "raw",
                "--threads",
                "-o",
                self.path,
            ],
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
