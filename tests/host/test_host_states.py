"""The Host's state machine against a scripted runner: a real Host app on loopback,
a real SQLite file, and a fake runner HTTP server that records what it is sent.

These cover the transitions a real runner makes hard to catch on purpose: kill
while `assigning`, a late report after `killed`, pause holding resources, a
`lost` task restored by a heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hakuriver.config import config_from_dict
from hakuriver.host.app import create_app
from tests.harness.polling import apoll
from tests.harness.procs import free_port

TOKEN = "state-test-token"


class FakeRunner:
    """A runner endpoint whose answers a test controls. With `batch`, it also
    takes several tasks in one request (`POST /api/tasks/batch`), as runners
    do since batching; without, it is an older runner (404 there).
    `requests` records the path of every request, served or not."""

    def __init__(self, *, batch: bool = False) -> None:
        self.runs: list[dict[str, Any]] = []
        self.batches: list[list[dict[str, Any]]] = []
        self.requests: list[str] = []
        self.controls: list[tuple[str, str]] = []
        self.outcome: Callable[[dict[str, Any]], dict[str, Any]] = lambda _order: {"status": "accepted"}
        """A batch item's outcome (by its run request)."""
        self.hold = asyncio.Event()
        self.hold.set()
        self.control_hold = asyncio.Event()
        self.control_hold.set()
        app = web.Application(middlewares=[self._record])
        app.add_routes(
            [
                web.post("/api/tasks", self._run),
                web.post("/api/tasks/{task_id}/{action:kill|pause|resume}", self._control),
            ]
        )
        if batch:
            app.add_routes([web.post("/api/tasks/batch", self._run_batch)])
        self.app = app

    @web.middleware
    async def _record(self, request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> Any:
        self.requests.append(f"{request.method} {request.path}")
        return await handler(request)

    async def _run_batch(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        orders = (await request.json())["tasks"]
        self.batches.append(orders)
        await self.hold.wait()
        return web.json_response({"results": [{"task_id": o["task_id"], **self.outcome(o)} for o in orders]})

    async def _run(self, request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        body = await request.json()
        self.runs.append(body)
        await self.hold.wait()
        return web.json_response({"task_id": body["task_id"], "status": "accepted"}, status=202)

    async def _control(self, request: web.Request) -> web.Response:
        self.controls.append((request.match_info["task_id"], request.match_info["action"]))
        await self.control_hold.wait()
        return web.json_response({"ok": True})


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


class HostUnderTest:
    def __init__(self, session: aiohttp.ClientSession, url: str, runner_url: str):
        self.session, self.url, self.runner_url = session, url, runner_url

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.session.request(method, self.url + path, json=body) as resp:
            return resp.status, await resp.json()

    async def register(self, name: str = "n1", cores: int = 4, **extra: Any) -> None:
        body = {"hostname": name, "url": self.runner_url, "cores": cores, "memory": 8 << 30, **extra}
        status, reply = await self.call("POST", "/api/runner/register", body)
        assert status == 200, reply

    async def report(self, task_id: str, state: str, node: str = "n1", **extra: Any) -> tuple[int, Any]:
        return await self.call(
            "POST", f"/api/runner/tasks/{task_id}/status", {"hostname": node, "state": state, **extra}
        )

    async def heartbeat(self, node: str, tasks: list[tuple[str, str]]) -> tuple[int, Any]:
        return await self.call(
            "POST",
            "/api/runner/heartbeat",
            {"hostname": node, "stats": {}, "tasks": [{"task_id": t, "state": s} for t, s in tasks]},
        )

    async def state(self, task_id: str) -> str:
        return (await self.call("GET", f"/api/tasks/{task_id}"))[1]["state"]

    async def wait_state(self, task_id: str, state: str) -> None:
        async def check() -> bool:
            return await self.state(task_id) == state

        await apoll(check, timeout=10, what=f"task {task_id} to be {state}")

    async def submit(self, **fields: Any) -> str:
        status, reply = await self.call("POST", "/api/tasks", {"command": ["sleep", "1"], **fields})
        assert status == 201, reply
        return reply["task_ids"][0]


@contextlib.asynccontextmanager
async def scripted_host(
    tmp_path: Path, timing: dict[str, float], fake: FakeRunner | None = None
) -> AsyncIterator[tuple[HostUnderTest, FakeRunner]]:
    """A real Host on loopback (real SQLite file) and the scripted `FakeRunner`
    it sends tasks to (`fake`, or an older runner's); `timing` is the Host's [timing] section."""
    (tmp_path / "shared").mkdir()
    fake = fake or FakeRunner()
    runner_port, host_port = free_port(), free_port()
    fake_site = await _serve(fake.app, runner_port)
    config = config_from_dict(
        {
            "network": {"host_port": host_port},
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "database": {"db_file": str(tmp_path / "host.db")},
            "timing": timing,
            "auth": {"token": TOKEN},
        }
    )
    host_site = await _serve(create_app(config), host_port)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        yield HostUnderTest(session, f"http://127.0.0.1:{host_port}", f"http://127.0.0.1:{runner_port}"), fake
    finally:
        fake.hold.set()
        fake.control_hold.set()
        await session.close()
        await host_site.cleanup()
        await fake_site.cleanup()


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[tuple[HostUnderTest, FakeRunner]]:
    """A Host that keeps its node online for 30 s without heartbeats: these
    tests send none, and a busy CI machine must not take the node offline (and
    lose its tasks) in the middle of one."""
    async with scripted_host(
        tmp_path, {"heartbeat_interval": 0.2, "heartbeat_timeout_factor": 150, "cleanup_check_interval": 0.1}
    ) as pair:
        yield pair


@pytest.fixture
async def forgetful_host(tmp_path: Path) -> AsyncIterator[tuple[HostUnderTest, FakeRunner]]:
    """A Host that takes its node offline 3 s after the last heartbeat: long
    enough for a slow machine to take the next step after a heartbeat, short
    enough to wait for."""
    async with scripted_host(
        tmp_path, {"heartbeat_interval": 0.5, "heartbeat_timeout_factor": 6, "cleanup_check_interval": 0.1}
    ) as pair:
        yield pair


async def test_kill_while_assigning_is_forwarded_and_sticks(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register()
    fake.hold.clear()  # the runner takes the task but does not answer yet
    task_id = await h.submit()
    await apoll(lambda: fake.runs, timeout=10, what="the dispatch to reach the runner")
    assert await h.state(task_id) == "assigning"
    status, body = await h.call("POST", f"/api/tasks/{task_id}/kill")
    assert status == 200 and body["state"] == "killed"
    await apoll(lambda: (task_id, "kill") in fake.controls, timeout=10, what="the kill to be forwarded")
    fake.hold.set()
    # The runner now says it started the task; the Host keeps `killed` and
    # orders the kill again through the heartbeat reply.
    status, body = await h.report(task_id, "running")
    assert status == 200 and body["state"] == "killed"
    status, body = await h.heartbeat("n1", [(task_id, "running")])
    assert status == 200 and body["kill"] == [task_id]
    status, body = await h.report(task_id, "completed", exit_code=0)
    assert body["state"] == "killed"
    assert await h.state(task_id) == "killed"


async def test_pause_answers_done_when_a_heartbeat_reports_it_first(host: tuple[HostUnderTest, FakeRunner]) -> None:
    """The runner pauses the task and its next heartbeat says so before the
    runner's answer to the pause reaches the Host: the user still hears the
    pause took effect."""
    h, fake = host
    await h.register()
    task_id = await h.submit()
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    assert (await h.report(task_id, "running"))[0] == 200
    await h.wait_state(task_id, "running")
    fake.control_hold.clear()
    pause = asyncio.ensure_future(h.call("POST", f"/api/tasks/{task_id}/pause"))
    await apoll(lambda: (task_id, "pause") in fake.controls, timeout=10, what="the pause to reach the runner")
    status, _ = await h.heartbeat("n1", [(task_id, "paused")])
    assert status == 200
    fake.control_hold.set()
    status, body = await pause
    assert status == 200, body
    assert body["state"] == "paused"
    assert await h.state(task_id) == "paused"


async def test_pause_holds_resources_and_kill_works_when_paused(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register(cores=4)
    first = await h.submit(cores=4)
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    assert (await h.report(first, "running"))[0] == 200
    status, body = await h.call("POST", f"/api/tasks/{first}/pause")
    assert status == 200 and body["state"] == "paused"
    assert (first, "pause") in fake.controls
    second = await h.submit(cores=1)
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["allocated"]["cores"] == 4
    assert await h.state(second) == "pending"  # the paused task still holds every core
    status, body = await h.call("POST", f"/api/tasks/{first}/kill")
    assert status == 200 and body["state"] == "killed"
    await apoll(lambda: (first, "kill") in fake.controls, timeout=10, what="kill forwarded for the paused task")
    await h.wait_state(second, "assigning")


async def _heartbeat_restores(h: HostUnderTest, task_id: str, *, cores: int) -> None:
    """A heartbeat of n1 still running the lost task: the node is online again,
    the task `running` and its cores counted."""
    status, body = await h.heartbeat("n1", [(task_id, "running")])
    assert status == 200 and body["kill"] == []
    assert await h.state(task_id) == "running"
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["online"] is True and node["allocated"]["cores"] == cores


async def test_lost_when_heartbeats_stop_then_restored(forgetful_host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = forgetful_host
    await h.register()
    task_id = await h.submit(cores=2)
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    await h.report(task_id, "running")
    # No heartbeats: after interval × factor the node is offline, the task lost.
    await h.wait_state(task_id, "lost")
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["online"] is False and node["allocated"]["cores"] == 0
    # The runner comes back still running it: restored, and counted again.
    await _heartbeat_restores(h, task_id, cores=2)
    status, body = await h.report(task_id, "completed", exit_code=0)
    assert body["state"] == "completed"


async def test_a_report_does_not_bring_a_lost_task_back_on_an_offline_node(
    forgetful_host: tuple[HostUnderTest, FakeRunner],
) -> None:
    """Before, a `running` report restored the task while its node stayed
    offline: the task held cores on a node no sweep watches, and stayed
    `running` for good had the runner died. The heartbeat restores both."""
    h, fake = forgetful_host
    await h.register()
    task_id = await h.submit(cores=2)
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    await h.wait_state(task_id, "lost")
    status, body = await h.report(task_id, "running")
    assert status == 200 and body["state"] == "lost"
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["online"] is False and node["allocated"]["cores"] == 0
    assert await h.state(task_id) == "lost"
    await _heartbeat_restores(h, task_id, cores=2)
    # A final report of a lost task is the truth, node online or not.
    status, body = await h.report(task_id, "completed", exit_code=0)
    assert body["state"] == "completed"


async def test_reports_are_checked(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register("n1")
    await h.register("n2")
    task_id = await h.submit(targets=["n1"])
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    status, body = await h.report(task_id, "running", node="n2")
    assert status == 409  # a runner cannot report another node's task
    status, body = await h.report(task_id, "exploded")
    assert status == 400
    status, body = await h.report(task_id, "pending")
    assert status == 400
    status, body = await h.heartbeat("ghost", [])
    assert status == 404 and body["error"]["code"] == "unknown_node"
    status, body = await h.call("POST", f"/api/tasks/{task_id}/resume")
    assert status == 409  # only a paused task can be resumed


NO_SYSTEMD = {"docker": {"available": True}, "null": {"available": False, "reason": "systemd is not PID 1"}}


async def test_null_tasks_are_refused_where_no_runner_can_run_them(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, _ = host
    await h.register("vm", capabilities=NO_SYSTEMD)
    null_task = {"command": ["true"], "container": "NULL"}
    status, body = await h.call("POST", "/api/tasks", null_task)
    assert (status, body["error"]["code"]) == (400, "unschedulable")
    assert body["error"]["message"] == (
        "no node can run --container NULL tasks (node 'vm' cannot run --container NULL tasks: systemd is not PID 1)"
    )
    status, body = await h.call("POST", "/api/tasks", {**null_task, "targets": ["vm"]})
    assert status == 400
    assert body["error"]["message"] == "node 'vm' cannot run --container NULL tasks: systemd is not PID 1"
    assert (await h.call("GET", "/api/tasks"))[1]["tasks"] == []

    # Another node that can: accepted, and only ever placed there.
    await h.register("sd", capabilities={"docker": {"available": True}, "null": {"available": True}})
    status, body = await h.call("POST", "/api/tasks", null_task)
    assert status == 201, body
    status, body = await h.call("POST", "/api/tasks", {**null_task, "targets": ["vm"]})
    assert status == 400  # its target still cannot

    # An older runner that does not say what it runs: not refused on a guess.
    await h.register("old")
    status, body = await h.call("POST", "/api/tasks", {**null_task, "targets": ["old"]})
    assert status == 201, body
    nodes = {n["hostname"]: n["capabilities"] for n in (await h.call("GET", "/api/nodes"))[1]["nodes"]}
    assert nodes == {"vm": NO_SYSTEMD, "sd": {"docker": {"available": True}, "null": {"available": True}}, "old": None}


async def test_a_heartbeat_updates_what_a_node_runs(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, _ = host
    await h.register("vm", capabilities=NO_SYSTEMD)
    no_docker = {
        "docker": {"available": False, "reason": "cannot reach the Docker engine"},
        "null": {"available": True},
    }
    status, _ = await h.call("POST", "/api/runner/heartbeat", {"hostname": "vm", "capabilities": no_docker})
    assert status == 200
    status, body = await h.call("POST", "/api/tasks", {"command": ["true"], "targets": ["vm"]})
    assert status == 400
    assert body["error"]["message"] == "node 'vm' cannot run Docker tasks: cannot reach the Docker engine"
    status, body = await h.call("POST", "/api/tasks", {"command": ["true"], "container": "NULL", "targets": ["vm"]})
    assert status == 201, body
    # A heartbeat that does not say keeps what the node said last.
    assert (await h.heartbeat("vm", []))[0] == 200
    assert (await h.call("GET", "/api/nodes/vm"))[1]["capabilities"] == no_docker


@pytest.mark.parametrize(
    "bad",
    [{"null": {"available": "no"}}, ["docker"], {"null": {"available": False, "x": 1}}],
)
async def test_malformed_capabilities_never_turn_a_runner_away(
    host: tuple[HostUnderTest, FakeRunner], bad: Any
) -> None:
    """A record the Host cannot read is dropped (the node counts as able), never
    a refusal: a refused heartbeat would take a healthy node offline."""
    h, _ = host
    body = {"hostname": "vm", "url": h.runner_url, "cores": 1, "memory": 1 << 30, "capabilities": bad}
    status, reply = await h.call("POST", "/api/runner/register", body)
    assert status == 200, reply
    assert "capabilities" not in (await h.call("GET", "/api/nodes/vm"))[1] or (
        (await h.call("GET", "/api/nodes/vm"))[1]["capabilities"] in (None, {})
    )
    status, reply = await h.call("POST", "/api/runner/heartbeat", {"hostname": "vm", "capabilities": bad})
    assert status == 200, reply
    assert (await h.call("POST", "/api/tasks", {"command": ["true"], "container": "NULL"}))[0] == 201


async def test_a_final_report_carries_output_error(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register()
    task_id = await h.submit()
    await apoll(lambda: fake.runs, timeout=10, what="dispatch")
    status, body = await h.report(task_id, "running", output_error="stdout: too early")
    assert status == 400 and "final state" in body["error"]["message"]
    status, body = await h.report(task_id, "completed", exit_code=0, output_error=["not", "text"])
    assert status == 400
    flag = "stdout: No space left on device (ENOSPC) after 1M written"
    status, body = await h.report(task_id, "completed", exit_code=0, output_error=flag)
    assert status == 200 and body["state"] == "completed"
    status, task = await h.call("GET", f"/api/tasks/{task_id}")
    assert (task["state"], task["exit_code"], task["error"], task["output_error"]) == ("completed", 0, None, flag)
    status, listed = await h.call("GET", "/api/tasks")
    assert [t["output_error"] for t in listed["tasks"] if t["task_id"] == task_id] == [flag]
    clean = await h.submit()
    await apoll(lambda: len(fake.runs) == 2, timeout=10, what="the second dispatch")
    await h.report(clean, "failed", exit_code=2, error="exited with code 2")
    status, task = await h.call("GET", f"/api/tasks/{clean}")
    assert (task["state"], task["exit_code"], task["output_error"]) == ("failed", 2, None)


async def test_heartbeats_after_a_registration_write_nothing(host: tuple[HostUnderTest, FakeRunner]) -> None:
    """A registration stores the node's heartbeat; the beats that follow change
    nothing durable, so they cost no database commit (liveness lives in memory)."""
    h, _ = host

    async def commits() -> float:
        async with h.session.get(h.url + "/metrics") as resp:
            text = await resp.text()
        return sum(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("hakuriver_db_commit_operations_count")
        )

    await h.register()
    before = await commits()
    for _ in range(5):
        status, _ = await h.heartbeat("n1", [])
        assert status == 200
    assert await commits() == before
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["online"] is True
