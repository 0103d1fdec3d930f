"""HostClient against the fake Host: request shapes, errors, wait and logs."""

from __future__ import annotations

import asyncio

import pytest

from hakuriver import client as client_mod
from hakuriver.client import ApiError, HostClient, is_final, task_id_str
from hakuriver.errors import HakuRiverError, HostUnreachable, ValidationError
from hakuriver.models import Mount, Target
from tests.harness.procs import free_port

from .fakehost import TOKEN, FakeHost, _isolated_env, fake_host, sample_node  # noqa: F401 - fixtures


async def test_submit_sends_argv_list_and_only_given_fields(fake_host: FakeHost):
    async with HostClient(fake_host.url, TOKEN) as host:
        result = await host.submit(["echo", "$(id)", "a;b", ""])
        await host.submit(
            ["true"],
            cores=2,
            memory=1 << 30,
            container="NULL",
            env={"A": "1"},
            mounts=[Mount("/a", "/b", True)],
            privileged=False,
            targets=[Target("n1", 0, (1,)), "n2"],
        )
    first, second = fake_host.submitted_bodies()
    assert first == {"command": ["echo", "$(id)", "a;b", ""]}
    assert second == {
        "command": ["true"],
        "cores": 2,
        "memory": 1 << 30,
        "container": "NULL",
        "env": {"A": "1"},
        "mounts": ["/a:/b:ro"],
        "privileged": False,
        "targets": ["n1:0::1", "n2"],
    }
    assert result["task_ids"] == [result["tasks"][0]["task_id"]]


async def test_submit_refuses_a_string_command(fake_host: FakeHost):
    async with HostClient(fake_host.url, TOKEN) as host:
        with pytest.raises(TypeError):
            await host.submit("echo hi")  # type: ignore[arg-type]
    assert fake_host.submitted_bodies() == []


async def test_bearer_token_is_sent(fake_host: FakeHost):
    async with HostClient(fake_host.url, TOKEN) as host:
        await host.health()
    assert fake_host.requests[-1].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_api_errors_carry_status_and_code(fake_host: FakeHost):
    async with HostClient(fake_host.url, TOKEN) as host:
        with pytest.raises(ApiError) as exc:
            await host.get_task(12345)
    assert (exc.value.status, exc.value.code, exc.value.message) == (404, "not_found", "no task 12345")
    assert isinstance(exc.value, HakuRiverError)


async def test_wrong_token_is_401(fake_host: FakeHost):
    async with HostClient(fake_host.url, "wrong") as host:
        with pytest.raises(ApiError) as exc:
            await host.nodes()
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")


async def test_non_hakuriver_error_body(fake_host: FakeHost):
    async with HostClient(fake_host.url, TOKEN) as host:
        with pytest.raises(ApiError) as exc:
            await host._json("GET", "/not/an/endpoint")
    assert exc.value.status == 404 and exc.value.code == "http_404"
    assert "not a HakuRiver error body" in exc.value.message


async def test_task_ids_accept_int_and_str_and_refuse_junk(fake_host: FakeHost):
    task = fake_host.add_task(["true"])
    async with HostClient(fake_host.url, TOKEN) as host:
        assert (await host.get_task(int(task["task_id"])))["task_id"] == task["task_id"]
        assert (await host.get_task(task["task_id"]))["task_id"] == task["task_id"]
        before = len(fake_host.requests)
        for bad in ("1/../../x", "abc", -1, True):
            with pytest.raises(ValidationError):
                await host.get_task(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await host.node("../tasks")
    assert len(fake_host.requests) == before
    assert task_id_str(" 42 ") == "42"


async def test_unreachable_host():
    port = free_port()  # nothing listens there
    async with HostClient(f"http://127.0.0.1:{port}", TOKEN) as host:
        with pytest.raises(HostUnreachable) as exc:
            await host.health()
    assert str(exc.value) == f"cannot reach the Host at http://127.0.0.1:{port}: connection refused"


async def test_silent_host_times_out():
    writers: list[asyncio.StreamWriter] = []
    server = await asyncio.start_server(lambda r, w: writers.append(w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with HostClient(f"http://127.0.0.1:{port}", TOKEN, timeout=0.3) as host:
            with pytest.raises(HostUnreachable, match="no answer within 0.3s"):
                await host.health()
    finally:
        for w in writers:
            w.close()
            await w.wait_closed()
        server.close()
        await server.wait_closed()


async def test_list_tasks_query(fake_host: FakeHost):
    for _ in range(3):
        fake_host.add_task(["true"], state="running")
    async with HostClient(fake_host.url, TOKEN) as host:
        page = await host.list_tasks(state=["running", "pending"], node="node1", limit=2)
        assert len(page["tasks"]) == 2 and page["next_before"] == page["tasks"][-1]["task_id"]
        rest = await host.list_tasks(before=page["next_before"])
    assert fake_host.requests[-2].query == {"state": "running,pending", "node": "node1", "limit": "2"}
    assert len(rest["tasks"]) == 1


async def test_wait_returns_final_tasks(fake_host: FakeHost):
    ok, bad = fake_host.add_task(["true"]), fake_host.add_task(["false"])
    async with HostClient(fake_host.url, TOKEN) as host:
        result = await host.wait([ok["task_id"], int(bad["task_id"])], timeout=5)
    assert result["done"] is True
    assert [(t["state"], t["exit_code"]) for t in result["tasks"]] == [("completed", 0), ("failed", 1)]
    assert fake_host.requests[-1].body["timeout"] <= 5


async def test_wait_stops_at_its_deadline(fake_host: FakeHost):
    task = fake_host.add_task(["sleep", "100"])
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with HostClient(fake_host.url, TOKEN) as host:
        result = await host.wait([task["task_id"]], timeout=0.5)
    assert result["done"] is False and result["tasks"][0]["state"] == "running"
    assert loop.time() - start < 3
    waits = [r for r in fake_host.requests if r.path == "/api/tasks/wait"]
    assert len(waits) >= 2  # it polled again until the deadline, not once
    assert all(r.body["timeout"] <= 0.5 for r in waits)


async def test_wait_batches_many_ids(fake_host: FakeHost, monkeypatch):
    monkeypatch.setattr(client_mod, "WAIT_BATCH", 3)
    fake_host.max_wait_ids = 3
    tasks = [fake_host.add_task(["true"]) for _ in range(7)]
    ids = [t["task_id"] for t in tasks]
    async with HostClient(fake_host.url, TOKEN) as host:
        result = await host.wait(ids + ids[:2], timeout=5)
    assert [t["task_id"] for t in result["tasks"]] == ids
    assert result["done"] is True
    assert all(len(r.body["task_ids"]) <= 3 for r in fake_host.requests if r.path == "/api/tasks/wait")


async def test_logs_offset_tail_and_headers(fake_host: FakeHost):
    task = fake_host.add_task(["true"], state="running")
    fake_host.logs[(task["task_id"], "stdout")] = b"one\ntwo\nthree\n"
    fake_host.logs[(task["task_id"], "stderr")] = b"oops\n"
    async with HostClient(fake_host.url, TOKEN) as host:
        assert await host.logs(task["task_id"]) == (b"one\ntwo\nthree\n", 14, "running")
        assert await host.logs(task["task_id"], offset=8) == (b"three\n", 14, "running")
        assert await host.logs(task["task_id"], tail=2) == (b"two\nthree\n", 14, "running")
        assert await host.logs(task["task_id"], "stderr") == (b"oops\n", 5, "running")
        with pytest.raises(ValueError):
            await host.logs(task["task_id"], "stdin")
    assert fake_host.requests[-1].query == {"stream": "stderr", "offset": "0"}


async def test_using_the_client_outside_async_with_is_an_error():
    host = HostClient("http://127.0.0.1:9", TOKEN)
    with pytest.raises(RuntimeError):
        await host.health()


def test_is_final():
    assert is_final("completed") and is_final("lost") and not is_final("paused") and not is_final("nonsense")
