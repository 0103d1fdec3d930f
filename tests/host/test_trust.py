"""The trust model on a real Host: users with their own tokens, what each role
may do, runners that cannot be impersonated, and the Host's credential towards
each runner. A real Host app on loopback with a real SQLite file; the runner
side is a recording HTTP endpoint, since the Host is what decides here.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hakuriver.config import config_from_dict
from hakuriver.host.app import create_app
from hakuriver.host.db import MIGRATIONS, Database
from tests.harness.polling import apoll

ADMIN_TOKEN = "admin-token-for-the-trust-tests"
RUNNER_TOKEN = "runner-secret-for-the-trust-tests"
NODE_KEY = "node-key-of-the-real-runner-0001"
ORDER_TOKEN = "order-token-the-runner-chose-01"


class RecordingRunner:
    """A runner endpoint that accepts only the order token it handed out."""

    def __init__(self, order_token: str) -> None:
        self.order_token = order_token
        self.calls: list[tuple[str, str]] = []
        self.refused = 0
        app = web.Application()
        app.add_routes([web.post("/api/tasks", self._run), web.post("/api/tasks/{tid}/{action}", self._control)])
        self.app = app

    def _check(self, request: web.Request) -> bool:
        ok = request.headers.get("Authorization") == f"Bearer {self.order_token}"
        self.refused += not ok
        return ok

    async def _run(self, request: web.Request) -> web.Response:
        if not self._check(request):
            return web.json_response({"error": {"code": "unauthorized", "message": "no"}}, status=401)
        body = await request.json()
        self.calls.append(("run", body["task_id"]))
        return web.json_response({"task_id": body["task_id"], "status": "accepted"}, status=202)

    async def _control(self, request: web.Request) -> web.Response:
        if not self._check(request):
            return web.json_response({"error": {"code": "unauthorized", "message": "no"}}, status=401)
        self.calls.append((request.match_info["action"], request.match_info["tid"]))
        return web.json_response({"ok": True})


@dataclass
class Cluster:
    url: str
    runner_url: str
    session: aiohttp.ClientSession
    runner: RecordingRunner

    async def call(
        self, method: str, path: str, token: str | None, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        async with self.session.request(method, self.url + path, json=body, headers=h) as resp:
            return resp.status, await resp.json()

    async def add_user(self, name: str, **fields: Any) -> str:
        status, reply = await self.call("POST", "/api/users", ADMIN_TOKEN, {"name": name, **fields})
        assert status == 201, reply
        return reply["token"]

    async def register(self, name: str = "n1", key: str = NODE_KEY, order: str = ORDER_TOKEN) -> tuple[int, Any]:
        body = {
            "hostname": name,
            "url": self.runner_url,
            "cores": 8,
            "memory": 16 << 30,
            "node_key": key,
            "order_token": order,
        }
        return await self.call("POST", "/api/runner/register", RUNNER_TOKEN, body)

    async def heartbeat(self, name: str = "n1", key: str | None = NODE_KEY) -> tuple[int, Any]:
        headers = {"X-HakuRiver-Node-Key": key} if key else {}
        return await self.call(
            "POST", "/api/runner/heartbeat", RUNNER_TOKEN, {"hostname": name, "stats": {}}, headers=headers
        )

    async def submit(self, token: str, **fields: Any) -> dict[str, Any]:
        body = {"command": ["sleep", "60"], "env": {"SECRET": "s3cr3t", "PLAIN": "x"}, **fields}
        status, reply = await self.call("POST", "/api/tasks", token, body)
        assert status == 201, reply
        return reply["tasks"][0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _config(tmp_path: Path, host_port: int, **auth: str) -> Any:
    return config_from_dict(
        {
            "network": {"host_port": host_port},
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "database": {"db_file": str(tmp_path / "host.db")},
            "timing": {"heartbeat_interval": 0.5, "heartbeat_timeout_factor": 60, "cleanup_check_interval": 0.2},
            "auth": auth or {"admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN},
        }
    )


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    (tmp_path / "shared").mkdir(exist_ok=True)
    fake = RecordingRunner(ORDER_TOKEN)
    runner_port, host_port = free_port(), free_port()
    fake_site = await _serve(fake.app, runner_port)
    host_site = await _serve(create_app(_config(tmp_path, host_port)), host_port)
    session = aiohttp.ClientSession()
    try:
        yield Cluster(f"http://127.0.0.1:{host_port}", f"http://127.0.0.1:{runner_port}", session, fake)
    finally:
        await session.close()
        await host_site.cleanup()
        await fake_site.cleanup()


# ---------------------------------------------------------------- users
async def test_users_get_their_own_tokens_shown_once(cluster: Cluster) -> None:
    alice = await cluster.add_user("alice", unix_user="alice")
    bob = await cluster.add_user("bob")
    assert alice != bob and alice.startswith("hkr_")
    status, me = await cluster.call("GET", "/api/whoami", alice)
    assert (status, me) == (
        200,
        {
            "name": "alice",
            "role": "user",
            "unix_user": "alice",
            "effective_limits": {"max_cores": None, "max_gpus": None, "max_running": None},
            "usage": {"cores": 0, "gpus": 0, "running": 0},
        },
    )
    status, listing = await cluster.call("GET", "/api/users", ADMIN_TOKEN)
    assert status == 200
    assert [(u["name"], u["role"], u["unix_user"], u["tokens"]) for u in listing["users"]] == [
        ("alice", "user", "alice", 1),
        ("bob", "user", None, 1),
    ]
    assert alice not in str(listing) and bob not in str(listing), "tokens are shown only when issued"
    status, again = await cluster.call("POST", "/api/users", ADMIN_TOKEN, {"name": "alice"})
    assert status == 409 and "already exists" in again["error"]["message"]


async def test_tokens_are_stored_only_as_hashes(cluster: Cluster, tmp_path: Path) -> None:
    alice = await cluster.add_user("alice")
    data = (tmp_path / "host.db").read_bytes() + (
        (tmp_path / "host.db-wal").read_bytes() if (tmp_path / "host.db-wal").exists() else b""
    )
    assert alice.encode() not in data and ADMIN_TOKEN.encode() not in data


async def test_revoking_and_removing_users(cluster: Cluster) -> None:
    old = await cluster.add_user("alice")
    status, reply = await cluster.call("POST", "/api/users/alice/tokens", ADMIN_TOKEN, {"revoke_all": True})
    assert status == 201 and reply["revoked_others"] is True
    new = reply["token"]
    assert (await cluster.call("GET", "/api/whoami", old))[0] == 401
    assert (await cluster.call("GET", "/api/whoami", new))[0] == 200
    assert (await cluster.call("DELETE", "/api/users/alice", ADMIN_TOKEN))[0] == 200
    status, body = await cluster.call("GET", "/api/whoami", new)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_only_admins_manage_users_and_nodes(cluster: Cluster) -> None:
    alice = await cluster.add_user("alice")
    boss = await cluster.add_user("boss", admin=True)
    for method, path, body in [
        ("GET", "/api/users", None),
        ("POST", "/api/users", {"name": "mallory", "admin": True}),
        ("DELETE", "/api/users/boss", None),
        ("POST", "/api/users/boss/tokens", {}),
        ("POST", "/api/nodes/n1/forget", None),
    ]:
        status, reply = await cluster.call(method, path, alice, body)
        assert status == 403, (method, path, reply)
        assert reply["error"]["code"] == "forbidden" and "only an admin" in reply["error"]["message"]
    # an admin added through the API has the same powers as the config's admin
    assert (await cluster.call("POST", "/api/users", boss, {"name": "carol"}))[0] == 201


# ------------------------------------------------------------ credentials
async def test_each_credential_opens_only_its_own_routes(cluster: Cluster) -> None:
    alice = await cluster.add_user("alice")
    status, reply = await cluster.call("GET", "/api/tasks", RUNNER_TOKEN)
    assert status == 403 and "/api/runner/ only" in reply["error"]["message"]
    for token in (alice, ADMIN_TOKEN):
        status, reply = await cluster.call("POST", "/api/runner/heartbeat", token, {"hostname": "n1"})
        assert status == 403 and "auth.runner_token" in reply["error"]["message"], token
    assert (await cluster.call("GET", "/api/tasks", None))[0] == 401
    assert (await cluster.call("GET", "/api/tasks", "not-a-token"))[0] == 401


async def test_a_malformed_header_is_described_without_echoing_it(cluster: Cluster) -> None:
    secretish = "Bearer h\u00e9llo-this-looks-like-a-secret"
    async with cluster.session.get(cluster.url + "/api/tasks", headers={"Authorization": secretish}) as resp:
        body = await resp.text()
        assert resp.status == 401
    assert "looks-like-a-secret" not in body and "malformed" in body


# ------------------------------------------------------------ ownership
async def test_everyone_sees_every_task_but_not_others_env_values(cluster: Cluster) -> None:
    alice, bob = await cluster.add_user("alice"), await cluster.add_user("bob")
    assert (await cluster.register())[0] == 200
    task = await cluster.submit(alice)
    assert task["owner"] == "alice" and task["env"]["SECRET"] == "s3cr3t"
    _, as_bob = await cluster.call("GET", f"/api/tasks/{task['task_id']}", bob)
    assert as_bob["owner"] == "alice" and as_bob["env"] == {"SECRET": "<redacted>", "PLAIN": "<redacted>"}
    _, listing = await cluster.call("GET", "/api/tasks", bob)
    assert [t["env"]["SECRET"] for t in listing["tasks"]] == ["<redacted>"]
    _, as_admin = await cluster.call("GET", f"/api/tasks/{task['task_id']}", ADMIN_TOKEN)
    assert as_admin["env"]["SECRET"] == "s3cr3t"
    await cluster.submit(bob)
    _, mine = await cluster.call("GET", "/api/tasks?user=alice", bob)
    assert [t["owner"] for t in mine["tasks"]] == ["alice"]


async def test_only_the_owner_or_an_admin_controls_a_task(cluster: Cluster) -> None:
    alice, bob = await cluster.add_user("alice"), await cluster.add_user("bob")
    assert (await cluster.register())[0] == 200
    first, second = await cluster.submit(alice), await cluster.submit(alice)
    for action, method in [("kill", "POST"), ("pause", "POST"), ("resume", "POST"), ("logs", "GET")]:
        status, reply = await cluster.call(method, f"/api/tasks/{first['task_id']}/{action}", bob)
        assert status == 403, (action, reply)
        assert "alice's" in reply["error"]["message"]
    status, killed = await cluster.call("POST", f"/api/tasks/{first['task_id']}/kill", alice)
    assert (status, killed["state"]) == (200, "killed")
    status, killed = await cluster.call("POST", f"/api/tasks/{second['task_id']}/kill", ADMIN_TOKEN)
    assert (status, killed["state"]) == (200, "killed")


# ----------------------------------------------------------------- nodes
async def test_a_node_name_is_bound_to_the_runner_that_registered_it(cluster: Cluster) -> None:
    assert (await cluster.register())[0] == 200
    status, reply = await cluster.register(key="an-impostors-node-key-000000")
    assert status == 409 and "hakuriver.admin node forget n1" in reply["error"]["message"]
    assert (await cluster.heartbeat(key=None))[0] == 403
    assert (await cluster.heartbeat(key="an-impostors-node-key-000000"))[0] == 403
    assert (await cluster.heartbeat())[0] == 200
    # the real runner registering again (a restart) is fine
    assert (await cluster.register())[0] == 200


async def test_reports_only_from_the_bound_runner_of_the_tasks_node(cluster: Cluster) -> None:
    alice = await cluster.add_user("alice")
    assert (await cluster.register("n1"))[0] == 200
    assert (await cluster.register("n2", key="node-key-of-the-second-runner", order="order-of-n2-0000000000"))[0]
    task = await cluster.submit(alice, targets=["n1"])
    tid = task["task_id"]

    async def dispatched() -> bool:
        return ("run", tid) in cluster.runner.calls

    await apoll(dispatched, timeout=10, what="the task to reach n1's runner")
    report = {"hostname": "n1", "state": "completed", "exit_code": 0}
    path = f"/api/runner/tasks/{tid}/status"
    # n2's runner cannot report n1's task, neither as itself nor with a forged name
    status, _ = await cluster.call(
        "POST",
        path,
        RUNNER_TOKEN,
        {**report, "hostname": "n2"},
        {"X-HakuRiver-Node-Key": "node-key-of-the-second-runner"},
    )
    assert status == 409
    status, _ = await cluster.call(
        "POST", path, RUNNER_TOKEN, report, {"X-HakuRiver-Node-Key": "node-key-of-the-second-runner"}
    )
    assert status == 403
    _, now = await cluster.call("GET", f"/api/tasks/{tid}", alice)
    assert now["state"] != "completed"
    status, done = await cluster.call("POST", path, RUNNER_TOKEN, report, {"X-HakuRiver-Node-Key": NODE_KEY})
    assert (status, done["state"]) == (200, "completed")


async def test_the_host_calls_each_runner_with_the_token_it_chose(cluster: Cluster) -> None:
    alice = await cluster.add_user("alice")
    assert (await cluster.register())[0] == 200
    task = await cluster.submit(alice)

    async def dispatched() -> bool:
        return ("run", task["task_id"]) in cluster.runner.calls

    await apoll(dispatched, timeout=10, what="the task to reach the runner")
    assert (await cluster.call("POST", f"/api/tasks/{task['task_id']}/kill", alice))[0] == 200

    async def killed() -> bool:
        return ("kill", task["task_id"]) in cluster.runner.calls

    await apoll(killed, timeout=10, what="the kill to reach the runner")
    assert cluster.runner.refused == 0
    status, nodes = await cluster.call("GET", "/api/nodes", alice)
    assert ORDER_TOKEN not in str(nodes) and NODE_KEY not in str(nodes)


async def test_forget_frees_the_name_for_a_new_runner(cluster: Cluster) -> None:
    assert (await cluster.register())[0] == 200
    new_key = "node-key-of-a-replacement-runner"
    assert (await cluster.register(key=new_key))[0] == 409
    status, reply = await cluster.call("POST", "/api/nodes/n1/forget", ADMIN_TOKEN)
    assert (status, reply) == (200, {"forgotten": "n1"})
    assert (await cluster.register(key=new_key))[0] == 200
    assert (await cluster.heartbeat(key=new_key))[0] == 200
    assert (await cluster.heartbeat())[0] == 403


# -------------------------------------------------------------- upgrades
async def test_a_single_token_config_and_a_version_1_database_keep_working(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    conn = sqlite3.connect(tmp_path / "host.db")
    conn.executescript(MIGRATIONS[0] + "PRAGMA user_version=1;")
    conn.execute(
        "INSERT INTO tasks (id, batch_id, state, command_json, cores, submitted_at, updated_at) "
        "VALUES (7, 7, 'pending', '[\"true\"]', 1, 1.0, 1.0)"
    )
    conn.commit()
    conn.close()
    port = free_port()
    site = await _serve(create_app(_config(tmp_path, port, token="the-old-single-token-0001")), port)
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer the-old-single-token-0001"}) as s:
            async with s.get(f"http://127.0.0.1:{port}/api/tasks/7") as resp:
                old = await resp.json()
            assert resp.status == 200 and old["owner"] is None
            async with s.get(f"http://127.0.0.1:{port}/api/whoami") as resp:
                assert (await resp.json())["role"] == "admin"
            async with s.post(f"http://127.0.0.1:{port}/api/runner/heartbeat", json={"hostname": "x"}) as resp:
                assert resp.status == 404, "the single token is still the runner secret too"
    finally:
        await site.cleanup()
    db = await Database.open(tmp_path / "host.db")
    try:
        assert await db.schema_version() == len(MIGRATIONS)
    finally:
        await db.close()


# ---------------------------------------------------------- environments
async def test_environments_belong_to_whoever_made_them(cluster: Cluster) -> None:
    alice, bob = await cluster.add_user("alice"), await cluster.add_user("bob")
    # The default environment (the Host's own) is the admins'.
    status, reply = await cluster.call("DELETE", "/api/environments/tarballs/hakuriver-base", bob)
    assert status == 403 and "belongs to the admins" in reply["error"]["message"]
    # Alice's first upload under a new name makes it hers, whatever the upload holds.
    async with cluster.session.post(
        cluster.url + "/api/environments/tarballs/alice-env/tar",
        data=b"not a tarball",
        headers={"Authorization": f"Bearer {alice}", "Content-Type": "application/x-tar"},
    ) as resp:
        await resp.read()
    status, reply = await cluster.call("DELETE", "/api/environments/tarballs/alice-env", bob)
    assert status == 403 and "alice's" in reply["error"]["message"]
    async with cluster.session.post(
        cluster.url + "/api/environments/tarballs/alice-env/tar",
        data=b"bob's replacement",
        headers={"Authorization": f"Bearer {bob}", "Content-Type": "application/x-tar"},
    ) as resp:
        assert resp.status == 403, await resp.text()
    # Alice and the admins pass the check (there is no tarball to delete: 404).
    assert (await cluster.call("DELETE", "/api/environments/tarballs/alice-env", alice))[0] == 404
    assert (await cluster.call("DELETE", "/api/environments/tarballs/alice-env", ADMIN_TOKEN))[0] == 404
