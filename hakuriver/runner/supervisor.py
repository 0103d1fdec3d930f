"""The runner's task supervisor: one coroutine per task, from accept to result.

Durability, in order:
1. `accept` persists the request with a deterministic handle (the container or
   unit name follows from the task id) *before* starting anything. A runner
   that dies mid-start finds the task again on restart: adopted if it
   started, started now if it never did.
2. After `start`, the real handle is persisted, then the task's start is
   posted (`Notices`) for the Host to be told `running`.
3. The result goes to a durable outbox before the task is forgotten, and
   its recording is posted.

The Supervisor never calls the Host: `HostLink` owns every such call. It
reports each posted start, and re-sends every outbox entry until the Host
acknowledges it.

Stopping the runner cancels these coroutines only; tasks keep running and
are re-adopted by `recover` at the next start.

Time limits (`RunRequest.time_limit`) are the runner's to enforce, so that a
Host that is down does not stop them. The limit counts wall time from the
moment `start` returned (`Handle.started_at`, persisted with the handle), and
paused time counts too, as in Slurm. A backend that enforces limits itself
(`Capabilities.time_limit`: systemd's `RuntimeMaxSec=`) is left to it;
for the others a deadline coroutine sends SIGTERM at the limit (thawing a
paused task first, or the signal would wait for it), then SIGKILL after
`runner.timeout_grace`, and the result becomes `timeout`. A restarted runner
re-arms the deadline of every task it adopts from the persisted start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import naming, policy
from ..config import Config
from ..errors import Conflict, HakuRiverError, NotFound, ValidationError
from ..models import SYSTEMD_CONTAINER, ExitResult, Mount, NumaNode, TaskState
from ..parsing import format_duration, format_size, validate_env_name
from ..runrequest import RunRequest
from .executors.base import Executor, Handle, LaunchSpec, Presence
from .identity import docker_identity
from .state import RunnerState

log = logging.getLogger(__name__)


class Environments(Protocol):
    async def ensure(self, name: str) -> str:
        """Make the environment's image current on this node (`runner.environments`);
        its reference, or ExecutorError saying why the task cannot run."""


class Notices:
    """What the Supervisor posts for whoever tells the Host (`HostLink`), without
    knowing who that is. Posting never waits.

    - `task_started(id)`: a task really started and its handle is persisted;
      the Host should be told it runs. The ids queue up in order for
      `take_started()`; `new_start` is set with each.
    - `result_recorded()`: a result is in the state store's outbox;
      `new_result` is set.

    While the answer to a task's order is being made, its start is not
    queued: the answer says the task runs, so the
    Host hears of it once, without a report request of its own (`hold`, `release`).
    """

    def __init__(self) -> None:
        self._started: list[int] = []
        self._answering: dict[int, asyncio.Event] = {}
        self.new_start = asyncio.Event()
        self.new_result = asyncio.Event()

    def task_started(self, task_id: int) -> None:
        answering = self._answering.get(task_id)
        if answering is not None:
            answering.set()  # the answer to its order carries it
            return
        self._started.append(task_id)
        self.new_start.set()

    def hold(self, task_ids: Iterable[int]) -> dict[int, asyncio.Event]:
        """Hold the starts of `task_ids` back from the queue: the answer to
        their order is being made. Returns what to pass to `release`: the ids
        it took (one another answer holds already stays with that one)."""
        held: dict[int, asyncio.Event] = {}
        for task_id in task_ids:
            if task_id not in self._answering:
                held[task_id] = self._answering[task_id] = asyncio.Event()
        return held

    async def release(self, held: dict[int, asyncio.Event], wait_for: Collection[int], wait: float) -> set[int]:
        """Wait at most `wait` seconds for each held id in `wait_for` (those the
        order newly accepted) to start, then stop holding them all; return the
        ids of `wait_for` that started while held. The caller's answer must say
        they run: they are never queued. Any other start held meanwhile is
        queued. Cancelled (no answer goes out), it queues them all."""
        waits = [held[task_id] for task_id in wait_for if task_id in held]
        try:
            if waits:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        for event in waits:
                            await event.wait()
        except BaseException:
            self.abandon(held)
            raise
        return self._stop_holding(held, set(wait_for))

    def abandon(self, held: dict[int, asyncio.Event]) -> None:
        """Stop holding: no answer will say these tasks run. Those that started meanwhile are queued."""
        self._stop_holding(held, set())

    def _stop_holding(self, held: dict[int, asyncio.Event], answerable: set[int]) -> set[int]:
        """Stop holding what is still held for this answer (`ending` may have
        taken an id back); the started ids of `answerable` are the answer's,
        the other starts are queued, in id order."""
        answered = set()
        for task_id in sorted(held):
            event = held[task_id]
            if self._answering.get(task_id) is not event:
                continue  # taken back (`ending`): its start is queued already
            del self._answering[task_id]
            if not event.is_set():
                continue
            if task_id in answerable:
                answered.add(task_id)
            else:
                self.task_started(task_id)
        return answered

    def ending(self, task_id: int) -> None:
        """The task is about to record its result. A start still held for an
        answer is queued now: the Host must hear of the start before the end
        (the report queue sends starts first), and the answer, which may wait
        for other tasks, could come after the result."""
        event = self._answering.pop(task_id, None)
        if event is None:
            return
        if event.is_set():
            self.task_started(task_id)
        event.set()  # the answer need not wait for it any longer

    def take_started(self) -> list[int]:
        """The ids posted since the last take, oldest first."""
        started, self._started = self._started, []
        return started

    def result_recorded(self) -> None:
        self.new_result.set()


@dataclass
class Supervised:
    task_id: int
    request: RunRequest
    executor: Executor
    handle: Handle
    started: bool = False
    paused: bool = False
    kill_requested: bool = False
    runner: asyncio.Task[None] | None = field(default=None, repr=False)
    deadline: asyncio.Task[None] | None = field(default=None, repr=False)
    """The coroutine that stops the task at its time limit, while armed."""
    timed_out: bool = False
    """The time limit struck: the supervisor sent SIGTERM."""
    timeout_killed: bool = False
    """... and SIGKILL, when the grace period ran out."""


class Supervisor:
    """`executors` maps a backend name to the backend: "docker" runs environment
    tasks, "systemd" `--container NULL` ones; a persisted handle is re-adopted by
    the one under the name it records (`Handle.executor`).

    Every order is checked against this node's own policy (`config`, through
    `hakuriver.policy`) before it is accepted, whoever sent it: the Host's
    decision is not trusted blindly. `cores` and `memory` are the node's
    capacity (None: not checked)."""

    def __init__(
        self,
        config: Config,
        state: RunnerState,
        executors: dict[str, Executor],
        notices: Notices,
        numa: tuple[NumaNode, ...],
        gpu_ids: frozenset[int],
        environments: Environments | None = None,
        *,
        cores: int | None = None,
        memory: int | None = None,
    ):
        self.config = config
        self.node_cores = cores
        self.node_memory = memory
        self.environments = environments
        self.state = state
        self.executors = executors
        self.notices = notices
        self.numa = {n.id: n for n in numa}
        self.gpu_ids = gpu_ids
        self.tasks: dict[int, Supervised] = {}
        self._accepting: set[int] = set()

    # -------------------------------------------------------------- views
    def running_report(self) -> list[dict[str, Any]]:
        return [
            {
                "task_id": str(t.task_id),
                "state": str(TaskState.PAUSED if t.paused else TaskState.RUNNING),
                # Only a retried task's later runs say which (a Host from before retries never sends those).
                **({"attempt": t.request.attempt} if t.request.attempt != 1 else {}),
            }
            for t in self.tasks.values()
            if t.started
        ]

    def attempt_of(self, task_id: int) -> int:
        """Which run of the task this runner holds (`RunRequest.attempt`); 1 when it holds none."""
        entry = self.tasks.get(task_id)
        if entry is not None:
            return entry.request.attempt
        return self.state.outbox_attempt(task_id) or 1

    def holding_ids(self) -> list[int]:
        """Tasks this runner holds without running them: starting, or results in delivery."""
        return [t.task_id for t in self.tasks.values() if not t.started] + self.state.outbox_ids()

    # ------------------------------------------------------------ accept
    def _executor_for(self, container: str) -> Executor:
        name = "systemd" if container == SYSTEMD_CONTAINER else "docker"
        executor = self.executors.get(name)
        if executor is None:
            raise ValidationError(
                f"this runner has no {name} executor available; it cannot run "
                + ("--container NULL tasks" if name == "systemd" else "Docker tasks")
            )
        return executor

    def build_spec(self, request: RunRequest) -> LaunchSpec:
        """Check `request` against this node's own policy (argv, env, resource
        bounds, privileged, mounts: `hakuriver.policy` with this runner's
        config) and facts (its cores, memory, GPU ids, NUMA nodes, the
        environment name, the submitter's Unix account), and build what the
        executor starts. Raises ValidationError or PolicyDenied (the API
        answers 4xx with the reason, and the Host fails the task with it).

        Blocks: it resolves mount sources on the node and looks accounts up;
        call it through `prepare`."""
        docker = self.config.docker
        systemd = request.container == SYSTEMD_CONTAINER
        policy.check_command(request.command)
        policy.check_env(request.env)
        policy.check_resources(request.cores, request.memory, len(request.gpus))
        if self.node_cores is not None and (request.cores or 1) > self.node_cores:
            raise ValidationError(f"task needs {request.cores} cores but this node has {self.node_cores}")
        if self.node_memory is not None and request.memory is not None and request.memory > self.node_memory:
            raise ValidationError(
                f"task needs {format_size(request.memory)} of memory but this node has {format_size(self.node_memory)}"
            )
        policy.check_privileged(request.privileged, systemd=systemd, docker=docker, where="node")
        policy.check_no_mounts_for_systemd(bool(request.mounts), systemd=systemd)
        unknown = sorted(set(request.gpus) - self.gpu_ids)
        if unknown:
            raise ValidationError(f"this node has no GPU {unknown[0]} (it has {sorted(self.gpu_ids) or 'none'})")
        numa = None
        if request.numa is not None:
            numa = self.numa.get(request.numa)
            if numa is None:
                raise ValidationError(f"this node has no NUMA node {request.numa!r}")
        container = request.container
        image = None if systemd else naming.environment_image(validate_env_name(container))
        mounts = self.node_mounts(request.mounts)
        identity = None if systemd else docker_identity(request.unix_user, docker.task_user, user=request.user)
        shared = self.config.paths.shared_dir
        return LaunchSpec(
            task_id=request.task_id,
            command=request.command,
            env=dict(request.env),
            # Each attempt its own files (`--retries`): nothing of one is in another's.
            stdout_path=naming.stdout_path(shared, request.task_id, request.attempt),
            stderr_path=naming.stderr_path(shared, request.task_id, request.attempt),
            attempt=request.attempt,
            shared_dir=shared,
            local_temp_dir=self.config.paths.local_temp_dir,
            cores=request.cores,
            memory=request.memory,
            gpus=request.gpus,
            numa=numa,
            image=image,
            mounts=mounts,
            privileged=request.privileged,
            user=request.user,
            unix_user=request.unix_user,
            identity=identity,
            time_limit=request.time_limit,
            batch_id=request.batch_id,
            array_index=request.array_index,
            timeout_grace=self.config.runner.timeout_grace,
        )

    def node_mounts(self, mounts: tuple[Mount, ...]) -> tuple[Mount, ...]:
        """`mounts` as this node binds them: the admin's own pass, every other
        is resolved here (links included) and must lie under an allowed
        prefix (`policy.node_mount`). Blocks (file system)."""
        return tuple(policy.node_mount(m, self.config.docker) for m in mounts)

    async def prepare(self, request: RunRequest) -> LaunchSpec:
        """`build_spec` in a thread (it reads the file system and the account database)."""
        return await asyncio.to_thread(self.build_spec, request)

    async def accept(self, request: RunRequest) -> str:
        """Take a task from the Host. Idempotent per task id."""
        task_id = request.task_id
        if task_id in self._accepting:
            return "already_accepted"
        held = self.tasks.get(task_id)
        if held is not None:
            if held.request.attempt == request.attempt:
                return "already_accepted"
            # One run per task id here (its container, its records). The Host
            # orders the kill of a run it gave up on at the next heartbeat.
            if held.request.attempt > request.attempt:
                raise Conflict(
                    f"task {task_id} runs attempt {held.request.attempt} here; attempt {request.attempt} is older"
                )
            raise Conflict(
                f"task {task_id} still has attempt {held.request.attempt} on this node; "
                f"it cannot take attempt {request.attempt} until that one has ended"
            )
        delivered = self.state.outbox_attempt(task_id)
        if delivered is not None:
            if delivered >= request.attempt:
                return "already_accepted"
            # The result of an earlier run waits for delivery, but the Host has
            # moved on to a newer attempt (`--retries`): it would refuse that
            # report, and the new run needs the task's records.
            log.info(
                "task %s: dropping the undelivered result of attempt %d for attempt %d",
                task_id,
                delivered,
                request.attempt,
            )
            await self.state.acknowledge(task_id, attempt=delivered)
        self._accepting.add(task_id)  # a second copy of the order, sent meanwhile, starts nothing
        try:
            spec = await self.prepare(request)
            executor = self._executor_for(request.container)
            handle = Handle(task_id=task_id, executor=executor.name, ref=naming.task_container_name(task_id), data={})
            await self.state.save_task(handle, request.to_json())
            entry = Supervised(task_id=task_id, request=request, executor=executor, handle=handle)
            self.tasks[task_id] = entry
        finally:
            self._accepting.discard(task_id)
        entry.runner = asyncio.create_task(self._run(entry, spec))
        return "accepted"

    async def _run(self, entry: Supervised, spec: LaunchSpec) -> None:
        try:
            try:
                if spec.image is not None and self.environments is not None:
                    # Before start: the newest tarball of the environment, loaded at most once.
                    await self.environments.ensure(entry.request.container)
                    if entry.kill_requested:
                        await self._finish(entry, ExitResult(TaskState.KILLED, error="killed by request"))
                        return
                if entry.request.mounts:
                    # Resolved again at start time: a link may have been planted since accept.
                    mounts = await asyncio.to_thread(self.node_mounts, entry.request.mounts)
                    spec = dataclasses.replace(spec, mounts=mounts)
                handle = await entry.executor.start(spec)
            except HakuRiverError as exc:
                await self._finish(entry, ExitResult(TaskState.FAILED, error=exc.message))
                return
            handle.started = True
            handle.started_at = time.time()
            entry.handle = handle
            await self.state.save_task(handle, entry.request.to_json())
            entry.started = True
            if entry.kill_requested:
                await entry.executor.stop(handle)
            else:
                self._arm_limit(entry)
                self.notices.task_started(entry.task_id)
            await self._wait(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("supervising task %s failed", entry.task_id)
            await self._finish(entry, ExitResult(TaskState.FAILED, error=f"runner error: {exc}"))

    async def _wait(self, entry: Supervised) -> None:
        result = await entry.executor.wait(entry.handle)
        if entry.kill_requested and result.state is not TaskState.COMPLETED:
            result = ExitResult(
                TaskState.KILLED,
                exit_code=result.exit_code,
                error="killed by request",
                output_error=result.output_error,
            )
        else:
            result = self._limit_result(entry, result)
        await self._finish(entry, result)

    # ------------------------------------------------------------ time limits
    def _arm_limit(self, entry: Supervised) -> None:
        """Start the deadline coroutine of a started task with a time limit,
        unless its backend enforces the limit itself."""
        limit = entry.request.time_limit
        if limit is None or entry.executor.capabilities.time_limit or entry.deadline is not None:
            return
        began = entry.handle.started_at
        if began is None:
            # A handle persisted before starts were timed: count from now, never
            # from a guess that could stop the task early.
            began = entry.handle.started_at = time.time()
        entry.deadline = asyncio.create_task(self._enforce_limit(entry, began + limit))

    def deadline_of(self, task_id: int) -> float | None:
        """When the task's time limit strikes (wall clock), or None."""
        entry = self.tasks.get(task_id)
        if entry is None or entry.request.time_limit is None or entry.handle.started_at is None:
            return None
        return entry.handle.started_at + entry.request.time_limit

    async def _enforce_limit(self, entry: Supervised, deadline: float) -> None:
        try:
            # Wall clock, re-read after each sleep: a suspended machine or a
            # stepped clock must not stretch the limit.
            while (left := deadline - time.time()) > 0:
                await asyncio.sleep(min(left, 60.0))
            if entry.task_id not in self.tasks or entry.kill_requested:
                return
            entry.timed_out = True
            limit = format_duration(entry.request.time_limit)
            log.info("task %s reached its time limit %s: SIGTERM", entry.task_id, limit)
            if entry.paused:
                # A frozen task would not see SIGTERM until thawed.
                await entry.executor.resume(entry.handle)
                entry.paused = False
                await self.state.set_flags(entry.task_id, paused=False)
            await entry.executor.stop(entry.handle, "SIGTERM")
            grace = self.config.runner.timeout_grace
            await asyncio.sleep(grace)
            if entry.task_id in self.tasks:
                log.info("task %s still runs %.0fs after SIGTERM: SIGKILL", entry.task_id, grace)
                entry.timeout_killed = True
                await entry.executor.stop(entry.handle, "SIGKILL")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the task's own wait still reports how it ended
            log.warning("enforcing the time limit of task %s failed: %s", entry.task_id, exc)

    def _limit_result(self, entry: Supervised, result: ExitResult) -> ExitResult:
        """`result` as the time limit makes it: TIMEOUT when the limit struck
        (whatever the exit code: a task that catches SIGTERM and exits 0 still
        ran out of time), with the limit in the error text."""
        limit = entry.request.time_limit
        native = result.state is TaskState.TIMEOUT
        if native and limit is None:
            # A backend's "timeout" with no limit asked for: a stop that hung, not a limit.
            return dataclasses.replace(result, state=TaskState.FAILED)
        if not (entry.timed_out or native) or limit is None:
            return result
        error = f"time limit {format_duration(limit)} reached"
        if entry.timeout_killed:
            error += f"; killed {self.config.runner.timeout_grace:g}s after SIGTERM"
        return ExitResult(TaskState.TIMEOUT, exit_code=result.exit_code, error=error, output_error=result.output_error)

    async def _finish(self, entry: Supervised, result: ExitResult) -> None:
        if entry.deadline is not None and entry.deadline is not asyncio.current_task():
            entry.deadline.cancel()
        self.notices.ending(entry.task_id)
        await self.state.record_result(entry.task_id, result, time.time(), attempt=entry.request.attempt)
        self.tasks.pop(entry.task_id, None)
        self.notices.result_recorded()
        if entry.started:
            try:
                await entry.executor.destroy(entry.handle)
            except Exception as exc:  # noqa: BLE001 - leftovers are swept later; the result is safe
                log.warning("cleanup of task %s failed: %s", entry.task_id, exc)

    # ---------------------------------------------------- kill/pause/resume
    def _entry(self, task_id: int) -> Supervised:
        entry = self.tasks.get(task_id)
        if entry is None:
            if self.state.in_outbox(task_id):
                raise Conflict(f"task {task_id} has already ended")
            raise NotFound(f"this runner has no task {task_id}")
        return entry

    async def kill(self, task_id: int) -> bool:
        """Kill a task; False when it had already ended (nothing to do)."""
        try:
            entry = self._entry(task_id)
        except Conflict:
            return False
        entry.kill_requested = True
        await self.state.set_flags(task_id, kill_requested=True)
        if entry.started:
            await entry.executor.stop(entry.handle)
        return True

    async def pause(self, task_id: int) -> None:
        entry = self._entry(task_id)
        if not entry.executor.capabilities.pause:
            raise Conflict(f"the {entry.executor.name} executor cannot pause tasks")
        if not entry.started:
            raise Conflict(f"task {task_id} is still starting")
        await entry.executor.pause(entry.handle)
        entry.paused = True
        await self.state.set_flags(task_id, paused=True)

    async def resume(self, task_id: int) -> None:
        entry = self._entry(task_id)
        if not entry.started:
            raise Conflict(f"task {task_id} is still starting")
        await entry.executor.resume(entry.handle)
        entry.paused = False
        await self.state.set_flags(task_id, paused=False)

    # ------------------------------------------------------------ recover
    async def recover(self) -> None:
        """Re-adopt every task persisted by a previous run of this runner."""
        for active in await self.state.active():
            handle = active.handle
            try:
                # The record persisted at accept time; older shapes decode too.
                request = RunRequest.from_json(active.task)
            except ValidationError as exc:
                log.error("task %s: its stored run request no longer reads (%s); failing it", handle.task_id, exc)
                await self.state.record_result(
                    handle.task_id,
                    ExitResult(TaskState.FAILED, error=f"runner could not read its record: {exc}"),
                    time.time(),
                )
                self.notices.result_recorded()
                continue
            # A handle records the backend's own name; an injected backend may
            # serve under another key (a fake standing in for "docker").
            executor = self.executors.get(handle.executor) or next(
                (ex for ex in self.executors.values() if ex.name == handle.executor), None
            )
            if executor is None:
                log.error(
                    "task %s was run by the %s executor, which is not available now", handle.task_id, handle.executor
                )
                continue
            entry = Supervised(
                task_id=handle.task_id,
                request=request,
                executor=executor,
                handle=handle,
                kill_requested=active.kill_requested,
                paused=active.paused,
            )
            presence = await executor.recover(handle)
            self.tasks[handle.task_id] = entry
            if presence is Presence.MISSING and not handle.started:
                log.info("task %s had not started before the restart; starting it now", handle.task_id)
                try:
                    spec = await self.prepare(request)
                except HakuRiverError as exc:
                    await self._finish(entry, ExitResult(TaskState.FAILED, error=exc.message))
                    continue
                entry.runner = asyncio.create_task(self._run(entry, spec))
                continue
            if presence is Presence.MISSING:
                entry.started = True
                await self._finish(
                    entry,
                    ExitResult(TaskState.FAILED, error="the task vanished from this node while the runner was down"),
                )
                continue
            entry.started = True
            entry.paused = presence is Presence.PAUSED
            log.info("re-adopted task %s (%s)", handle.task_id, presence)
            if presence is not Presence.EXITED and not entry.kill_requested:
                self._arm_limit(entry)  # from the persisted start: the restart does not reset the clock
            entry.runner = asyncio.create_task(self._guarded_wait(entry))

    async def _guarded_wait(self, entry: Supervised) -> None:
        try:
            await self._wait(entry)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("waiting for task %s failed", entry.task_id)
            await self._finish(entry, ExitResult(TaskState.FAILED, error=f"runner error: {exc}"))

    async def shutdown(self) -> None:
        """Stop supervising (the runner is stopping); tasks keep running."""
        runners = [t.runner for t in self.tasks.values() if t.runner is not None]
        runners += [t.deadline for t in self.tasks.values() if t.deadline is not None]
        for r in runners:
            r.cancel()
        await asyncio.gather(*runners, return_exceptions=True)
