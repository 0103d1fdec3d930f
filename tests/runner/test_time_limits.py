"""The Supervisor enforces time limits (`RunRequest.time_limit`): no Docker needed.

A real Supervisor with a real state store and the fake backend, whose `stop`
records every signal: at the limit the task gets SIGTERM, then SIGKILL after
`runner.timeout_grace` if it has not ended, and its result is `timeout`. The
deadline counts from the persisted start, so a restarted runner keeps it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver.config import Config, config_from_dict
from hakuriver.models import ExitResult, TaskState
from hakuriver.runner.executors.base import Capabilities, Handle, LaunchSpec
from hakuriver.runner.executors.fake import FakeExecutor
from hakuriver.runner.state import OutboxEntry, RunnerState
from hakuriver.runner.supervisor import Notices, Supervisor
from hakuriver.runrequest import RunRequest
from tests.harness.polling import apoll

GRACE = 0.3


def make_config(tmp_path: Path, grace: float = GRACE) -> Config:
    (tmp_path / "shared").mkdir(exist_ok=True)
    return config_from_dict(
        {
            "paths": {"shared_dir": str(tmp_path / "shared"), "local_temp_dir": str(tmp_path)},
            "runner": {"timeout_grace": grace},
        }
    )


@pytest.fixture
async def state(tmp_path: Path) -> AsyncIterator[RunnerState]:
    store = await RunnerState.open(str(tmp_path / "state" / "runner.db"))
    try:
        yield store
    finally:
        await store.close()


def supervisor(tmp_path: Path, state: RunnerState, executor: FakeExecutor, grace: float = GRACE) -> Supervisor:
    return Supervisor(make_config(tmp_path, grace), state, {"docker": executor}, Notices(), (), frozenset())


def order(task_id: int, *command: str, time_limit: int | None = 1) -> RunRequest:
    return RunRequest(task_id=task_id, command=("fake", *command), container="env", time_limit=time_limit)


async def result_of(state: RunnerState, task_id: int, timeout: float = 15) -> OutboxEntry:
    async def check() -> OutboxEntry | None:
        return next((e for e in await state.outbox() if e.task_id == task_id), None)

    return await apoll(check, timeout=timeout, interval=0.05, what=f"a result for task {task_id}")


async def started(sup: Supervisor, task_id: int) -> None:
    await apoll(lambda: (e := sup.tasks.get(task_id)) is not None and e.started, timeout=10, interval=0.02)


async def test_the_limit_sends_sigterm_and_the_task_ends_timeout(tmp_path: Path, state: RunnerState) -> None:
    fake = FakeExecutor()
    sup = supervisor(tmp_path, state, fake)
    before = time.time()
    await sup.accept(order(1, "hang"))
    entry = await result_of(state, 1)
    assert time.time() - before >= 1.0  # not before its limit
    assert fake.signals == [(1, "SIGTERM")]  # it ended on SIGTERM: no SIGKILL needed
    assert entry.result == ExitResult(TaskState.TIMEOUT, 143, "time limit 1s reached")


async def test_sigkill_follows_after_the_grace_period(tmp_path: Path, state: RunnerState) -> None:
    fake = FakeExecutor()
    sup = supervisor(tmp_path, state, fake)
    await sup.accept(order(2, "stubborn"))
    await apoll(lambda: fake.signals, timeout=10, interval=0.02, what="SIGTERM")
    sigterm_at = time.monotonic()
    entry = await result_of(state, 2)
    assert time.monotonic() - sigterm_at >= GRACE * 0.9
    assert fake.signals == [(2, "SIGTERM"), (2, "SIGKILL")]
    assert entry.result.state is TaskState.TIMEOUT and entry.result.exit_code == 137
    assert entry.result.error == f"time limit 1s reached; killed {GRACE:g}s after SIGTERM"


async def test_paused_time_counts_and_a_paused_task_is_thawed_first(tmp_path: Path, state: RunnerState) -> None:
    fake = FakeExecutor()
    sup = supervisor(tmp_path, state, fake)
    await sup.accept(order(3, "hang"))
    await started(sup, 3)
    await sup.pause(3)
    entry = await result_of(state, 3)
    assert entry.result.state is TaskState.TIMEOUT
    assert fake.signals == [(3, "SIGTERM")]


async def test_no_limit_no_signal_and_a_kill_stays_a_kill(tmp_path: Path, state: RunnerState) -> None:
    fake = FakeExecutor()
    sup = supervisor(tmp_path, state, fake)
    await sup.accept(order(4, "sleep", "1.2", time_limit=None))
    assert (await result_of(state, 4)).result.state is TaskState.COMPLETED
    await sup.accept(order(5, "hang", time_limit=60))
    await started(sup, 5)
    await sup.kill(5)
    entry = await result_of(state, 5)
    assert (entry.result.state, entry.result.error) == (TaskState.KILLED, "killed by request")
    assert fake.signals == [(5, "SIGKILL")]


async def test_a_task_that_ends_in_time_is_untouched(tmp_path: Path, state: RunnerState) -> None:
    fake = FakeExecutor()
    sup = supervisor(tmp_path, state, fake)
    await sup.accept(order(6, "exit", "3", time_limit=5))
    entry = await result_of(state, 6)
    assert entry.result == ExitResult(TaskState.FAILED, 3, "exited with code 3")
    assert fake.signals == [] and not sup.tasks


async def test_a_restarted_runner_keeps_the_deadline_from_the_persisted_start(
    tmp_path: Path, state: RunnerState
) -> None:
    fake = FakeExecutor()  # its tasks outlive the first Supervisor, as containers outlive a runner
    first = supervisor(tmp_path, state, fake)
    await first.accept(order(7, "hang", time_limit=2))
    await started(first, 7)
    deadline = first.deadline_of(7)
    assert deadline is not None
    [active] = await state.active()
    assert active.handle.started_at is not None and active.handle.started_at + 2 == deadline  # persisted
    await first.shutdown()
    assert fake.signals == []

    second = supervisor(tmp_path, state, fake)
    await second.recover()
    assert second.deadline_of(7) == deadline  # the restart does not reset the clock
    entry = await result_of(state, 7)
    assert entry.result.state is TaskState.TIMEOUT and fake.signals == [(7, "SIGTERM")]


async def test_a_deadline_passed_while_the_runner_was_down_strikes_at_adoption(
    tmp_path: Path, state: RunnerState
) -> None:
    fake = FakeExecutor()
    first = supervisor(tmp_path, state, fake)
    await first.accept(order(8, "hang", time_limit=60))
    await started(first, 8)
    await first.shutdown()
    # As if the runner had been down for two minutes.
    [active] = await state.active()
    await state.save_task(dataclasses.replace(active.handle, started_at=time.time() - 120), active.task)

    second = supervisor(tmp_path, state, fake)
    await second.recover()
    entry = await result_of(state, 8, timeout=5)
    assert (entry.result.state, entry.result.error) == (TaskState.TIMEOUT, "time limit 1m reached")


class NativeLimits(FakeExecutor):
    """A backend that enforces limits itself, as systemd's RuntimeMaxSec does."""

    capabilities = Capabilities(pause=True, time_limit=True)

    def __init__(self) -> None:
        super().__init__()
        self.limits: dict[int, Any] = {}

    async def start(self, spec: LaunchSpec) -> Handle:
        self.limits[spec.task_id] = (spec.time_limit, spec.timeout_grace)
        return await super().start(spec)

    async def wait(self, handle: Handle) -> ExitResult:
        await super().wait(handle)
        return ExitResult(TaskState.TIMEOUT, 143, "the unit's time limit (RuntimeMaxSec) was reached")


async def test_a_backend_that_enforces_limits_is_left_to_it(tmp_path: Path, state: RunnerState) -> None:
    native = NativeLimits()
    sup = supervisor(tmp_path, state, native)
    await sup.accept(order(9, "sleep", "0.1", time_limit=3600))
    entry = await result_of(state, 9)
    assert native.limits[9] == (3600, GRACE)  # handed to the backend
    assert native.signals == []  # the supervisor sent nothing
    assert (entry.result.state, entry.result.error) == (TaskState.TIMEOUT, "time limit 1h reached")
    # A backend's "timeout" without a limit asked for is a failure, not a limit.
    await sup.accept(order(10, "sleep", "0.1", time_limit=None))
    assert (await result_of(state, 10)).result.state is TaskState.FAILED
