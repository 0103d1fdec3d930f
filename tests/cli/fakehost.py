"""A small stand-in for the Host API, served on 127.0.0.1 from a background thread.

It mimics the documented shapes (host/openapi.yaml) of the routes the CLIs
use, records every request, and lets tests script outcomes:

- a task's final state comes from its program name (`FakeHost.outcomes`):
  `true` completes, `false` fails with 1, `oom` is killed_oom, and `sleep`
  never ends. Tasks turn final when someone waits on them.
- `FakeHost.log_script[task_id] = [chunk, ...]`: each logs request reveals
  one more chunk; with the last one the task turns `completed`, *after* the
  state header was taken, as the real Host reads the state before the file.

It runs in its own thread and loop so that tests can call the CLIs' `main()`
(which uses `asyncio.run`) synchronously.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hakuriver.client import is_final
from hakuriver.models import TaskState

TOKEN = "test-token-123"
BODY: Any = web.RequestKey("body", object) if hasattr(web, "RequestKey") else "body"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class FakeHost:
    token: str = TOKEN
    requests: list[Recorded] = field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    logs: dict[tuple[str, str], bytes] = field(default_factory=dict)
    log_script: dict[str, list[bytes]] = field(default_factory=dict)
    log_chunk: int = 1 << 20
    outcomes: dict[str, tuple[str, int | None]] = field(
        default_factory=lambda: {
            "true": ("completed", 0),
            "echo": ("completed", 0),
            "false": ("failed", 1),
            "oom": ("killed_oom", 137),
        }
    )
    nodes: list[dict[str, Any]] = field(default_factory=list)
    next_id: int = 7_000_000_000_000_000_001
    max_wait_ids: int = 1000
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        ready = threading.Event()
        errors: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # pragma: no cover - shown to the test
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-host", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.make_app())
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def make_app(self) -> web.Application:
        """The fake's application (its routes are checked against openapi.yaml)."""
        app = web.Application(middlewares=[self._auth])
        app.add_routes(
            [
                web.post("/api/tasks", self.submit),
                web.get("/api/tasks", self.list_tasks),
                web.post("/api/tasks/wait", self.wait),
                web.get("/api/tasks/{task_id}", self.get_task),
                web.post("/api/tasks/{task_id}/{action:kill|pause|resume}", self.control),
                web.get("/api/tasks/{task_id}/logs", self.get_logs),
                web.get("/api/nodes", self.list_nodes),
                web.get("/api/nodes/{hostname}", self.get_node),
                web.get("/api/health", self.health),
            ]
        )
        return app

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # ------------------------------------------------------------- helpers
    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw
        request[BODY] = body
        self.requests.append(Recorded(request.method, request.path, dict(request.query), body, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "unauthorized", "invalid bearer token")
        return await handler(request)

    def add_task(self, command: list[str], state: str = "pending", **fields: Any) -> dict[str, Any]:
        task_id = str(self.next_id)
        self.next_id += 1
        task = {
            "task_id": task_id,
            "batch_id": task_id,
            "state": state,
            "command": list(command),
            "cores": 1,
            "memory": None,
            "container": "hakuriver-base",
            "env": {},
            "mounts": [],
            "privileged": False,
            "target": None,
            "node": "node1",
            "numa": None,
            "gpus": [],
            "gpu_count": 0,
            "submitted_at": time.time(),
            "assigned_at": None,
            "started_at": None,
            "finished_at": None,
            "exit_code": None,
            "error": None,
        }
        task.update(fields)
        self.tasks[task_id] = task
        return task

    def _finish(self, task: dict[str, Any]) -> None:
        if is_final(task["state"]):
            return
        program = task["command"][0] if task["command"] else ""
        if program in self.outcomes:
            task["state"], task["exit_code"] = self.outcomes[program]
            task["finished_at"] = time.time()
        else:
            task["state"] = "running"

    def submitted_bodies(self) -> list[Any]:
        return [r.body for r in self.requests if r.method == "POST" and r.path == "/api/tasks"]

    # ------------------------------------------------------------ handlers
    async def submit(self, request: web.Request) -> web.Response:
        body = request[BODY]
        if not isinstance(body, dict) or not isinstance(body.get("command"), list) or not body["command"]:
            return _error(400, "invalid", "field 'command' is required")
        targets = body.get("targets") or [None]
        batch = str(self.next_id)
        tasks = []
        for target in targets:
            task = self.add_task(
                body["command"],
                batch_id=batch,
                target=target,
                cores=body.get("cores", 1),
                memory=body.get("memory"),
                env=body.get("env", {}),
                mounts=body.get("mounts", []),
                node=target.split(":")[0] if target else None,
            )
            tasks.append(task)
        return web.json_response(
            {"batch_id": batch, "task_ids": [t["task_id"] for t in tasks], "tasks": tasks}, status=201
        )

    async def list_tasks(self, request: web.Request) -> web.Response:
        tasks = sorted(self.tasks.values(), key=lambda t: int(t["task_id"]), reverse=True)
        if request.query.get("state"):
            wanted = set(request.query["state"].split(","))
            tasks = [t for t in tasks if t["state"] in wanted]
        if request.query.get("node"):
            tasks = [t for t in tasks if t["node"] == request.query["node"]]
        if request.query.get("before"):
            tasks = [t for t in tasks if int(t["task_id"]) < int(request.query["before"])]
        limit = int(request.query.get("limit", 100))
        page = tasks[:limit]
        next_before = page[-1]["task_id"] if len(page) == limit and len(tasks) > limit else None
        return web.json_response({"tasks": page, "next_before": next_before})

    def _task(self, request: web.Request) -> dict[str, Any] | None:
        return self.tasks.get(request.match_info["task_id"])

    async def get_task(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if task is None:
            return _error(404, "not_found", f"no task {request.match_info['task_id']}")
        return web.json_response(task)

    async def control(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if task is None:
            return _error(404, "not_found", f"no task {request.match_info['task_id']}")
        action = request.match_info["action"]
        if is_final(task["state"]):
            return _error(409, "conflict", f"task {task['task_id']} is already {task['state']}")
        task["state"] = {"kill": "killed", "pause": "paused", "resume": "running"}[action]
        return web.json_response(task)

    async def wait(self, request: web.Request) -> web.Response:
        body = request[BODY]
        ids = [str(i) for i in body["task_ids"]]
        if not 1 <= len(ids) <= self.max_wait_ids:
            return _error(400, "invalid", f"'task_ids' must hold between 1 and {self.max_wait_ids} ids")
        missing = [i for i in ids if i not in self.tasks]
        if missing:
            return _error(404, "not_found", f"no task {', '.join(missing)}")
        for i in ids:
            self._finish(self.tasks[i])
        tasks = [self.tasks[i] for i in ids]
        done = all(is_final(t["state"]) for t in tasks)
        if not done:
            await asyncio.sleep(min(float(body.get("timeout", 30)), 0.2))
        return web.json_response({"tasks": tasks, "done": done})

    async def get_logs(self, request: web.Request) -> web.Response:
        task = self._task(request)
        if task is None:
            return _error(404, "not_found", f"no task {request.match_info['task_id']}")
        stream = request.query.get("stream", "stdout")
        state = task["state"]  # read before the file, like the real Host
        key = (task["task_id"], stream)
        script = self.log_script.get(task["task_id"])
        if script and stream == "stdout":
            self.logs[key] = self.logs.get(key, b"") + script.pop(0)
            if not script:
                task["state"], task["exit_code"] = "completed", 0
        content = self.logs.get(key, b"")
        if "tail" in request.query:
            lines = content.splitlines(keepends=True)
            n = int(request.query["tail"])
            start = len(content) - sum(len(line) for line in lines[-n:]) if n else len(content)
        else:
            start = min(int(request.query.get("offset", 0)), len(content))
        data = content[start : start + self.log_chunk]
        return web.Response(
            body=data,
            content_type="application/octet-stream",
            headers={"X-HakuRiver-Next-Offset": str(start + len(data)), "X-HakuRiver-Task-State": state},
        )

    async def list_nodes(self, request: web.Request) -> web.Response:
        return web.json_response({"nodes": self.nodes})

    async def get_node(self, request: web.Request) -> web.Response:
        for node in self.nodes:
            if node["hostname"] == request.match_info["hostname"]:
                return web.json_response(node)
        return _error(404, "not_found", f"no node {request.match_info['hostname']}")

    async def health(self, request: web.Request) -> web.Response:
        online = sum(1 for n in self.nodes if n["online"])
        counts: dict[str, int] = {s.value: 0 for s in TaskState}
        for t in self.tasks.values():
            counts[t["state"]] += 1
        return web.json_response(
            {"status": "ok", "nodes": {"online": online, "offline": len(self.nodes) - online}, "tasks": counts}
        )


def sample_node(name: str = "node1", online: bool = True, capabilities: Any = None) -> dict[str, Any]:
    return {
        "hostname": name,
        "url": f"http://{name}:8001",
        "online": online,
        "cores": 16,
        "memory": 64 << 30,
        "numa": [
            {"id": 0, "cpus": list(range(8)), "memory": 32 << 30},
            {"id": 1, "cpus": list(range(8, 16)), "memory": 32 << 30},
        ],
        "gpus": [
            {"index": 0, "name": "Fake GPU", "uuid": "GPU-0", "memory_total": 16 << 30},
            {"index": 1, "name": "Fake GPU", "uuid": "GPU-1", "memory_total": 16 << 30},
        ],
        "capabilities": capabilities,
        "registered_at": time.time() - 3600,
        "last_heartbeat": time.time() - 2,
        "stats": {
            "cpu_percent": 42.5,
            "memory_used": 10 << 30,
            "memory_total": 64 << 30,
            "memory_percent": 15.6,
            "temperatures": {"coretemp/Package id 0": 55.0},
            "load_average": [1.5, 1.2, 1.0],
            "gpus": [
                {
                    "index": 0,
                    "utilization": 87,
                    "memory_used": 4 << 30,
                    "memory_total": 16 << 30,
                    "temperature": 71,
                    "power_watts": 210.5,
                },
                {
                    "index": 1,
                    "utilization": None,
                    "memory_used": None,
                    "memory_total": None,
                    "temperature": None,
                    "power_watts": None,
                },
            ],
        },
        "allocated": {"cores": 4, "memory": 8 << 30, "gpus": [0]},
    }


def write_config(path: Path, port: int, token: str | None = TOKEN) -> Path:
    lines = ["[network]", 'host_reachable_address = "127.0.0.1"', f"host_port = {port}"]
    if token is not None:
        lines += ["[auth]", f'token = "{token}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fake_host():
    host = FakeHost()
    host.start()
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def host_config(fake_host: FakeHost, tmp_path: Path) -> Path:
    return write_config(tmp_path / "config.toml", fake_host.port)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may read the developer's ~/.hakuriver or $HAKURIVER_CONFIG."""
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
