"""Batching between the Host and its runners, the Host's side: a real Host app
on loopback with a real SQLite file, and the scripted runner of
test_host_states.py (with or without the batch route).

- `POST /api/runner/reports`: a runner's ready reports in one request,
  validated whole, applied in order, one outcome each, idempotent.
- `POST /api/tasks/batch` on the runner: the tasks one pass placed on one
  node in one request; each refusal fails only its task; an older runner
  (404) gets each task alone; a Host restart sends what it caught
  `assigning` again, in one request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hakuriver.config import config_from_dict
from hakuriver.host.app import create_app
from tests.harness.polling import apoll
from tests.harness.procs import free_port

from .test_host_states import TOKEN, FakeRunner, HostUnderTest, _serve, scripted_host

TIMING = {"heartbeat_interval": 0.2, "heartbeat_timeout_factor": 50, "cleanup_check_interval": 0.1}


@contextlib.asynccontextmanager
async def host_with(tmp_path: Path, fake: FakeRunner) -> AsyncIterator[HostUnderTest]:
    async with scripted_host(tmp_path, TIMING, fake) as (h, _fake):
        yield h


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[tuple[HostUnderTest, FakeRunner]]:
    fake = FakeRunner(batch=True)
    async with host_with(tmp_path, fake) as h:
        yield h, fake


async def reports(h: HostUnderTest, items: Any, node: str = "n1", **extra: Any) -> tuple[int, Any]:
    return await h.call("POST", "/api/runner/reports", {"hostname": node, "reports": items, **extra})


async def submit_array(h: HostUnderTest, spec: str, **fields: Any) -> list[str]:
    status, reply = await h.call("POST", "/api/tasks", {"command": ["sleep", "1"], "array": spec, **fields})
    assert status == 201, reply
    return list(reply["task_ids"])


async def placed(h: HostUnderTest, fake: FakeRunner, count: int) -> list[str]:
    """Submit an array of `count` tasks on n1 and wait until the runner got them all."""
    ids = await submit_array(h, f"0-{count - 1}")
    await apoll(lambda: sum(len(b) for b in fake.batches) + len(fake.runs) >= count, timeout=10, what="dispatch")
    return ids


async def task(h: HostUnderTest, task_id: str) -> dict[str, Any]:
    status, body = await h.call("GET", f"/api/tasks/{task_id}")
    assert status == 200, body
    return dict(body)


# ------------------------------------------------------------------ reports
async def test_a_batch_of_reports_is_applied_in_order_and_again_changes_nothing(
    host: tuple[HostUnderTest, FakeRunner],
) -> None:
    h, fake = host
    await h.register()
    first, second = await placed(h, fake, 2)
    batch = [
        {"task_id": first, "state": "running"},
        {"task_id": first, "state": "completed", "exit_code": 0},
        {"task_id": second, "state": "running"},
    ]
    status, body = await reports(h, batch)
    assert status == 200, body
    assert body["results"] == [
        {"task_id": first, "status": 200, "state": "running"},
        {"task_id": first, "status": 200, "state": "completed"},
        {"task_id": second, "status": 200, "state": "running"},
    ]
    done = await task(h, first)
    assert (done["state"], done["exit_code"]) == ("completed", 0)
    assert done["started_at"] is not None and done["started_at"] <= done["finished_at"]
    assert (await task(h, second))["state"] == "running"
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["allocated"]["cores"] == 1  # the completed task let go of its core

    # The runner did not hear the answer and sends the same batch again.
    before = [await task(h, first), await task(h, second)]
    status, body = await reports(h, batch)
    assert status == 200, body
    assert [r["state"] for r in body["results"]] == ["completed", "completed", "running"]
    assert [await task(h, first), await task(h, second)] == before


async def test_the_order_of_a_batch_is_the_order_applied(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register()
    [task_id] = await placed(h, fake, 1)
    # A result, then a stale `running` behind it: the guard keeps the result.
    status, body = await reports(
        h, [{"task_id": task_id, "state": "failed", "exit_code": 3}, {"task_id": task_id, "state": "running"}]
    )
    assert status == 200, body
    assert [r["state"] for r in body["results"]] == ["failed", "failed"]
    assert (await task(h, task_id))["exit_code"] == 3


async def test_each_report_gets_its_own_outcome(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    await h.register("n1")
    await h.register("n2")
    mine, other = await submit_array(h, "0-1", targets=["n1"])
    await apoll(lambda: fake.batches, timeout=10, what="dispatch")
    status, body = await reports(
        h,
        [
            {"task_id": "999999", "state": "running"},
            {"task_id": mine, "state": "running", "attempt": 2},
            {"task_id": other, "state": "running"},
        ],
    )
    assert status == 200, body
    missing, wrong_attempt, fine = body["results"]
    assert (missing["status"], missing["error"]["code"], missing["error"]["message"]) == (
        404,
        "not_found",
        "no task 999999",
    )
    assert (wrong_attempt["status"], wrong_attempt["error"]["code"]) == (409, "conflict")
    assert "attempt" in wrong_attempt["error"]["message"]
    assert fine == {"task_id": other, "status": 200, "state": "running"}
    assert (await task(h, mine))["state"] == "assigning"

    # The single route's answers, item by item: another node's task is a 409.
    status, single = await h.report(mine, "running", node="n2")
    status_b, body = await reports(h, [{"task_id": mine, "state": "running"}], node="n2")
    assert status == 409 and status_b == 200
    assert body["results"] == [{"task_id": mine, "status": 409, **single}]


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ("not an object", "a report is a JSON object"),
        ({"state": "running"}, "'task_id' is required"),
        ({"task_id": "x", "state": "running"}, "invalid task id"),
        ({"task_id": "TASK", "state": "exploded"}, "unknown state"),
        ({"task_id": "TASK", "state": "pending"}, "runners cannot report state pending"),
        ({"task_id": "TASK", "state": "running", "output_error": "early"}, "only with a final state"),
        ({"task_id": "TASK", "state": "completed", "exit_code": 1 << 40}, "32 bits"),
        ({"task_id": "TASK", "state": "running", "attempt": 0}, "'attempt'"),
        ({"task_id": "TASK", "state": "running", "hostname": "n1"}, "unknown field(s): hostname"),
    ],
)
async def test_one_malformed_report_refuses_the_whole_batch(
    host: tuple[HostUnderTest, FakeRunner], bad: Any, words: str
) -> None:
    h, fake = host
    await h.register()
    [task_id] = await placed(h, fake, 1)
    if isinstance(bad, dict) and bad.get("task_id") == "TASK":
        bad = {**bad, "task_id": task_id}
    status, body = await reports(h, [{"task_id": task_id, "state": "running"}, bad])
    assert status == 400, body
    assert body["error"]["code"] == "invalid"
    assert body["error"]["message"].startswith("reports[1]: ") and words in body["error"]["message"]
    assert (await task(h, task_id))["state"] == "assigning"  # nothing half-applied


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"hostname": "n1", "reports": []}, "1 to 500"),
        ({"hostname": "n1", "reports": [{"task_id": "1", "state": "running"}] * 501}, "1 to 500 reports, not 501"),
        ({"hostname": "n1", "reports": {"task_id": "1"}}, "'reports'"),
        ({"hostname": "n1"}, "'reports' is required"),
        ({"reports": []}, "'hostname' is required"),
        ({"hostname": "n1", "reports": [], "extra": 1}, "unknown field(s): extra"),
    ],
)
async def test_a_malformed_batch_is_a_400_with_its_reason(
    host: tuple[HostUnderTest, FakeRunner], body: dict[str, Any], words: str
) -> None:
    h, _fake = host
    await h.register()
    status, reply = await h.call("POST", "/api/runner/reports", body)
    assert status == 400, reply
    assert words in reply["error"]["message"]


async def test_a_batch_needs_the_runner_bound_to_the_node(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host
    key = "node-key-of-the-batching-runner-01"
    await h.register(node_key=key)
    [task_id] = await placed(h, fake, 1)
    batch = {"hostname": "n1", "reports": [{"task_id": task_id, "state": "running"}]}
    async with h.session.post(h.url + "/api/runner/reports", json=batch) as resp:
        assert resp.status == 403, await resp.text()
    assert (await task(h, task_id))["state"] == "assigning"
    async with h.session.post(h.url + "/api/runner/reports", json=batch, headers={"X-HakuRiver-Node-Key": key}) as resp:
        assert resp.status == 200, await resp.text()
    assert (await task(h, task_id))["state"] == "running"


# ----------------------------------------------------------------- dispatch
async def test_tasks_placed_together_go_to_their_runner_in_one_request(
    host: tuple[HostUnderTest, FakeRunner],
) -> None:
    h, fake = host
    await h.register(cores=4)
    ids = await placed(h, fake, 3)
    assert fake.runs == []
    [batch] = fake.batches
    assert sorted(order["task_id"] for order in batch) == sorted(ids)
    assert fake.requests.count("POST /api/tasks/batch") == 1
    for task_id in ids:
        assert (await task(h, task_id))["state"] == "assigning"


async def test_a_refusal_in_a_batch_fails_only_its_task(host: tuple[HostUnderTest, FakeRunner]) -> None:
    h, fake = host

    def outcome(order: dict[str, Any]) -> dict[str, Any]:
        if order["array_index"] == 1:
            return {"status": "refused", "http_status": 403, "error": {"code": "forbidden", "message": "not here"}}
        if order["array_index"] == 2:
            return {"status": "refused", "http_status": 500, "error": {"code": "internal", "message": "it broke"}}
        return {"status": "accepted"}

    fake.outcome = outcome
    await h.register(cores=4)
    taken, refused, broken = await placed(h, fake, 3)
    await h.wait_state(refused, "failed")
    await h.wait_state(broken, "failed")
    assert (await task(h, refused))["error"] == "runner n1 refused the task: not here"
    error = (await task(h, broken))["error"]
    assert error.startswith("dispatch to n1 failed: ") and "500: it broke" in error
    assert (await task(h, taken))["state"] == "assigning"
    node = (await h.call("GET", "/api/nodes/n1"))[1]
    assert node["allocated"]["cores"] == 1


async def test_an_older_runner_gets_each_task_alone(tmp_path: Path) -> None:
    fake = FakeRunner(batch=False)
    async with host_with(tmp_path, fake) as h:
        await h.register(cores=8)
        first = await placed(h, fake, 3)
        assert sorted(order["task_id"] for order in fake.runs) == sorted(first)
        second = await submit_array(h, "0-1")
        await apoll(lambda: len(fake.runs) == 5, timeout=10, what="the second array's dispatch")
        assert sorted(order["task_id"] for order in fake.runs[3:]) == sorted(second)
        # Asked once, then remembered: the second array went straight to the single route.
        assert fake.requests.count("POST /api/tasks/batch") == 1
        for task_id in first + second:
            assert (await task(h, task_id))["state"] == "assigning"


async def test_an_unreachable_runner_fails_each_task_of_the_batch(tmp_path: Path) -> None:
    fake = FakeRunner(batch=True)
    async with host_with(tmp_path, fake) as h:
        h.runner_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        await h.register(cores=4)
        ids = await submit_array(h, "0-1")
        for task_id in ids:
            await h.wait_state(task_id, "failed")
            assert (await task(h, task_id))["error"].startswith("dispatch to n1 failed: cannot reach runner")


async def test_a_host_restart_sends_the_tasks_it_caught_assigning_in_one_request(tmp_path: Path) -> None:
    fake = FakeRunner(batch=True)
    fake.hold.clear()  # the runner takes the batch but does not answer
    (tmp_path / "shared").mkdir()
    runner_port = free_port()
    fake_site = await _serve(fake.app, runner_port)
    try:
        async with host_on(tmp_path, f"http://127.0.0.1:{runner_port}") as h:
            await h.register(cores=4)
            ids = await submit_array(h, "0-2")
            await apoll(lambda: fake.batches, timeout=10, what="the first dispatch")
        # The same database, a new Host: what it caught `assigning` goes again, together.
        async with host_on(tmp_path, f"http://127.0.0.1:{runner_port}") as h:
            await apoll(lambda: len(fake.batches) == 2, timeout=10, what="the re-send after the restart")
            fake.hold.set()
            assert sorted(o["task_id"] for o in fake.batches[1]) == sorted(ids)
            assert fake.runs == []
            for task_id in ids:
                assert (await task(h, task_id))["state"] == "assigning"
    finally:
        fake.hold.set()
        await fake_site.cleanup()


@contextlib.asynccontextmanager
async def host_on(tmp_path: Path, runner_url: str) -> AsyncIterator[HostUnderTest]:
    """A real Host on the database in `tmp_path` (kept between Hosts), as in `scripted_host`."""
    host_port = free_port()
    config = config_from_dict(
        {
            "network": {"host_port": host_port},
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "database": {"db_file": str(tmp_path / "host.db")},
            "timing": TIMING,
            "auth": {"token": TOKEN},
        }
    )
    site = await _serve(create_app(config), host_port)
    session = aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        yield HostUnderTest(session, f"http://127.0.0.1:{host_port}", runner_url)
    finally:
        await session.close()
        await site.cleanup()
