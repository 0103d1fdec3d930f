"""The fake backend: a real executor whose outcomes the command scripts.

For host<->runner tests, benchmarks and demos without Docker or systemd.
Tasks live in this process (as asyncio tasks), so they end with it and
`recover()` of a task from another process says MISSING.

Scripts (the argv):

    fake exit N        exits with code N at once (0: completed, else failed)
    fake oom           killed by the "OOM killer": KILLED_OOM, exit code 137
    fake hang          runs until stopped
    fake stubborn      runs until SIGKILL (ignores every other signal, like a
                       program that traps SIGTERM and carries on)
    fake sleep SECS    runs SECS seconds (paused time does not count), then exits 0
    fake fail-start    start() raises ExecutorError
    anything else      exits 0 at once

Every task writes one line to its stdout file and one to its stderr file when
it starts; an array task writes a second stdout line with its
`HAKURIVER_ARRAY_INDEX=... HAKURIVER_BATCH_ID=...`. `stop(signal)` ends a task as a signal would (exit code 128+N, so
137 for SIGKILL), paused or not; the supervisor, which asked for the kill,
maps that to KILLED.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal as _signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ... import safefiles
from ...errors import ExecutorError
from ...models import ExitResult, TaskState
from .base import Capabilities, Executor, Fingerprint, Handle, LaunchSpec, Presence

if TYPE_CHECKING:
    from ...config import Config

SCRIPT_WORD = "fake"


@dataclass(frozen=True)
class Script:
    duration: float | None
    """Seconds of running time before the natural end; None: until stopped."""
    result: ExitResult
    fail_start: bool = False
    stubborn: bool = False
    """Only SIGKILL ends it."""


def parse_script(command: tuple[str, ...] | list[str]) -> Script:
    """What a command does on the fake backend. Pure."""
    argv = list(command)
    done = ExitResult(TaskState.COMPLETED, 0)
    if len(argv) < 2 or argv[0] != SCRIPT_WORD:
        return Script(0.0, done)
    verb, args = argv[1], argv[2:]
    if verb == "exit":
        try:
            code = int(args[0]) if args else 0
        except ValueError:
            raise ExecutorError(f"fake exit needs an integer code, not {args[0]!r}") from None
        if code == 0:
            return Script(0.0, done)
        return Script(0.0, ExitResult(TaskState.FAILED, code, f"exited with code {code}"))
    if verb == "oom":
        return Script(0.0, ExitResult(TaskState.KILLED_OOM, 137, "killed by the out-of-memory killer (exit code 137)"))
    if verb == "hang":
        return Script(None, done)
    if verb == "stubborn":
        return Script(None, done, stubborn=True)
    if verb == "sleep":
        try:
            seconds = float(args[0]) if args else 0.0
        except ValueError:
            raise ExecutorError(f"fake sleep needs a number of seconds, not {args[0]!r}") from None
        return Script(max(0.0, seconds), done)
    if verb == "fail-start":
        return Script(0.0, done, fail_start=True)
    return Script(0.0, done)


def signal_exit_code(signal: str | int) -> int:
    """128 + the signal's number, as a shell or Docker reports a signalled process."""
    if isinstance(signal, int) or str(signal).isdigit():
        return 128 + int(signal)
    name = str(signal).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return 128 + int(_signal.Signals[name])
    except KeyError:
        raise ExecutorError(f"unknown signal {signal!r}") from None


@dataclass(eq=False)
class _FakeTask:
    task_id: int
    script: Script
    paused: bool = False
    signalled: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task | None = None
    result: ExitResult | None = None
    done: asyncio.Future | None = None

    def finish(self, result: ExitResult | None = None, error: Exception | None = None) -> None:
        if self.done is None or self.done.done():
            return
        if error is not None:
            self.done.set_exception(error)
        else:
            self.result = result
            self.done.set_result(result)


class FakeExecutor(Executor):
    name = "fake"
    capabilities = Capabilities(pause=True)

    def __init__(self, runner_name: str = "", **_: object):
        self.runner_name = runner_name
        self._tasks: dict[str, _FakeTask] = {}
        self.signals: list[tuple[int, str]] = []
        """Every (task id, signal) `stop` delivered, in order: what tests check."""

    @classmethod
    def from_config(cls, config: Config) -> FakeExecutor:
        return cls(config.runner_name)

    async def fingerprint(self) -> Fingerprint:
        return Fingerprint(version="fake", summary="fake tasks run inside the runner's process")

    @staticmethod
    def _ref(task_id: int) -> str:
        return f"fake-{task_id}"

    async def start(self, spec: LaunchSpec) -> Handle:
        script = parse_script(spec.command)
        if script.fail_start:
            raise ExecutorError(f"task {spec.task_id} could not start: scripted start failure (fake fail-start)")
        ref = self._ref(spec.task_id)
        if ref in self._tasks:
            raise ExecutorError(f"task {spec.task_id} is already running on this node")
        await asyncio.to_thread(_write_banner, spec)
        task = _FakeTask(spec.task_id, script)
        task.done = asyncio.get_running_loop().create_future()
        # Nobody may wait for a task that was closed away: do not warn about it.
        task.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._tasks[ref] = task
        task.runner = asyncio.create_task(self._life(task), name=f"fake-task-{spec.task_id}")
        return Handle(
            task_id=spec.task_id,
            executor=self.name,
            ref=ref,
            data={"stdout": spec.stdout_path, "stderr": spec.stderr_path},
        )

    async def _life(self, t: _FakeTask) -> None:
        loop = asyncio.get_running_loop()
        remaining = t.script.duration
        while True:
            if t.signalled is not None:
                code = t.signalled
                t.finish(ExitResult(TaskState.FAILED, code, f"exited with code {code}"))
                return
            if not t.paused and remaining is not None and remaining <= 0:
                t.finish(t.script.result)
                return
            t.changed.clear()
            if t.paused:
                await t.changed.wait()
                continue
            began = loop.time()
            try:
                await asyncio.wait_for(t.changed.wait(), remaining)
            except TimeoutError:
                remaining = 0.0
                continue
            if remaining is not None:
                remaining -= loop.time() - began

    def _get(self, handle: Handle) -> _FakeTask:
        t = self._tasks.get(handle.ref)
        if t is None:
            raise ExecutorError(f"task {handle.task_id} is not known to this fake executor")
        return t

    async def wait(self, handle: Handle) -> ExitResult:
        t = self._tasks.get(handle.ref)
        if t is None:
            return ExitResult(TaskState.LOST, None, "the fake task is not known to this process")
        assert t.done is not None
        return await asyncio.shield(t.done)

    async def stop(self, handle: Handle, signal: str = "SIGKILL") -> None:
        code = signal_exit_code(signal)
        t = self._tasks.get(handle.ref)
        if t is None or t.result is not None:
            return
        self.signals.append((handle.task_id, signal))
        if t.script.stubborn and code != signal_exit_code("SIGKILL"):
            return
        t.signalled = code
        t.paused = False
        t.changed.set()

    async def pause(self, handle: Handle) -> None:
        t = self._get(handle)
        if t.result is not None:
            raise ExecutorError(f"cannot pause task {handle.task_id}: it is not running")
        t.paused = True
        t.changed.set()

    async def resume(self, handle: Handle) -> None:
        t = self._get(handle)
        if t.result is not None:
            raise ExecutorError(f"cannot resume task {handle.task_id}: it is not running")
        t.paused = False
        t.changed.set()

    async def destroy(self, handle: Handle) -> None:
        t = self._tasks.pop(handle.ref, None)
        if t is not None:
            self._end(t, "the task was destroyed before it ended")
            if t.runner is not None:
                try:
                    await t.runner
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # destroy itself was cancelled, not just the run it ended
                except Exception:  # noqa: BLE001, S110
                    pass

    @staticmethod
    def _end(t: _FakeTask, why: str) -> None:
        if t.runner is not None and not t.runner.done():
            t.runner.cancel()
        t.finish(error=ExecutorError(f"task {t.task_id}: {why}"))

    async def recover(self, handle: Handle) -> Presence:
        t = self._tasks.get(handle.ref)
        if t is None:
            return Presence.MISSING
        if t.result is not None:
            return Presence.EXITED
        return Presence.PAUSED if t.paused else Presence.RUNNING

    async def close(self) -> None:
        """Fake tasks live in this process: closing ends them (a real backend's would not)."""
        for t in list(self._tasks.values()):
            self._end(t, "the fake executor was closed before the task ended")
        self._tasks.clear()


def _env_line(spec: LaunchSpec) -> str:
    """An array task's HAKURIVER_* variables as the task would see them (one line), so tests can read them."""
    env = spec.array_env()
    return " ".join(f"{k}={v}" for k, v in sorted(env.items())) + "\n" if env else ""


def _write_banner(spec: LaunchSpec) -> None:
    for path, text in (
        (spec.stdout_path, f"fake task {spec.task_id}: {shlex.join(spec.command)}\n" + _env_line(spec)),
        (spec.stderr_path, f"fake task {spec.task_id}: stderr\n"),
    ):
        # Through safefiles like the real backends: the shared dir is the tasks' too.
        dir_fd, name = safefiles.open_log_dir(path, create=True)
        try:
            fd, _ = safefiles.replace_with_new(dir_fd, name)
        finally:
            os.close(dir_fd)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
