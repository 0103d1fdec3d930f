"""A retried task's later runs on a runner (`--retries`): the run request carries
the attempt (version 4), the runner holds one run per task id, takes a newer
attempt in place of an earlier one's undelivered result, and its records say
which attempt each result is about. The real Supervisor, state store and fake
executor; no Host."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver import launcher, naming
from hakuriver.config import config_from_dict
from hakuriver.errors import Conflict, ValidationError
from hakuriver.models import ExitResult, TaskState
from hakuriver.runner.executors.base import Handle, LaunchSpec
from hakuriver.runner.executors.fake import FakeExecutor
from hakuriver.runner.executors.systemd import launch_request
from hakuriver.runner.state import RunnerState
from hakuriver.runner.supervisor import Notices, Supervisor
from hakuriver.runrequest import RUN_REQUEST_VERSION, RunRequest
from tests.harness.polling import apoll


def order(attempt: int = 1, **fields: Any) -> RunRequest:
    data = {"task_id": "7", "command": ["fake", "exit", "0"], "container": "env", **fields}
    if attempt != 1:
        data.update(version=4, attempt=attempt)
    return RunRequest.from_json(data)


def test_a_later_attempt_is_version_4_and_a_first_one_is_not() -> None:
    assert RUN_REQUEST_VERSION >= 4
    first = order().to_json()
    assert first["version"] == 1 and "attempt" not in first
    later = order(2).to_json()
    assert (later["version"], later["attempt"]) == (4, 2)
    assert RunRequest.from_json(later).attempt == 2


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 3, "attempt": 2}, "version 4"),
        ({"version": 4, "attempt": 0}, "between 1 and"),
        ({"version": 4, "attempt": "2"}, "between 1 and"),
        ({"version": 4, "attempt": True}, "between 1 and"),
    ],
)
def test_bad_attempts_are_refused(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RunRequest.from_json({"task_id": "7", "command": ["true"], "container": "env", **fields})


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[Supervisor, RunnerState, FakeExecutor]]:
    config = config_from_dict({"paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)}})
    state = await RunnerState.open(str(tmp_path / "state" / "runner.db"))
    fake = FakeExecutor("n")
    sup = Supervisor(config, state, {"docker": fake}, Notices(), (), frozenset())
    try:
        yield sup, state, fake
    finally:
        await sup.shutdown()
        await fake.close()
        await state.close()


async def test_a_newer_attempt_replaces_an_undelivered_result(node: Any) -> None:
    sup, state, _ = node
    assert await sup.accept(order()) == "accepted"
    await apoll(lambda: state.in_outbox(7), timeout=10, what="attempt 1's result")
    assert (state.outbox_attempt(7), sup.attempt_of(7)) == (1, 1)
    assert await sup.accept(order()) == "already_accepted"  # the same order again: nothing new

    assert await sup.accept(order(2)) == "accepted"
    await apoll(lambda: state.outbox_attempt(7) == 2, timeout=10, what="attempt 2's result")
    [result] = await state.outbox()
    assert (result.attempt, result.result.state) == (2, TaskState.COMPLETED)
    assert await sup.accept(order(1)) == "already_accepted"  # an older order: the newer result stays

    # A slow delivery of attempt 1 acknowledges late: attempt 2's result stays.
    await state.acknowledge(7, attempt=1)
    assert state.outbox_attempt(7) == 2 and len(await state.outbox()) == 1
    await state.acknowledge(7, attempt=2)
    assert state.outbox_attempt(7) is None and await state.outbox() == []


async def test_a_newer_attempt_is_refused_while_the_earlier_one_runs(node: Any) -> None:
    sup, state, _ = node
    assert await sup.accept(order(command=["fake", "hang"])) == "accepted"
    await apoll(lambda: sup.running_report() != [], timeout=10, what="attempt 1 to start")
    assert sup.running_report() == [{"task_id": "7", "state": "running"}]
    with pytest.raises(Conflict, match="still has attempt 1"):
        await sup.accept(order(2))
    await sup.kill(7)
    await apoll(lambda: state.in_outbox(7), timeout=10, what="attempt 1 to end")
    assert await sup.accept(order(2, command=["fake", "hang"])) == "accepted"
    await apoll(lambda: sup.running_report() != [], timeout=10, what="attempt 2 to start")
    assert sup.running_report() == [{"task_id": "7", "state": "running", "attempt": 2}]
    await sup.kill(7)


async def test_the_outbox_keeps_each_results_attempt_across_a_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "runner.db")
    state = await RunnerState.open(path)
    await state.save_task(Handle(task_id=8, executor="docker", ref="c8"), order(3, task_id="8").to_json())
    await state.record_result(8, ExitResult(TaskState.FAILED, 1), 1.0, attempt=3)
    await state.record_result(7, ExitResult(TaskState.COMPLETED, 0), 1.0)  # no record of the run: attempt 1
    await state.close()
    state = await RunnerState.open(path)  # read back from the stored run requests
    try:
        assert (state.outbox_attempt(7), state.outbox_attempt(8)) == (1, 3)
        assert {r.task_id: r.attempt for r in await state.outbox()} == {7: 1, 8: 3}
    finally:
        await state.close()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else "<missing>"


async def test_each_attempt_writes_its_own_output(node: Any, tmp_path: Path) -> None:
    sup, state, _ = node
    out, err = tmp_path / "task_outputs", tmp_path / "task_errors"
    assert await sup.accept(order(command=["fake", "exit", "3"])) == "accepted"
    await apoll(lambda: state.in_outbox(7), timeout=10, what="attempt 1's result")
    assert await sup.accept(order(3, command=["fake", "exit", "0"])) == "accepted"
    await apoll(lambda: state.outbox_attempt(7) == 3, timeout=10, what="attempt 3's result")
    # Attempt 1's files are as it left them; attempt 3 wrote its own (attempt 2 never ran here).
    assert (_read(out / "7.out"), _read(err / "7.err")) == ("fake task 7: fake exit 3\n", "fake task 7: stderr\n")
    assert _read(out / "7.attempt3.out") == "fake task 7: fake exit 0\n"
    assert _read(err / "7.attempt3.err") == "fake task 7: stderr\n"
    assert not (out / "7.attempt2.out").exists()


def test_a_retry_tells_the_launcher_its_attempt_and_a_first_run_does_not(tmp_path: Path) -> None:
    spec = LaunchSpec(
        task_id=7,
        command=("true",),
        env={},
        stdout_path=naming.stdout_path("/srv/shared", 7, 2),
        stderr_path=naming.stderr_path("/srv/shared", 7, 2),
        shared_dir="/srv/shared",
        local_temp_dir="/tmp",
        attempt=2,
    )
    req = launch_request(spec, user="alice", runner_name="n1", numactl=None)
    assert (req["attempt"], req["stdout"], req["stderr"]) == (
        2,
        "/srv/shared/task_outputs/7.attempt2.out",
        "/srv/shared/task_errors/7.attempt2.err",
    )
    first = dataclasses.replace(spec, attempt=1, stdout_path=naming.stdout_path("/srv/shared", 7))
    assert "attempt" not in launch_request(first, user="alice", runner_name="n1", numactl=None)
    # The launcher's own paths for the same attempts, which it checks the request's against.
    assert launcher.output_paths("/srv/shared", 7, 2) == (req["stdout"], req["stderr"])
    assert launcher.output_paths("/srv/shared", 7) == (
        naming.stdout_path("/srv/shared", 7),
        naming.stderr_path("/srv/shared", 7),
    )
