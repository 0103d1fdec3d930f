"""Batching between the Host and its runners, end to end: the real Host and
Runner apps in one loop (real SQLite files, the fake executor).

- A runner sends every report it has ready in one request
  (`POST /api/runner/reports`), a task's `running` before its result; a
  restarted runner delivers the results in its outbox together.
- The Host sends the tasks one pass placed on a node in one request (the
  runner's `POST /api/tasks/batch`), which the runner takes exactly as it
  takes each task alone: idempotent per id, persisted before it answers.
- A runner answers an order once its tasks have started (at most
  `START_REPLY_WAIT_SECONDS`): a task that started says so in the answer,
  which the Host applies as its `running` report; the runner sends no report
  of its own for it. A slower start is reported on its own.
- Against an older peer (a Host or a runner without the batch route) each
  side falls back to one request per report or task.

The spies below wrap the real methods (`Reports.apply_reports`,
`RunnerClient.run_tasks`) to see how the work arrived; they change nothing.
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any

import aiohttp
import pytest

from hakuriver.host import app as host_app
from hakuriver.host.dispatch import Dispatcher
from hakuriver.host.reports import Reports
from hakuriver.host.runner_client import RunnerClient
from hakuriver.models import RunnerReport
from hakuriver.runner import api as runner_api
from hakuriver.runner import app as runner_app
from hakuriver.runner.keys import STATE
from hakuriver.runrequest import RunRequest
from tests.harness.polling import apoll

from .cluster import DEFAULT_ENV, InProcCluster, InProcRunner
from .conftest import ClusterFactory

_SINGLE = contextvars.ContextVar("single_report", default=False)
_IN_ANSWER = contextvars.ContextVar("report_in_answer", default=False)


class ReportSpy:
    """What reached `Reports.apply_reports` through the batch route
    (`batches`: each call's (task id, state) in order), through the single
    route (`singles`), and in runners' answers to orders (`in_answers`,
    `Dispatcher._started`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.singles: list[tuple[str, str]] = []
        self.in_answers: list[tuple[str, str]] = []
        many, one, started = Reports.apply_reports, Reports.apply_report, Dispatcher._started
        spy = self

        async def apply_reports(self: Reports, node: str, reports: list[RunnerReport]) -> Any:
            seen = [(str(r.task_id), str(r.state)) for r in reports]
            if _IN_ANSWER.get():
                spy.in_answers.extend(seen)
            elif not _SINGLE.get():
                spy.batches.append(seen)
            return await many(self, node, reports)

        async def apply_report(self: Reports, node: str, task_id: int, state: Any, **fields: Any) -> Any:
            spy.singles.append((str(task_id), str(state)))
            token = _SINGLE.set(True)
            try:
                return await one(self, node, task_id, state, **fields)
            finally:
                _SINGLE.reset(token)

        async def answered(self: Dispatcher, node: str, tasks: Any) -> None:
            token = _IN_ANSWER.set(True)
            try:
                await started(self, node, tasks)
            finally:
                _IN_ANSWER.reset(token)

        monkeypatch.setattr(Reports, "apply_reports", apply_reports)
        monkeypatch.setattr(Reports, "apply_report", apply_report)
        monkeypatch.setattr(Dispatcher, "_started", answered)

    def sent(self) -> list[tuple[str, str]]:
        """Every report the runner sent in a request of its own (either route)."""
        return [*self.sequence(), *self.singles]

    def sequence(self) -> list[tuple[str, str]]:
        return [item for batch in self.batches for item in batch]


class DispatchSpy:
    """The run requests the Host sent, per request: `batches` (the batch
    route), `singles` (one task per request)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[str]] = []
        self.singles: list[str] = []
        many, one = RunnerClient.run_tasks, RunnerClient.run_task
        spy = self

        async def run_tasks(self: RunnerClient, node: Any, payloads: list[dict[str, Any]]) -> Any:
            spy.batches.append([p["task_id"] for p in payloads])
            return await many(self, node, payloads)

        async def run_task(self: RunnerClient, node: Any, payload: dict[str, Any]) -> Any:
            spy.singles.append(payload["task_id"])
            return await one(self, node, payload)

        monkeypatch.setattr(RunnerClient, "run_tasks", run_tasks)
        monkeypatch.setattr(RunnerClient, "run_task", run_task)


async def two_cores(inproc: InProcCluster, name: str) -> None:
    if (await inproc.client.node(name))["cores"] < 2:
        pytest.skip("two one-core tasks at once need a runner with 2 cores")


async def array(inproc: InProcCluster, command: list[str], spec: str) -> list[str]:
    reply = await inproc.client.submit(command, array=spec, cores=1)
    return [str(i) for i in reply["task_ids"]]


def without_route(routes: list[Any], path: str) -> list[Any]:
    """An older service's routes: these, less `path`."""
    kept = [r for r in routes if r.path != path]
    assert len(kept) == len(routes) - 1, f"no route {path}"
    return kept


def messages(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


# ------------------------------------------------------------------ reports
async def test_reports_go_in_batches_and_running_before_the_result(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every start reported on its own, as a start slower than the bound is.
    monkeypatch.setattr(runner_api, "START_REPLY_WAIT_SECONDS", 0.0)
    reports = ReportSpy(monkeypatch)
    dispatch = DispatchSpy(monkeypatch)
    await inproc.add_runner("n1")
    await two_cores(inproc, "n1")
    ids = await array(inproc, ["fake", "exit", "0"], "0-1")
    done = (await inproc.client.wait(ids, timeout=20))["tasks"]
    assert [t["state"] for t in done] == ["completed", "completed"]
    # One pass placed both: one request to the runner.
    assert dispatch.batches == [ids] and dispatch.singles == []
    assert reports.singles == []
    seen = reports.sequence()
    for task_id in ids:
        assert (task_id, "running") in seen and (task_id, "completed") in seen, seen
        assert seen.index((task_id, "running")) < seen.index((task_id, "completed"))


async def test_tasks_that_start_at_once_are_running_in_the_answer_to_their_order(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = ReportSpy(monkeypatch)
    dispatch = DispatchSpy(monkeypatch)
    await inproc.add_runner("n1")
    await two_cores(inproc, "n1")
    alone = await inproc.submit(["fake", "hang"], cores=1)
    await inproc.wait_state(alone, "running")
    await inproc.client.kill(alone)  # its core, for the pair
    await inproc.wait_state(alone, "killed")
    pair = await array(inproc, ["fake", "hang"], "0-1")
    for task_id in pair:
        await inproc.wait_state(task_id, "running")
    assert dispatch.singles == [alone] and dispatch.batches == [pair]
    # The Host heard of each start once, in the runner's answer, not in a report of its own.
    assert sorted(reports.in_answers) == sorted((i, "running") for i in [alone, *pair])
    assert not [r for r in reports.sent() if r[1] == "running"], reports.sent()
    for task_id in pair:
        await inproc.client.kill(task_id)
        await inproc.wait_state(task_id, "killed")


async def test_a_task_that_ends_before_its_answer_is_started_then_ended_on_the_host(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer to an order waits for its slowest task; a sibling that
    started and ended meanwhile is told to the Host as started, then ended, by
    the report queue: its record has its start (usage accounting and run
    times read it), and its end is not held up."""
    monkeypatch.setattr(runner_api, "START_REPLY_WAIT_SECONDS", 5.0)  # under the Host's 10 s order timeout
    runner = await inproc.add_runner("n1", hold_start=True)
    await two_cores(inproc, "n1")
    quick, slow = await array(inproc, ["fake", "exit", "0"], "0-1")
    docker = runner.docker
    await apoll(lambda: docker.waiting_to_start(quick) and docker.waiting_to_start(slow), timeout=20, what="both held")
    docker.release_start(quick)
    ended = await inproc.wait_state(quick, "completed")  # while the answer still waits for `slow`
    assert ended["started_at"] is not None and ended["started_at"] <= ended["finished_at"], ended
    assert docker.waiting_to_start(slow)
    docker.release_start(slow)
    done = await inproc.wait_state(slow, "completed")
    assert done["started_at"] is not None, done


async def test_a_start_slower_than_the_answer_is_reported_on_its_own(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner_api, "START_REPLY_WAIT_SECONDS", 0.0)  # the answer never waits
    reports = ReportSpy(monkeypatch)
    await inproc.add_runner("n1")
    task_id = await inproc.submit(["fake", "hang"], cores=1)
    await inproc.wait_state(task_id, "running")
    assert reports.in_answers == []
    assert (task_id, "running") in reports.sent()
    await inproc.client.kill(task_id)
    await inproc.wait_state(task_id, "killed")


async def test_a_restarted_runner_delivers_its_outbox_in_one_batch(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    await two_cores(inproc, "n1")
    ids = [await inproc.submit(["fake", "exit", "0"], cores=1), await inproc.submit(["fake", "exit", "4"], cores=1)]
    for task_id in ids:
        await inproc.wait_state(task_id, "running")
    await inproc.stop_host()
    for task_id in ids:
        runner.docker.release_end(task_id)
    await apoll(
        lambda: runner.app is not None and runner.app[STATE].outbox_ids() == sorted(int(i) for i in ids),
        timeout=20,
        what="both results in the runner's outbox",
    )
    await inproc.restart_runner("n1")
    assert runner.app is not None and runner.app[STATE].outbox_ids() == sorted(int(i) for i in ids)
    reports = ReportSpy(monkeypatch)
    await inproc.start_host()
    done = {t["task_id"]: t for t in (await inproc.client.wait(ids, timeout=20))["tasks"]}
    assert [(done[i]["state"], done[i]["exit_code"]) for i in ids] == [("completed", 0), ("failed", 4)]
    assert reports.singles == []
    assert any({(ids[0], "completed"), (ids[1], "failed")} <= set(batch) for batch in reports.batches), reports.batches
    await apoll(lambda: runner.app is not None and runner.app[STATE].outbox_ids() == [], timeout=20, what="acks")


async def test_an_older_host_gets_each_report_alone(
    inproc_factory: ClusterFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(host_app, "ROUTES", without_route(host_app.ROUTES, "/api/runner/reports"))
    caplog.set_level(logging.INFO, logger="hakuriver.runner.hostlink")
    inproc = await inproc_factory()
    reports = ReportSpy(monkeypatch)
    await inproc.add_runner("n1")
    ids = [await inproc.submit(["fake", "exit", "0"]), await inproc.submit(["fake", "exit", "2"])]
    done = (await inproc.client.wait(ids, timeout=20))["tasks"]
    assert [(t["state"], t["exit_code"]) for t in done] == [("completed", 0), ("failed", 2)]
    assert reports.batches == []
    assert {(ids[0], "completed"), (ids[1], "failed")} <= set(reports.singles)
    assert {(i, "running") for i in ids} <= set(reports.singles) | set(reports.in_answers)
    # Asked once, then remembered.
    assert len(messages(caplog, "no batch route for reports")) == 1


# ----------------------------------------------------------------- dispatch
async def test_an_older_runner_is_sent_each_task_alone(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runner_app, "ROUTES", without_route(runner_app.ROUTES, "/api/tasks/batch"))
    caplog.set_level(logging.INFO, logger="hakuriver.host.runner_client")
    dispatch = DispatchSpy(monkeypatch)
    await inproc.add_runner("n1")
    await two_cores(inproc, "n1")
    first = await array(inproc, ["fake", "exit", "0"], "0-1")
    assert [t["state"] for t in (await inproc.client.wait(first, timeout=20))["tasks"]] == ["completed"] * 2
    second = await array(inproc, ["fake", "exit", "0"], "0-1")
    assert [t["state"] for t in (await inproc.client.wait(second, timeout=20))["tasks"]] == ["completed"] * 2
    assert dispatch.batches == [first]  # asked once: the runner answered 404
    assert sorted(dispatch.singles) == sorted(first + second)
    assert len(messages(caplog, "has no batch route")) == 1


async def post(runner: InProcRunner, body: Any, *, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {runner.order_token if token is None else token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(runner.url + "/api/tasks/batch", json=body) as resp:
            return resp.status, await resp.json()


def order(task_id: int, **fields: Any) -> dict[str, Any]:
    return {**RunRequest(task_id=task_id, command=("fake", "hang"), container=DEFAULT_ENV, cores=1).to_json(), **fields}


async def test_the_runner_takes_a_batch_as_it_takes_each_task(inproc: InProcCluster) -> None:
    # Held before start: accepted and persisted, never started, so never reported.
    runner = await inproc.add_runner("n1", hold_start=True)
    assert runner.app is not None
    batch = [
        order(990001),
        order(990001),
        order(990002, gpus=[7]),
        order(990003, version=99),
        order(990004, colour="blue"),
    ]
    status, body = await post(runner, {"tasks": batch})
    assert status == 200, body
    # Persisted before the answer: the state store has it now.
    assert [t.task_id for t in await runner.app[STATE].active()] == [990001]
    accepted, again, no_gpu, too_new, unknown = body["results"]
    assert accepted == {"task_id": "990001", "status": "accepted"}
    assert again == {"task_id": "990001", "status": "already_accepted"}
    for refused in (no_gpu, too_new, unknown):
        assert (refused["status"], refused["http_status"], refused["error"]["code"]) == ("refused", 400, "invalid")
    assert "no GPU 7" in no_gpu["error"]["message"]
    assert "newer than this runner understands" in too_new["error"]["message"]
    assert "unknown field 'colour'" in unknown["error"]["message"]
    # The single route says the same about the same order.
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {runner.order_token}"}) as session:
        async with session.post(runner.url + "/api/tasks", json=order(990002, gpus=[7])) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["message"] == no_gpu["error"]["message"]

    # The Host did not hear the answer and sends the same batch again: nothing new.
    status, body = await post(runner, {"tasks": batch})
    assert status == 200, body
    assert [r["status"] for r in body["results"]] == ["already_accepted", "already_accepted"] + ["refused"] * 3
    assert [t.task_id for t in await runner.app[STATE].active()] == [990001]
    assert runner.docker.waiting_to_start(990001)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"tasks": []}, "1 to 500"),
        ({"tasks": [order(990001)] * 501}, "not 501"),
        ({"tasks": "all of them"}, "'tasks'"),
        ({"tasks": [1]}, "tasks[0]: a run request is a JSON object"),
        ({"tasks": [order(990001), {"task_id": "x"}]}, "tasks[1]: invalid task id"),
        ({"tasks": [order(990001)], "more": True}, "unknown field(s): more"),
    ],
)
async def test_a_malformed_batch_is_refused_whole(inproc: InProcCluster, body: dict[str, Any], words: str) -> None:
    runner = await inproc.add_runner("n1", hold_start=True)
    assert runner.app is not None
    status, reply = await post(runner, body)
    assert status == 400, reply
    assert words in reply["error"]["message"]
    assert await runner.app[STATE].active() == []


async def test_a_batch_needs_the_order_token(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_start=True)
    assert runner.app is not None
    status, reply = await post(runner, {"tasks": [order(990001)]}, token=inproc.token)
    assert status == 401, reply
    assert await runner.app[STATE].active() == []
