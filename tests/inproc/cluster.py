"""A whole HakuRiver cluster in one event loop: the real Host app and real Runner apps.

`InProcCluster` serves `hakuriver.host.app.create_app(config)` and any number of
`hakuriver.runner.app.create_app(config, executors=...)` on loopback sockets,
with real config objects, a real SQLite file per Host and per Runner, and a
typed `HostClient`. Only what this machine lacks is faked:

- Docker and systemd: each runner gets `StagedExecutor`s (the project's
  `FakeExecutor`, scripted by the command: `fake exit 3`, `fake oom`,
  `fake hang`, ...), which can also hold a task before it starts or before
  its end is reported, so that a test can look at `assigning` and `running`
  without racing the task.
- GPUs: tests/fakes/nvml on `sys.path` (the `fake_nvml` fixture).
- NUMA: a synthetic sysfs tree, read through the probe's own
  `$HAKURIVER_NUMA_SYSFS` seam.

The Host's environment manager looks for the default environment's tarball
at start; an empty placeholder tarball in the shared dir answers it, so the
Host never asks a Docker engine for anything.

`ThreadedCluster` runs the same cluster in an event loop of its own thread, for
synchronous tests (the blocking `BlockingHostApi` calls, as against the process
cluster of tests/integration).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import secrets
import socket
import threading
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from hakuriver.client import ApiError, HostClient
from hakuriver.config import Config, config_from_dict
from hakuriver.errors import ExecutorError
from hakuriver.host.app import create_app as create_host_app
from hakuriver.models import ExitResult
from hakuriver.runner.app import create_app as create_runner_app
from hakuriver.runner.executors.base import Executor, Fingerprint, Handle, LaunchSpec
from hakuriver.runner.executors.fake import FakeExecutor
from hakuriver.runner.keys import ORDER_TOKEN_KEY
from tests.harness.hostapi import BlockingHostApi
from tests.harness.polling import apoll
from tests.harness.procs import loopback_config, runner_config

T = TypeVar("T")

DEFAULT_ENV = "inproc-env"
"""The Host's docker.default_container_name here; a placeholder tarball provides it."""

NUMA_SYSFS_ENV = "HAKURIVER_NUMA_SYSFS"
FAKE_NVML_ENV = "FAKE_NVML_GPUS"
SHUTDOWN_TIMEOUT = 5.0
"""Seconds a stopping server waits for requests still in flight."""


@dataclass(frozen=True)
class Timing:
    heartbeat_interval: float = 0.2
    heartbeat_timeout_factor: float = 50.0
    """10 s: generous, so that a loaded machine never marks a node offline by accident.
    Tests about liveness ask for a short timeout."""
    cleanup_check_interval: float = 0.1


FAST_LIVENESS = Timing(heartbeat_interval=0.2, heartbeat_timeout_factor=5.0, cleanup_check_interval=0.1)
"""Offline after 1 s without heartbeats."""


class StagedExecutor(FakeExecutor):
    """The fake backend, with two gates a test may close and what it was asked to run.

    - `hold_start`: `start()` waits until `release_start(task_id)`; the Host shows
      the task `assigning` meanwhile.
    - `hold_end`: a task that ended waits until `release_end(task_id)` before the
      runner hears of it; the Host shows it `running` meanwhile.
    - `keep_tasks_on_close`: closing the executor (the runner stopping) leaves its
      tasks alive, as Docker containers and systemd units outlive their runner;
      `shutdown()` ends them at teardown.

    `specs` records every LaunchSpec started; `live_cores` / `max_live_cores` the
    cores of tasks started and not yet destroyed, as the node would see them.

    `name` is the backend name persisted in each task's handle. The runner
    re-adopts a task after a restart by looking that name up among its executor
    keys ("docker", "systemd"), so a stand-in registered under "docker" must be
    named "docker" to be found again (a plain FakeExecutor, named "fake", is not:
    see test_restarts.py::test_a_plain_fake_executor_is_re_adopted).
    """

    def __init__(
        self,
        runner_name: str = "",
        *,
        name: str | None = None,
        hold_start: bool = False,
        hold_end: bool = False,
        keep_tasks_on_close: bool = False,
    ):
        super().__init__(runner_name)
        if name is not None:
            self.name = name
        self.hold_start = hold_start
        self.hold_end = hold_end
        self.keep_tasks_on_close = keep_tasks_on_close
        self.specs: dict[int, LaunchSpec] = {}
        self.live: dict[int, int] = {}
        self.max_live_cores = 0
        self._gates: dict[tuple[str, int], asyncio.Event] = {}
        self.broken: str | None = None
        """When set, `fingerprint` fails with it: what this backend drives does
        not answer (an engine down), so the runner reports it unavailable."""

    async def fingerprint(self) -> Fingerprint:
        if self.broken is not None:
            raise ExecutorError(self.broken)
        return await super().fingerprint()

    def _gate(self, kind: str, task_id: int) -> asyncio.Event:
        return self._gates.setdefault((kind, task_id), asyncio.Event())

    def release_start(self, task_id: int | str) -> None:
        self._gate("start", int(task_id)).set()

    def release_end(self, task_id: int | str) -> None:
        self._gate("end", int(task_id)).set()

    def waiting_to_start(self, task_id: int | str) -> bool:
        return ("start", int(task_id)) in self._gates and not self._gate("start", int(task_id)).is_set()

    @property
    def live_cores(self) -> int:
        return sum(self.live.values())

    def handle(self, task_id: int | str) -> Handle:
        """The handle this backend gives task `task_id` (for `recover`/`stop` from a test)."""
        return Handle(task_id=int(task_id), executor=self.name, ref=self._ref(int(task_id)))

    async def start(self, spec: LaunchSpec) -> Handle:
        if self.hold_start:
            await self._gate("start", spec.task_id).wait()
        handle = await super().start(spec)
        self.specs[spec.task_id] = spec
        self.live[spec.task_id] = spec.cores or 1
        self.max_live_cores = max(self.max_live_cores, self.live_cores)
        return handle

    async def wait(self, handle: Handle) -> ExitResult:
        result = await super().wait(handle)
        if self.hold_end:
            await self._gate("end", handle.task_id).wait()
        return result

    async def destroy(self, handle: Handle) -> None:
        self.live.pop(handle.task_id, None)
        await super().destroy(handle)

    async def close(self) -> None:
        if not self.keep_tasks_on_close:
            await super().close()

    async def shutdown(self) -> None:
        await super().close()


def _listen(port: int = 0) -> socket.socket:
    """A listening loopback socket; its port goes into the config before the app exists."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve(app: web.Application, sock: socket.socket) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def write_numa_sysfs(root: Path, nodes: list[tuple[str, int]]) -> Path:
    """A sysfs node directory: one `nodeN/` per (cpulist, MemTotal bytes)."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (cpulist, memory) in enumerate(nodes):
        d = root / f"node{i}"
        d.mkdir(exist_ok=True)
        (d / "cpulist").write_text(cpulist + "\n")
        (d / "meminfo").write_text(f"Node {i} MemTotal:       {memory // 1024} kB\n")
    return root


@contextlib.contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class InProcRunner:
    name: str
    port: int
    config: Config
    executors: dict[str, Executor]
    local_temp: Path
    probe_env: dict[str, str | None]
    site: web.AppRunner | None = None
    app: web.Application | None = None
    """The running runner app (its keys: `hakuriver.runner.keys`)."""
    order_token: str = ""
    """What the Host presents to this runner (it chose it at its first start)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def docker(self) -> StagedExecutor:
        ex = self.executors["docker"]
        assert isinstance(ex, StagedExecutor)
        return ex

    @property
    def systemd(self) -> StagedExecutor:
        ex = self.executors["systemd"]
        assert isinstance(ex, StagedExecutor)
        return ex

    async def start(self, sock: socket.socket | None = None) -> None:
        assert self.site is None, f"runner {self.name} is already running"
        sock = sock or _listen(self.port)
        app = create_runner_app(self.config, executors=self.executors, sync_environments=False)
        # The probe reads NUMA topology and NVML during start-up only.
        with _environ(self.probe_env):
            self.site = await _serve(app, sock)
        self.order_token = app[ORDER_TOKEN_KEY]
        self.app = app

    async def stop(self) -> None:
        """Stop the runner as SIGTERM would: its coroutines end, its tasks do not
        (unless its executors end them on close, as the plain fake does)."""
        site, self.site = self.site, None
        if site is not None:
            await site.cleanup()

    async def call(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        """One request to this runner's own API (as the Host makes them)."""
        headers = {"Authorization": f"Bearer {self.order_token if token is None else token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.request(method, self.url + path) as resp:
                return resp.status, await resp.json()

    async def listed_tasks(self) -> dict[str, str]:
        """{task_id: state} of the tasks this runner says it runs (GET /api/tasks)."""
        status, body = await self.call("GET", "/api/tasks")
        assert status == 200, body
        return {t["task_id"]: t["state"] for t in body["tasks"]}


@dataclass
class InProcCluster:
    root: Path
    timing: Timing = field(default_factory=Timing)
    config_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    runners: dict[str, InProcRunner] = field(default_factory=dict)
    host_port: int = 0
    _host_site: web.AppRunner | None = None
    _client: HostClient | None = None

    def __post_init__(self) -> None:
        self.shared = self.root / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.db_file = self.root / "host.db"
        self._host_sock: socket.socket | None = _listen()
        self.host_port = self._host_sock.getsockname()[1]
        # The default environment "exists" (a tarball in shared storage), so the
        # Host's start-up never turns to a Docker engine to create it.
        env_dir = self.shared / "hakuriver-containers"
        env_dir.mkdir(exist_ok=True)
        (env_dir / f"{DEFAULT_ENV}-1.tar").write_bytes(b"")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    @property
    def client(self) -> HostClient:
        assert self._client is not None, "start_host() first"
        return self._client

    # ---------------------------------------------------------------- config
    def config_dict(self) -> dict[str, dict[str, Any]]:
        data = loopback_config(
            self.root,
            port=self.host_port,
            token=self.token,
            heartbeat_interval=self.timing.heartbeat_interval,
            heartbeat_timeout_factor=self.timing.heartbeat_timeout_factor,
            cleanup_check_interval=self.timing.cleanup_check_interval,
            docker={"default_container_name": DEFAULT_ENV, "allowed_mount_prefixes": [str(self.root / "mountable")]},
        )
        for section, values in self.config_overrides.items():
            data.setdefault(section, {}).update(values)
        return data

    def host_config(self) -> Config:
        (self.root / "host_temp").mkdir(exist_ok=True)
        return config_from_dict(self.config_dict(), source=str(self.root / "host.toml"))

    # ------------------------------------------------------------------ host
    async def start_host(self) -> None:
        assert self._host_site is None
        sock, self._host_sock = self._host_sock, None
        self._host_site = await _serve(create_host_app(self.host_config()), sock or _listen(self.host_port))
        if self._client is None:
            self._client = HostClient(self.url, self.token, timeout=10)
            await self._client.open()

    async def stop_host(self) -> None:
        site, self._host_site = self._host_site, None
        if site is not None:
            await site.cleanup()

    # --------------------------------------------------------------- runners
    async def add_runner(
        self,
        name: str,
        *,
        executors: dict[str, Executor] | None = None,
        numa: list[tuple[str, int]] | None = None,
        gpus: int | None = None,
        wait_online: bool = True,
        **executor_options: Any,
    ) -> InProcRunner:
        """Start a runner named `name`. `executors` defaults to a StagedExecutor for
        "docker" and one for "systemd" (built with `executor_options`). `numa`:
        synthetic NUMA nodes as (cpulist, bytes); `gpus`: fake NVML GPUs (needs
        the `fake_nvml` fixture)."""
        if executors is None:
            executors = {role: StagedExecutor(name, name=role, **executor_options) for role in ("docker", "systemd")}
        local_temp = self.root / f"temp-{name}"
        local_temp.mkdir(exist_ok=True)
        sock = _listen()
        port = sock.getsockname()[1]
        data = runner_config(self.config_dict(), name, port=port, local_temp=local_temp)
        config = config_from_dict(data, source=str(self.root / f"runner-{name}.toml"))
        probe_env: dict[str, str | None] = {NUMA_SYSFS_ENV: str(self.root / "no-numa")}
        if numa is not None:
            probe_env[NUMA_SYSFS_ENV] = str(write_numa_sysfs(self.root / f"numa-{name}", numa))
        if gpus:
            spec = importlib.util.find_spec("pynvml")
            assert spec is not None and "fakes" in str(spec.origin), "gpus= needs the fake_nvml fixture"
        probe_env[FAKE_NVML_ENV] = str(gpus or 0)
        runner = InProcRunner(name, port, config, executors, local_temp, probe_env)
        self.runners[name] = runner
        try:
            await runner.start(sock)
        except BaseException:
            sock.close()
            raise
        if wait_online:
            await self.wait_node(name, online=True)
        return runner

    async def restart_runner(self, name: str) -> InProcRunner:
        runner = self.runners[name]
        await runner.stop()
        await runner.start()
        return runner

    async def wait_node(self, name: str, *, online: bool = True, timeout: float = 20) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            node = await self.client.node(name)
            return node if node["online"] is online else None

        return await apoll(
            check,
            timeout=timeout,
            interval=0.02,
            what=f"node {name} to be {'online' if online else 'offline'}",
            ignore=(ApiError,),
        )

    # ----------------------------------------------------------------- tasks
    async def submit(self, command: list[str], **fields: Any) -> str:
        """Submit one task; its id."""
        reply = await self.client.submit(command, **fields)
        [task_id] = reply["task_ids"]
        return task_id

    async def wait_state(self, task_id: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            task = await self.client.get_task(task_id)
            return task if task["state"] in states else None

        return await apoll(check, timeout=timeout, interval=0.02, what=f"task {task_id} to be {' or '.join(states)}")

    async def still_pending(self, task_id: str, settle: float = 0.3) -> bool:
        """True when the task is pending after the scheduler had `settle` seconds (many
        passes) to place it: a check that something does *not* happen can only look
        for a while."""
        result = await self.client.wait([task_id], timeout=settle)
        return [t["state"] for t in result["tasks"]] == ["pending"]

    async def close(self) -> None:
        errors: list[BaseException] = []
        for runner in self.runners.values():
            try:
                await runner.stop()
                for ex in runner.executors.values():
                    if isinstance(ex, StagedExecutor):
                        await ex.shutdown()
            except Exception as exc:
                errors.append(exc)
        try:
            await self.stop_host()
        except Exception as exc:
            errors.append(exc)
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._host_sock is not None:
            self._host_sock.close()
            self._host_sock = None
        if errors:
            raise errors[0]


class ThreadedCluster(BlockingHostApi):
    """An `InProcCluster` in an event loop on its own thread, driven by blocking calls."""

    def __init__(self, root: Path, **kwargs: Any):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="inproc-cluster", daemon=True)
        self._thread.start()
        try:
            self.inner: InProcCluster = self._call(self._make(root, kwargs))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(root: Path, kwargs: dict[str, Any]) -> InProcCluster:
        return InProcCluster(root, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.inner.url

    @property
    def token(self) -> str:  # type: ignore[override]
        return self.inner.token

    def start_host(self) -> None:
        self._call(self.inner.start_host())

    def add_runner(self, name: str, **kwargs: Any) -> InProcRunner:
        return self._call(self.inner.add_runner(name, **kwargs))

    def close(self) -> None:
        try:
            self._call(self.inner.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
