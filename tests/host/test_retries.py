"""Retries (`--retries`, `--retry-on-exit`) against a scripted runner: a real Host
app on loopback with a real SQLite file, and a fake runner HTTP server whose
reports the test sends by hand, so each ending, each late report and each
heartbeat arrives exactly when the test says.

The policy itself (which endings are retried) is pure and tested at the bottom.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver.errors import ValidationError
from hakuriver.host.retries import MAX_RETRIES, RetryFences, check_retries, parse_retries, retryable
from hakuriver.models import REQUEUE_FROM, TRANSITIONS, TaskState
from tests.harness.polling import apoll

from .test_host_states import FakeRunner, HostUnderTest, scripted_host

Host = tuple[HostUnderTest, FakeRunner]


@pytest.fixture
async def host(tmp_path: Path) -> AsyncIterator[Host]:
    """The Host with a slow liveness sweep (nodes stay online without heartbeats:
    the test sends each heartbeat itself)."""
    async with scripted_host(
        tmp_path, {"heartbeat_interval": 1.0, "heartbeat_timeout_factor": 60, "cleanup_check_interval": 0.1}
    ) as pair:
        yield pair


async def task(h: HostUnderTest, task_id: str) -> dict[str, Any]:
    status, body = await h.call("GET", f"/api/tasks/{task_id}")
    assert status == 200, body
    return body


async def runs(fake: FakeRunner, n: int) -> dict[str, Any]:
    """The n-th run order the runner got (1-based), once it came."""
    await apoll(lambda: len(fake.runs) >= n, timeout=10, what=f"run order {n}")
    return fake.runs[n - 1]


async def attempt_placed(h: HostUnderTest, task_id: str, attempt: int) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        t = await task(h, task_id)
        return t if t["state"] == "assigning" and t["attempt"] == attempt else None

    return await apoll(check, timeout=10, what=f"attempt {attempt} of task {task_id} to be placed")


async def heartbeat(h: HostUnderTest, node: str, tasks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status, body = await h.call("POST", "/api/runner/heartbeat", {"hostname": node, "stats": {}, "tasks": tasks or []})
    assert status == 200, body
    return body


async def test_a_non_zero_exit_is_not_retried_without_retry_on_exit(host: Host) -> None:
    h, fake = host
    await h.register()
    task_id = await h.submit(retries=2)
    assert "attempt" not in await runs(fake, 1)  # a first run is an order any runner reads
    assert (await h.report(task_id, "running"))[0] == 200
    status, body = await h.report(task_id, "failed", exit_code=3, error="exited with code 3")
    assert (status, body["state"]) == (200, "failed")
    t = await task(h, task_id)
    assert (t["state"], t["exit_code"], t["attempt"], t["retries"], t["attempts"]) == ("failed", 3, 1, 2, [])


async def test_retry_on_exit_retries_up_to_n_then_fails_listing_every_attempt(host: Host) -> None:
    h, fake = host
    await h.register()
    task_id = await h.submit(retries=2, retry_on_exit=True)
    for attempt in (1, 2, 3):
        order = await runs(fake, attempt)
        if attempt > 1:
            assert (order["attempt"], order["version"]) == (attempt, 4)
        extra = {"attempt": attempt} if attempt > 1 else {}
        assert (await h.report(task_id, "running", **extra))[0] == 200
        status, body = await h.report(task_id, "failed", exit_code=3, error="exited with code 3", **extra)
        assert status == 200
        assert body["state"] == ("pending" if attempt < 3 else "failed")
        # The node may still hold the ended run until its next heartbeat says it does not.
        await heartbeat(h, "n1")
    t = await task(h, task_id)
    assert (t["state"], t["exit_code"], t["attempt"], t["node"]) == ("failed", 3, 3, "n1")
    assert [(a["attempt"], a["state"], a["exit_code"], a["node"]) for a in t["attempts"]] == [
        (1, "failed", 3, "n1"),
        (2, "failed", 3, "n1"),
    ]
    assert all(a["started_at"] <= a["finished_at"] for a in t["attempts"])
    assert len(fake.runs) == 3


async def test_a_node_side_failure_is_retried_on_another_node_and_old_reports_are_refused(host: Host) -> None:
    h, fake = host
    await h.register("n1")
    await h.register("n2")
    task_id = await h.submit(retries=1)
    await runs(fake, 1)
    first = (await task(h, task_id))["node"]
    other = "n2" if first == "n1" else "n1"
    # No exit code: the command never ran (the runner could not start it).
    status, body = await h.report(task_id, "failed", node=first, error="image inproc-env is missing")
    assert (status, body["state"]) == (200, "pending")
    t = await task(h, task_id)
    assert (t["state"], t["attempt"], t["node"], t["error"], t["exit_code"]) == ("pending", 2, None, None, None)
    [earlier] = t["attempts"]
    assert (earlier["attempt"], earlier["state"], earlier["node"], earlier["exit_code"]) == (1, "failed", first, None)
    assert earlier["error"] == "image inproc-env is missing"

    await heartbeat(h, first)  # it holds nothing of the task any more
    t = await attempt_placed(h, task_id, 2)
    assert t["node"] == other  # the previous attempt's node is chosen last
    assert (await runs(fake, 2))["attempt"] == 2

    # The first node's late report, and a report of attempt 1 from the right node: both refused.
    status, _ = await h.report(task_id, "completed", node=first, exit_code=0)
    assert status == 409
    status, body = await h.report(task_id, "completed", node=other, exit_code=0)
    assert status == 409 and "attempt 2" in body["error"]["message"]
    assert (await task(h, task_id))["state"] == "assigning"

    assert (await h.report(task_id, "running", node=other, attempt=2))[0] == 200
    status, body = await h.report(task_id, "completed", node=other, exit_code=0, attempt=2)
    assert (status, body["state"]) == (200, "completed")
    t = await task(h, task_id)
    assert (t["state"], t["node"], t["attempt"], len(t["attempts"])) == ("completed", other, 2, 1)


async def test_a_late_report_of_the_earlier_attempt_on_the_same_node_is_ignored(host: Host) -> None:
    h, fake = host
    await h.register("n1")
    task_id = await h.submit(retries=1)
    await runs(fake, 1)
    await h.report(task_id, "running")
    status, body = await h.report(task_id, "failed", error="runner error: the executor broke")
    assert body["state"] == "pending"
    # A heartbeat that still lists the first run gets a kill order for it, and
    # keeps the task away from this node meanwhile.
    assert (await heartbeat(h, "n1", [{"task_id": task_id, "state": "running"}]))["kill"] == [task_id]
    assert (await task(h, task_id))["state"] == "pending"
    await heartbeat(h, "n1")
    await attempt_placed(h, task_id, 2)
    assert (await runs(fake, 2))["attempt"] == 2

    # Attempt 1's runner delivers how it ended, late: refused, attempt 2 untouched.
    status, body = await h.report(task_id, "completed", exit_code=0)
    assert status == 409
    status, body = await h.report(task_id, "failed", exit_code=1)
    assert status == 409
    assert (await heartbeat(h, "n1", [{"task_id": task_id, "state": "running"}]))["kill"] == [task_id]
    t = await task(h, task_id)
    assert (t["state"], t["attempt"]) == ("assigning", 2)

    assert (await heartbeat(h, "n1", [{"task_id": task_id, "state": "running", "attempt": 2}]))["kill"] == []
    assert (await task(h, task_id))["state"] == "running"
    status, body = await h.report(task_id, "completed", exit_code=0, attempt=2)
    assert body["state"] == "completed"


async def test_a_dependent_waits_through_a_retry_and_runs_after_success(host: Host) -> None:
    h, fake = host
    await h.register()
    first = await h.submit(retries=1)
    second = await h.submit(after=[first])
    await runs(fake, 1)
    await h.report(first, "failed", error="dispatch to n1 failed: connection reset")
    t = await task(h, second)
    assert (t["state"], t["waiting_for"]) == ("pending", [first])
    await heartbeat(h, "n1")
    await attempt_placed(h, first, 2)
    await h.report(first, "completed", exit_code=0, attempt=2)
    await h.wait_state(second, "assigning")


async def test_a_dependent_is_cancelled_only_after_the_last_attempt_fails(host: Host) -> None:
    h, fake = host
    await h.register()
    first = await h.submit(retries=1)
    second = await h.submit(after=[first])
    await runs(fake, 1)
    await h.report(first, "lost", error="the task's container disappeared")
    assert (await task(h, second))["state"] == "pending"
    await heartbeat(h, "n1")
    await attempt_placed(h, first, 2)
    status, body = await h.report(first, "lost", error="the task's container disappeared", attempt=2)
    assert body["state"] == "lost"
    t = await task(h, second)
    assert (t["state"], t["error"]) == ("cancelled", f"dependency {first} ended lost")


async def test_killed_and_timeout_are_never_retried(host: Host) -> None:
    h, fake = host
    await h.register()
    timed = await h.submit(retries=3, retry_on_exit=True)
    await runs(fake, 1)
    status, body = await h.report(timed, "timeout", exit_code=143, error="time limit 1s reached")
    assert body["state"] == "timeout"
    killed = await h.submit(retries=3, retry_on_exit=True)
    await runs(fake, 2)
    status, body = await h.call("POST", f"/api/tasks/{killed}/kill")
    assert body["state"] == "killed"
    for task_id in (timed, killed):
        assert (await task(h, task_id))["attempts"] == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"retries": -1}, f"'retries' must be a whole number from 0 to {MAX_RETRIES}"),
        ({"retries": MAX_RETRIES + 1}, f"'retries' must be a whole number from 0 to {MAX_RETRIES}"),
        ({"retries": "2"}, f"'retries' must be a whole number from 0 to {MAX_RETRIES}"),
        ({"retries": True}, f"'retries' must be a whole number from 0 to {MAX_RETRIES}"),
        ({"retry_on_exit": True}, "'retry_on_exit' needs 'retries' of at least 1"),
        ({"retries": 1, "retry_on_exit": "yes"}, "field 'retry_on_exit' has the wrong type"),
    ],
)
async def test_bad_retry_fields_are_refused(host: Host, fields: dict[str, Any], message: str) -> None:
    h, _ = host
    await h.register()
    status, body = await h.call("POST", "/api/tasks", {"command": ["true"], **fields})
    assert status == 400 and body["error"]["message"].startswith(message), body


async def test_a_bad_attempt_in_a_report_is_refused(host: Host) -> None:
    h, fake = host
    await h.register()
    task_id = await h.submit()
    await runs(fake, 1)
    for bad in (0, "2", True, 10**6):
        status, body = await h.report(task_id, "running", attempt=bad)
        assert status == 400, body
    status, body = await h.call(
        "POST",
        "/api/runner/heartbeat",
        {"hostname": "n1", "stats": {}, "tasks": [{"task_id": task_id, "state": "running", "attempt": -1}]},
    )
    assert status == 400, body


# ------------------------------------------------------------------- the policy (pure)
@pytest.mark.parametrize(
    ("state", "exit_code", "on_exit", "retried"),
    [
        (TaskState.LOST, None, False, True),
        (TaskState.FAILED, None, False, True),
        (TaskState.FAILED, 1, False, False),
        (TaskState.FAILED, 1, True, True),
        (TaskState.KILLED, None, True, False),
        (TaskState.KILLED_OOM, 137, True, False),
        (TaskState.TIMEOUT, 143, True, False),
        (TaskState.CANCELLED, None, True, False),
        (TaskState.COMPLETED, 0, True, False),
    ],
)
def test_which_endings_are_retried(state: TaskState, exit_code: int | None, on_exit: bool, retried: bool) -> None:
    assert retryable(state, exit_code, retry_on_exit=on_exit) is retried


def test_the_way_back_to_pending_is_not_a_runner_transition() -> None:
    # No report and no default transition may enter pending: only the guarded requeue.
    assert all(TaskState.PENDING not in nxt for nxt in TRANSITIONS.values())
    assert REQUEUE_FROM == {TaskState.ASSIGNING, TaskState.RUNNING, TaskState.PAUSED, TaskState.LOST}


def test_retry_counts_are_checked() -> None:
    assert check_retries(0) == 0 and check_retries(MAX_RETRIES) == MAX_RETRIES
    assert parse_retries(" 3 ") == 3
    for bad in ("-1", "x", "1.5", str(MAX_RETRIES + 1)):
        with pytest.raises(ValidationError, match="--retries must be"):
            parse_retries(bad)


def test_fences_lift_when_the_node_no_longer_holds_the_task() -> None:
    fences = RetryFences()
    fences.add(1, "a")
    fences.add(1, "b")
    fences.add(2, "a")
    fences.add(3, None)  # a run that never had a node fences nothing
    assert fences.heard_from("a", [1]) is True  # 2 is let go of; 1 is still held
    assert (fences.fenced(1), 2 in fences, 3 in fences) == ({"a", "b"}, False, False)
    assert fences.heard_from("b", []) is True
    assert fences.heard_from("a", []) is True
    assert len(fences) == 0 and fences.heard_from("a", []) is False


# ------------------------------------------------------------------- the database
async def test_requeue_is_guarded_and_records_the_attempt(tmp_path: Path) -> None:
    from hakuriver.host.db import Database

    from .test_db import make_task

    db = await Database.open(tmp_path / "host.db")
    try:
        await db.insert_tasks(
            [
                make_task(1, TaskState.RUNNING, node="a", started_at=10.0, retries=1),
                make_task(2, TaskState.RUNNING, node="a", started_at=10.0),
                make_task(3, TaskState.KILLED, node="a", retries=1),
            ]
        )
        assert await db.requeue(1, 2, TaskState.LOST, now=20.0) is None  # not that attempt
        assert await db.requeue(2, 1, TaskState.LOST, now=20.0) is None  # no retry left
        assert await db.requeue(3, 1, TaskState.FAILED, now=20.0) is None  # final: nothing moves it
        assert await db.attempts_of([1, 2, 3]) == {}
        task = await db.requeue(1, 1, TaskState.FAILED, now=20.0, error="could not start")
        assert task is not None
        assert (task.state, task.attempt, task.node, task.started_at, task.error) == (
            TaskState.PENDING, 2, None, None, None,
        )  # fmt: skip
        [earlier] = (await db.attempts_of([1]))[1]
        assert (earlier.attempt, earlier.node, earlier.started_at, earlier.finished_at, earlier.state) == (
            1, "a", 10.0, 20.0, TaskState.FAILED,
        )  # fmt: skip
        assert await db.requeue(1, 1, TaskState.FAILED, now=21.0) is None  # a repeated report: once only
        assert await db.previous_attempt_nodes() == {1: "a"}  # fenced again after a Host restart
        # The task's attempt guard keeps an earlier run's end off the new one.
        assert await db.transition(1, TaskState.FAILED, now=22.0, attempt=1) is None
        assert (await db.get_task(1)).state is TaskState.PENDING  # type: ignore[union-attr]
        # Purging a final task takes its attempts with it.
        assert await db.transition(1, TaskState.KILLED, now=23.0, attempt=2) is not None
        assert await db.purge_final_tasks(100.0) == {1: 2}  # its last attempt; (3 has no end time: never purged)
        assert await db.attempts_of([1]) == {}
    finally:
        await db.close()


def test_the_scheduler_chooses_the_previous_attempts_node_last() -> None:
    from hakuriver.host.scheduler import Ledger, Scheduler
    from hakuriver.models import NodeResources

    from .test_db import make_task

    def nodes(b_cores: int) -> list[NodeResources]:
        return [NodeResources("a", "http://a:8001", 4, 8 << 30), NodeResources("b", "http://b:8001", b_cores, 8 << 30)]

    task = make_task(1, cores=2)
    assert [p.node for p in Scheduler().schedule([task], nodes(4), Ledger())] == ["a"]  # by name, all else equal
    assert [p.node for p in Scheduler().schedule([task], nodes(4), Ledger(), avoid={1: "a"})] == ["b"]
    # ... and still there when it is the only node where the task fits.
    assert [p.node for p in Scheduler().schedule([task], nodes(1), Ledger(), avoid={1: "a"})] == ["a"]
