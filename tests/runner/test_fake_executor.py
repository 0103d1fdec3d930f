"""The fake backend: scripted outcomes, real files, pause/resume/stop."""

from __future__ import annotations

import asyncio

import pytest

from hakuriver.errors import ExecutorError
from hakuriver.models import TaskState
from hakuriver.runner.executors.base import Handle, LaunchSpec, Presence
from hakuriver.runner.executors.fake import FakeExecutor, parse_script, signal_exit_code

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def ex():
    executor = FakeExecutor("node-a")
    yield executor
    await executor.close()


@pytest.fixture
def spec(tmp_path):
    counter = iter(range(1, 10**6))

    def make(*command: str) -> LaunchSpec:
        tid = next(counter)
        return LaunchSpec(
            task_id=tid,
            command=tuple(command),
            env={},
            stdout_path=str(tmp_path / "out" / f"{tid}.out"),
            stderr_path=str(tmp_path / "err" / f"{tid}.err"),
            shared_dir=str(tmp_path),
            local_temp_dir=str(tmp_path / "lt"),
        )

    return make


@pytest.mark.parametrize(
    ("command", "state", "code"),
    [
        (("echo", "hi"), TaskState.COMPLETED, 0),
        (("fake", "exit", "0"), TaskState.COMPLETED, 0),
        (("fake", "exit", "3"), TaskState.FAILED, 3),
        (("fake", "oom"), TaskState.KILLED_OOM, 137),
        (("fake", "sleep", "0.05"), TaskState.COMPLETED, 0),
    ],
)
async def test_scripted_outcomes(ex, spec, command, state, code):
    s = spec(*command)
    handle = await ex.start(s)
    assert handle.executor == "fake"
    result = await asyncio.wait_for(ex.wait(handle), 5)
    assert (result.state, result.exit_code) == (state, code)
    with open(s.stdout_path) as fh:
        assert fh.read().startswith(f"fake task {s.task_id}: ")
    with open(s.stderr_path) as fh:
        assert fh.read() == f"fake task {s.task_id}: stderr\n"
    await ex.destroy(handle)
    await ex.destroy(handle)


async def test_fail_start(ex, spec):
    with pytest.raises(ExecutorError, match="scripted start failure"):
        await ex.start(spec("fake", "fail-start"))


async def test_hang_pause_resume_stop(ex, spec):
    handle = await ex.start(spec("fake", "hang"))
    waiter = asyncio.ensure_future(ex.wait(handle))
    await ex.pause(handle)
    assert await ex.recover(handle) is Presence.PAUSED
    await ex.resume(handle)
    assert await ex.recover(handle) is Presence.RUNNING
    assert not waiter.done()
    await ex.stop(handle)
    result = await asyncio.wait_for(waiter, 5)
    assert (result.state, result.exit_code) == (TaskState.FAILED, 137)
    assert await ex.recover(handle) is Presence.EXITED
    with pytest.raises(ExecutorError):
        await ex.pause(handle)
    await ex.stop(handle)  # ended: no error


async def test_stop_a_paused_task_with_sigterm(ex, spec):
    handle = await ex.start(spec("fake", "hang"))
    await ex.pause(handle)
    await ex.stop(handle, "SIGTERM")
    assert (await asyncio.wait_for(ex.wait(handle), 5)).exit_code == 143


async def test_paused_time_does_not_count(ex, spec):
    handle = await ex.start(spec("fake", "sleep", "0.2"))
    await ex.pause(handle)
    waiter = asyncio.ensure_future(ex.wait(handle))
    done, _ = await asyncio.wait({waiter}, timeout=0.4)
    assert not done  # frozen while paused
    await ex.resume(handle)
    assert (await asyncio.wait_for(waiter, 5)).state is TaskState.COMPLETED


async def test_recover_unknown(ex, spec):
    a = await ex.start(spec("fake", "hang"))
    other = FakeExecutor("node-a")
    assert await other.recover(a) is Presence.MISSING
    assert (await other.wait(a)).state is TaskState.LOST
    await other.close()


async def test_close_ends_waiters_with_an_error(spec):
    ex = FakeExecutor()
    handle = await ex.start(spec("fake", "hang"))
    waiter = asyncio.ensure_future(ex.wait(handle))
    await asyncio.sleep(0)
    await ex.close()
    with pytest.raises(ExecutorError):
        await asyncio.wait_for(waiter, 5)


async def test_cancelled_wait_does_not_end_the_task(ex, spec):
    handle = await ex.start(spec("fake", "hang"))
    waiter = asyncio.ensure_future(ex.wait(handle))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert await ex.recover(handle) is Presence.RUNNING


def test_parse_and_signals():
    assert parse_script(["fake", "hang"]).duration is None
    assert parse_script(["fake", "sleep", "1.5"]).duration == 1.5
    assert parse_script(["ls"]).result.state is TaskState.COMPLETED
    with pytest.raises(ExecutorError):
        parse_script(["fake", "exit", "x"])
    assert signal_exit_code("SIGKILL") == 137
    assert signal_exit_code("TERM") == 143
    assert signal_exit_code(2) == 130
    with pytest.raises(ExecutorError):
        signal_exit_code("SIGNOPE")


def test_handle_round_trips():
    h = Handle(task_id=2**62 + 5, executor="fake", ref="fake-1", data={"stdout": "/x"})
    assert Handle.from_json(h.to_json()) == h
