"""The Docker backend's lifecycle: `DockerExecutor`.

`start` checks that the image is on the node (it never pulls), then
*creates* and *starts* the container of `plan.build_plan` (the SDK's `run()`
would pull a missing image). A watch thread per task (`logs.py`) fills the
output files; when the container stops, the watch inspects it (the daemon
answers only once the exit status is recorded), completes the files
(`logs.catch_up`) and only then sets the ExitResult that `wait()` awaits, so
`wait()` never returns before every byte is in the files. A non-zero exit
that Docker does not call an OOM kill is checked against the kernel's log
(`oom.KernelOomLog`). Output that could not be fully written (a write,
the final fsync, or the file itself lost: see `executors.output`) is
reported as the result's `output_error`, next to the real exit status.

Every SDK call runs in this executor's own threads (`dockerapi.Engine`).
`close()` stops the watches and joins them, leaving every container running;
a new executor's `recover()` picks the tasks up where the files end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .... import naming
from ....dockerapi import Engine, docker_explanation, sdk
from ....errors import ExecutorError, HakuRiverError
from ....models import ExitResult, TaskState
from ..base import Capabilities, Executor, Fingerprint, Handle, LaunchSpec, Presence
from ..output import OutputFault, file_gone, os_error_text, summary, write_fault
from .logs import STDERR, STDOUT, STREAM_NAMES, Trail, Watch, catch_up, create_log, open_log, pump, settle
from .oom import KernelOomLog
from .plan import SHARED_MOUNT, ContainerPlan, build_plan, exit_result, presence_of

if TYPE_CHECKING:
    from ....config import Config

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_POOL_SIZE = 256
"""HTTP connections kept to the daemon: every running task's log stream holds one."""
DEFAULT_CALL_THREADS = 8
"""Threads for short SDK calls (create, inspect, kill, ...)."""
JOIN_TIMEOUT = 10.0
DESTROY_DRAIN_TIMEOUT = 30.0


def _unreachable(why: str) -> ExecutorError:
    return ExecutorError(f"cannot reach the Docker engine: {why}")


class DockerExecutor(Executor):
    """Runs each task in its own container. See the package docstring."""

    name = "docker"
    capabilities = Capabilities(pause=True)

    def __init__(
        self,
        runner_name: str,
        *,
        client: Any = None,
        base_url: str | None = None,
        max_pool_size: int = DEFAULT_MAX_POOL_SIZE,
        call_threads: int = DEFAULT_CALL_THREADS,
        init: bool = True,
        labels: dict[str, str] | None = None,
        kernel_log: str | None = "/dev/kmsg",
    ):
        """`client`: a docker.DockerClient to use (not closed by `close()`); else one is
        made from `base_url` or the environment (DOCKER_HOST...). `init`: run docker-init
        as PID 1. `labels`: extra labels on every task container (tests mark theirs).
        `kernel_log`: where to read OOM-kill records (None: trust Docker's flag only)."""
        self.runner_name = runner_name
        self._labels = dict(labels or {})
        self._init = init
        self._engine = Engine(
            threads=call_threads,
            name="hakuriver-docker",
            unreachable=_unreachable,
            client=client,
            base_url=base_url,
            max_pool_size=max_pool_size,
        )
        self._watches: dict[str, Watch] = {}
        self._oom_log = KernelOomLog(kernel_log) if kernel_log else None
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> DockerExecutor:
        return cls(config.runner_name)

    # -- plumbing ---------------------------------------------------------
    def _api(self) -> Any:
        """The low-level APIClient (made on first use: call it in a worker thread)."""
        return self._engine.api()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise ExecutorError("the docker executor is closed")
        return await self._engine.call(fn, *args)

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorError("the docker executor is closed")

    # -- start ------------------------------------------------------------
    async def start(self, spec: LaunchSpec) -> Handle:
        self._check_open()
        plan = build_plan(spec, self.runner_name, init=self._init, extra_labels=self._labels)
        job = self._engine.pool.submit(self._create_and_start, spec, plan)
        try:
            container_id = await asyncio.shield(asyncio.wrap_future(job))
        except asyncio.CancelledError:
            # The thread carries on; whatever it starts must not outlive this cancelled start.
            job.add_done_callback(self._discard_cancelled_start)
            raise
        handle = Handle(
            task_id=spec.task_id,
            executor=self.name,
            ref=container_id,
            data={"name": plan.create["name"], "stdout": spec.stdout_path, "stderr": spec.stderr_path},
        )
        if not self._closed:  # closed meanwhile: the task runs; whoever recovers it watches it
            self._watch_for(handle)
        return handle

    def _create_and_start(self, spec: LaunchSpec, plan: ContainerPlan) -> str:
        docker = sdk()
        api = self._api()
        name = plan.create["name"]
        missing = (
            f"environment image {spec.image} is not present on this node; the runner loads environments "
            f"from their tarballs in the shared dir and never pulls (create or sync the environment first)"
        )
        try:
            api.inspect_image(spec.image)
        except docker.errors.ImageNotFound:
            raise ExecutorError(missing) from None
        except docker.errors.DockerException as exc:
            raise ExecutorError(
                f"task {spec.task_id}: cannot inspect image {spec.image}: {docker_explanation(exc)}"
            ) from exc

        try:
            host_config = api.create_host_config(**plan.host_config)
            created = api.create_container(**plan.create, host_config=host_config)
        except docker.errors.ImageNotFound:
            raise ExecutorError(missing) from None
        except docker.errors.DockerException as exc:
            raise ExecutorError(
                f"task {spec.task_id}: cannot create container {name}: {docker_explanation(exc)}"
            ) from exc
        container_id = created["Id"]
        try:
            # Fresh, empty output files (made only now that the name was ours):
            # the watch appends to them and takes their sizes as what it wrote.
            # Created exclusively, never through whatever a task planted there.
            for path in (spec.stdout_path, spec.stderr_path):
                try:
                    replaced = create_log(path)
                except (OSError, HakuRiverError) as exc:
                    why = exc.message if isinstance(exc, HakuRiverError) else str(exc)
                    raise ExecutorError(f"task {spec.task_id}: cannot create output file {path}: {why}") from exc
                if replaced:
                    log.warning(
                        "task %s: %s stood at %s; removed unfollowed, the log is new", spec.task_id, replaced, path
                    )
            try:
                api.start(container_id)
            except docker.errors.DockerException as exc:
                raise ExecutorError(f"task {spec.task_id} could not start: {docker_explanation(exc)}") from exc
        except BaseException:
            try:
                api.remove_container(container_id, force=True)
            except docker.errors.DockerException as rm_exc:
                log.warning("could not remove container %s after a failed start: %s", name, docker_explanation(rm_exc))
            raise
        return container_id

    def _discard_cancelled_start(self, job: concurrent.futures.Future) -> None:
        if job.cancelled() or job.exception() is not None:
            return
        container_id = job.result()
        handle = Handle(task_id=0, executor=self.name, ref=container_id)

        def remove() -> None:
            try:
                self._remove(handle)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not remove container %s of a cancelled start: %s", container_id[:12], exc)

        try:
            self._engine.pool.submit(remove)
        except RuntimeError:  # pool already shut down: do it here
            remove()

    # -- the watch ----------------------------------------------------------
    def _watch_for(self, handle: Handle) -> Watch:
        self._check_open()
        w = self._watches.get(handle.ref)
        if w is not None:
            return w
        try:
            stdout_path, stderr_path = handle.data["stdout"], handle.data["stderr"]
        except KeyError:
            raise ExecutorError(f"task {handle.task_id}: the handle carries no output paths") from None
        w = Watch(handle.ref, handle.task_id, stdout_path, stderr_path)
        w.thread = threading.Thread(
            target=self._watch_main, args=(w,), name=f"hakuriver-watch-{handle.task_id}", daemon=True
        )
        self._watches[handle.ref] = w
        w.thread.start()
        return w

    def _watch_main(self, w: Watch) -> None:
        try:
            result = self._watch(w)
        except BaseException as exc:
            log.exception("watch of task %s failed", w.task_id)
            err = exc if isinstance(exc, ExecutorError) else ExecutorError(f"task {w.task_id}: watch failed: {exc}")
            settle(w.future, exc=err)
            return
        if result is None:
            settle(w.future, exc=ExecutorError("the docker executor was closed before the task ended"))
        else:
            settle(w.future, result)

    def _watch(self, w: Watch) -> ExitResult | None:
        """Pump the log until the container stops; return how it ended (None: closed)."""
        docker = sdk()
        backoff = 0.0
        trail = Trail()
        with contextlib.ExitStack() as stack:
            files = self._open_files(w, stack)
            while not w.stopping.is_set():
                error: BaseException | None = None
                wrote = False
                try:
                    wrote = pump(self._api, w, files, trail, follow=True)
                except docker.errors.NotFound:
                    if w.stopping.is_set():
                        return None
                    return ExitResult(TaskState.LOST, None, "the task's container disappeared")
                except Exception as exc:  # noqa: BLE001 - a broken stream; decided below
                    error = exc
                if w.stopping.is_set():
                    return None
                try:
                    state = self._api().inspect_container(w.container_id)["State"]
                except docker.errors.NotFound:
                    return ExitResult(TaskState.LOST, None, "the task's container disappeared")
                except Exception as exc:  # noqa: BLE001 - daemon unreachable: keep trying
                    log.warning("task %s: cannot inspect its container: %s", w.task_id, docker_explanation(exc))
                    state = None
                if state is not None and presence_of(state) is Presence.EXITED:
                    catch_up(self._api, w, files, trail if error is None else None)
                    if w.stopping.is_set():
                        return None
                    oom = (
                        self._oom_log is not None
                        and int(state.get("ExitCode") or 0) != 0
                        and not state.get("OOMKilled")
                        and self._oom_log.killed(w.container_id)
                    )
                    return self._with_output_check(w, files, exit_result(state, kernel_oom=oom))
                if error is not None:
                    log.warning("task %s: log stream broke (%s); resuming", w.task_id, docker_explanation(error))
                backoff = 0.1 if wrote else min(5.0, max(0.1, backoff * 2))
                if w.stopping.wait(backoff):
                    return None
        return None

    def _open_files(self, w: Watch, stack: contextlib.ExitStack) -> dict[int, Any]:
        """The two output files, open to append; one that cannot be opened (its
        directory gone, no space for a new file) is a fault, not a failed watch:
        the task's end is still observed and reported."""
        files: dict[int, Any] = {}
        for kind, path in ((STDOUT, w.stdout_path), (STDERR, w.stderr_path)):
            try:
                files[kind] = stack.enter_context(open_log(path, w.task_id))
            except (OSError, HakuRiverError) as exc:
                why = exc.message if isinstance(exc, HakuRiverError) else os_error_text(exc)
                w.faults[kind] = OutputFault(STREAM_NAMES[kind], f"cannot open its output file {path}: {why}")
        return files

    def _with_output_check(self, w: Watch, files: dict[int, Any], result: ExitResult) -> ExitResult:
        """`result` with the output's faults: each file flushed to its disk (a
        deferred EIO shows only there) and still the one at its path."""
        for kind, f in files.items():
            if kind in w.faults:
                continue
            path = w.stdout_path if kind == STDOUT else w.stderr_path
            try:
                os.fsync(f.fileno())
            except OSError as exc:
                w.faults[kind] = write_fault(STREAM_NAMES[kind], exc, None)
                continue
            gone = file_gone(STREAM_NAMES[kind], path, f.fileno())
            if gone is not None:
                w.faults[kind] = gone
        text = summary(w.faults[k] for k in sorted(w.faults))
        if text is None:
            return result
        log.warning("task %s ended (%s) but its output is incomplete: %s", w.task_id, result.state, text)
        return dataclasses.replace(result, output_error=text)

    # -- the contract ---------------------------------------------------------
    async def wait(self, handle: Handle) -> ExitResult:
        w = self._watch_for(handle)
        return await asyncio.wrap_future(w.future)

    async def stop(self, handle: Handle, signal: str = "SIGKILL") -> None:
        await self._call(self._kill, handle, signal)

    def _kill(self, handle: Handle, signal: str) -> None:
        docker = sdk()
        try:
            self._api().kill(handle.ref, signal=signal)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # not running: it already ended
                return
            raise ExecutorError(f"cannot signal task {handle.task_id}: {docker_explanation(exc)}") from exc
        except docker.errors.DockerException as exc:
            raise ExecutorError(f"cannot signal task {handle.task_id}: {docker_explanation(exc)}") from exc

    async def pause(self, handle: Handle) -> None:
        await self._call(self._freeze, handle, True)

    async def resume(self, handle: Handle) -> None:
        await self._call(self._freeze, handle, False)

    def _freeze(self, handle: Handle, frozen: bool) -> None:
        docker = sdk()
        api = self._api()
        verb = "pause" if frozen else "resume"
        try:
            (api.pause if frozen else api.unpause)(handle.ref)
        except docker.errors.NotFound:
            raise ExecutorError(f"cannot {verb} task {handle.task_id}: its container no longer exists") from None
        except docker.errors.APIError as exc:
            # Already in that state is fine (Docker answers 409 or 500); not running is not.
            try:
                state = api.inspect_container(handle.ref)["State"]
            except docker.errors.DockerException:
                state = {}
            if state.get("Running") and bool(state.get("Paused")) == frozen:
                return
            raise ExecutorError(f"cannot {verb} task {handle.task_id}: {docker_explanation(exc)}") from exc
        except docker.errors.DockerException as exc:
            raise ExecutorError(f"cannot {verb} task {handle.task_id}: {docker_explanation(exc)}") from exc

    async def destroy(self, handle: Handle) -> None:
        w = self._watches.get(handle.ref)
        if w is not None and not w.future.done() and not self._closed:
            # Still running: kill it, then let the watch drain the log before removal.
            await self.stop(handle, "SIGKILL")
            try:
                await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(w.future)), DESTROY_DRAIN_TIMEOUT)
            except Exception:  # noqa: BLE001, S110 - removal goes ahead regardless
                pass
        await self._call(self._remove, handle)
        w = self._watches.pop(handle.ref, None)
        if w is not None:
            w.stop()

    def _remove(self, handle: Handle) -> None:
        docker = sdk()
        try:
            self._api().remove_container(handle.ref, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in docker_explanation(exc):
                return
            raise ExecutorError(
                f"cannot remove the container of task {handle.task_id}: {docker_explanation(exc)}"
            ) from exc
        except docker.errors.DockerException as exc:
            raise ExecutorError(
                f"cannot remove the container of task {handle.task_id}: {docker_explanation(exc)}"
            ) from exc

    async def recover(self, handle: Handle) -> Presence:
        """Also accepts a placeholder handle (ref = the container name, no output
        paths), as persisted before `start` returned: the paths are then derived
        from the container's /shared mount and added to `handle.data`."""
        info = await self._call(self._inspect_or_none, handle)
        if info is None:
            return Presence.MISSING
        if "stdout" not in handle.data or "stderr" not in handle.data:
            shared = next(
                (m.get("Source") for m in info.get("Mounts") or () if m.get("Destination") == SHARED_MOUNT), None
            )
            if shared:
                handle.data.setdefault("stdout", naming.stdout_path(shared, handle.task_id))
                handle.data.setdefault("stderr", naming.stderr_path(shared, handle.task_id))
            handle.data.setdefault("name", str(info.get("Name", "")).lstrip("/"))
        if "stdout" in handle.data and "stderr" in handle.data:
            self._watch_for(handle)  # completes the output files and observes the end
        else:
            log.error("task %s: cannot tell where its output goes; wait() will fail", handle.task_id)
        return presence_of(info.get("State") or {})

    def _inspect_or_none(self, handle: Handle) -> dict[str, Any] | None:
        docker = sdk()
        try:
            return self._api().inspect_container(handle.ref)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise ExecutorError(f"cannot inspect task {handle.task_id}: {docker_explanation(exc)}") from exc

    async def fingerprint(self) -> Fingerprint:
        def version() -> dict[str, Any]:
            docker = sdk()
            try:
                return dict(self._api().version())
            except docker.errors.DockerException as exc:
                raise ExecutorError(f"cannot reach the Docker engine: {docker_explanation(exc)}") from exc

        facts = await self._call(version)
        engine = str(facts.get("Version", "unknown"))
        return Fingerprint(version=engine, summary=f"Docker engine {engine}", facts=facts)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        watches = list(self._watches.values())
        self._watches.clear()
        for w in watches:
            w.stop()

        def join() -> None:
            for w in watches:
                if w.thread is not None:
                    w.thread.join(JOIN_TIMEOUT)
                    if w.thread.is_alive():
                        log.warning("the watch of task %s did not stop within %.0fs", w.task_id, JOIN_TIMEOUT)

        await self._engine.call(join)
        for w in watches:
            settle(w.future, exc=ExecutorError("the docker executor was closed before the task ended"))
        if self._oom_log is not None:
            self._oom_log.close()
        await self._engine.close()
