"""The Docker backend: one container per task, `hakuriver-task-<id>`.

This module and the runner's environment sync are the only runner code that
uses the Docker SDK, through `hakuriver.dockerapi`, which imports it only
when a `DockerExecutor` is first used: importing the executor registry never
needs it.

How a task is run
    The image must already be on the node (`hakuriver/<env>:base`, loaded from
    the shared tarball by the runner): we check it and otherwise fail; we never
    pull. The container is *created* then *started* (the SDK's `run()` would
    pull on a missing image). Its entrypoint is the argv's program and its
    command the rest, so the argv runs exactly, without a shell and without
    any ENTRYPOINT the image may carry. `init=True` puts docker-init (tini) in
    front so that SIGTERM reaches the task and zombies are reaped.

How output reaches the shared dir (the "watch")
    For each task one dedicated daemon thread (never a default-pool thread)
    follows the container's log (`GET /containers/<id>/logs?follow=1`, the
    json-file log the daemon keeps anyway) and demultiplexes the 8-byte framed
    stream into the stdout and stderr files, writing every frame as it
    arrives. The files are therefore readable while the task runs.

    The files are always a *prefix* of the container's two streams. So
    resuming is simple and needs no truncation (which would confuse a
    `logs --follow` reader): the watch replays the log from the start and skips
    as many bytes of each stream as its file already holds. This covers a
    runner restart (`recover`), an already-exited container, and a log stream
    that broke while the daemon restarted.

How the end is observed
    The follow stream ends when the container stops (the daemon closes the
    log after the process exits). The watch then inspects the container; the
    daemon only answers once the exit status is recorded, and if the
    container still runs (a broken stream) the watch resumes following. A
    follow may miss the very end of the log (Docker 20.10 drops a last line
    without a newline), so the watch then reads a short tail of the log and
    appends what lies beyond what it consumed (`_catch_up`). Only then is the
    ExitResult set on the future that `wait()` awaits: `wait()` cannot return
    before every byte is in the files, and waiting costs no thread beyond the
    watch itself.

    OOM kills: Docker's `State.OOMKilled`, and where the engine never sets it
    (kernel 6.x with cgroup v1, as on this project's CI) the kernel's own
    OOM-kill records in /dev/kmsg (`KernelOomLog`).

`close()` stops the watches (it shuts their sockets down so a blocked read
returns) and joins them, leaving every container running; a new executor's
`recover()` picks the tasks up where the files end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import socket
import struct
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ... import naming
from ...dockerapi import Engine, docker_explanation, sdk
from ...errors import ExecutorError
from ...models import ExitResult, TaskState
from ...naming import LABEL_RUNNER, LABEL_TASK_ID, task_container_name
from .base import Capabilities, Executor, Handle, LaunchSpec, Presence

log = logging.getLogger(__name__)

T = TypeVar("T")

SHARED_MOUNT = "/shared"
LOCAL_TEMP_MOUNT = "/local_temp"
DEFAULT_MAX_POOL_SIZE = 256
"""HTTP connections kept to the daemon: every running task's log stream holds one."""
DEFAULT_CALL_THREADS = 8
"""Threads for short SDK calls (create, inspect, kill, ...)."""
JOIN_TIMEOUT = 10.0
CATCH_UP_TAIL = 64
"""Log messages re-read after a clean follow to find the ones the follow missed."""
DESTROY_DRAIN_TIMEOUT = 30.0

_STDOUT, _STDERR = 1, 2
_FRAME = struct.Struct(">BxxxL")


# --------------------------------------------------------------- pure builders


@dataclass(frozen=True)
class ContainerPlan:
    """The arguments of `APIClient.create_container` and `create_host_config`."""

    create: dict[str, Any]
    host_config: dict[str, Any]


def build_plan(
    spec: LaunchSpec, runner_name: str, *, init: bool = True, extra_labels: dict[str, str] | None = None
) -> ContainerPlan:
    """Translate a LaunchSpec into Docker's terms. Pure: no I/O, no SDK import."""
    if not spec.command:
        raise ExecutorError(f"task {spec.task_id}: empty command")
    if not spec.image:
        raise ExecutorError(f"task {spec.task_id}: the docker executor needs an environment image")
    env = spec.task_env()
    env["HAKURIVER_SHARED_DIR"] = SHARED_MOUNT
    env["HAKURIVER_LOCAL_TEMP_DIR"] = LOCAL_TEMP_MOUNT
    mounts = [
        {"Type": "bind", "Source": spec.shared_dir, "Target": SHARED_MOUNT, "ReadOnly": False},
        {"Type": "bind", "Source": spec.local_temp_dir, "Target": LOCAL_TEMP_MOUNT, "ReadOnly": False},
    ]
    mounts += [
        {"Type": "bind", "Source": m.host_path, "Target": m.container_path, "ReadOnly": bool(m.read_only)}
        for m in spec.mounts
    ]
    host: dict[str, Any] = {
        "mounts": mounts,
        "privileged": bool(spec.privileged),
        "init": init,
        "auto_remove": False,
        # json-file keeps the whole log, which the watch replays after a restart.
        "log_config": {"type": "json-file"},
    }
    if spec.cores is not None:
        host["nano_cpus"] = int(spec.cores * 1_000_000_000)
    if spec.memory is not None:
        host["mem_limit"] = int(spec.memory)
        host["memswap_limit"] = int(spec.memory)  # no swap beyond the limit
    if spec.gpus:
        host["device_requests"] = [
            {"driver": "nvidia", "device_ids": [str(g) for g in spec.gpus], "capabilities": [["gpu"]]}
        ]
    if spec.numa is not None:
        host["cpuset_cpus"] = ",".join(str(c) for c in spec.numa.cpus)
        host["cpuset_mems"] = str(spec.numa.id)
    create: dict[str, Any] = {
        "image": spec.image,
        "name": task_container_name(spec.task_id),
        "entrypoint": [spec.command[0]],
        "command": list(spec.command[1:]),
        "environment": env,
        "working_dir": SHARED_MOUNT,
        "labels": {**(extra_labels or {}), LABEL_TASK_ID: str(spec.task_id), LABEL_RUNNER: runner_name},
        "detach": True,
        "stdin_open": False,
        "tty": False,
        "use_config_proxy": False,  # the task sees exactly the env it was given
    }
    return ContainerPlan(create=create, host_config=host)


def exit_result(state: dict[str, Any], *, kernel_oom: bool = False) -> ExitResult:
    """The ExitResult of a stopped container from its inspect `State`.

    `kernel_oom`: the kernel log says the OOM killer struck in the container's
    cgroup (see `KernelOomLog`), for engines that do not set `OOMKilled`.
    """
    if state.get("Status") == "created":
        return ExitResult(TaskState.FAILED, None, "the container was created but never started")
    code = int(state.get("ExitCode") or 0)
    if (state.get("OOMKilled") or kernel_oom) and code != 0:
        return ExitResult(TaskState.KILLED_OOM, code, f"killed by the out-of-memory killer (exit code {code})")
    if code == 0:
        return ExitResult(TaskState.COMPLETED, 0)
    error = f"exited with code {code}"
    if state.get("Error"):
        error += f": {state['Error']}"
    return ExitResult(TaskState.FAILED, code, error)


def presence_of(state: dict[str, Any]) -> Presence:
    if state.get("Paused"):
        return Presence.PAUSED
    if state.get("Running") or state.get("Restarting"):
        return Presence.RUNNING
    return Presence.EXITED


# ------------------------------------------------------------------ OOM kills


_OOM_SUMMARY = re.compile(r"oom-kill:.*?(?:oom_memcg=([^,\s]*))?,task_memcg=([^,\s]*)")
_OOM_OLD = re.compile(r"Task in (\S+) killed as a result of limit of (\S+)")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def oom_cgroups_in(message: str) -> list[str]:
    """Container ids named by a kernel OOM-kill record (both the 4.19+ summary line
    and the older "Task in ... killed" line). Pure."""
    ids: list[str] = []
    for rx in (_OOM_SUMMARY, _OOM_OLD):
        m = rx.search(message)
        if m:
            for part in m.groups():
                ids.extend(_CONTAINER_ID.findall(part or ""))
    return list(dict.fromkeys(ids))


class KernelOomLog:
    """Which containers the kernel OOM killer struck, read from /dev/kmsg.

    Docker's `State.OOMKilled` relies on containerd's cgroup OOM events, which
    some kernel/cgroup combinations never deliver (this project's CI: kernel
    6.x with cgroup v1 reports a memory kill as a plain exit 137). The kernel
    logs every memcg OOM kill, with the cgroup path (which holds the container
    id), *before* it sends the SIGKILL; so by the time a container is seen
    exited its record is in the log. Nothing runs in the background: `killed()`
    drains the new records without blocking, then looks the id up. Where
    /dev/kmsg cannot be read it says False and Docker's flag alone decides.
    """

    MAX_REMEMBERED = 4096

    def __init__(self, path: str = "/dev/kmsg"):
        self._path = path
        self._fd: int | None = None
        self._tried = False
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def killed(self, container_id: str) -> bool:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    # From the oldest record still in the ring buffer, so that a
                    # runner restarted after the kill still finds it.
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as exc:
                    log.info("cannot read the kernel log (%s): OOM kills rely on Docker's OOMKilled flag", exc)
            if self._fd is not None:
                self._drain()
            return container_id in self._seen

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:  # records overwritten before we read them: skip ahead
                continue
            except OSError as exc:
                log.warning("reading the kernel log failed (%s); no longer watching it", exc)
                self.close()
                return
            if not record:
                return
            _, _, message = record.decode("utf-8", errors="replace").partition(";")
            if "oom" not in message.lower():
                continue
            for cid in oom_cgroups_in(message):
                self._seen[cid] = None
                self._seen.move_to_end(cid)
                while len(self._seen) > self.MAX_REMEMBERED:
                    self._seen.popitem(last=False)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


# ------------------------------------------------------------------- watches


def _settle(fut: concurrent.futures.Future, result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _read_exact(raw: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = raw.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _write_all(fd_file: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fd_file.write(view)
        view = view[n:]


def _shutdown_socket(sock: Any) -> None:
    for s in (sock, getattr(sock, "_sock", None)):
        if s is not None and hasattr(s, "shutdown"):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001, S110 - already closed is fine
                pass
            return


class _Trail:
    """How many frames a log pass consumed, and the last few of them."""

    def __init__(self) -> None:
        self.count = 0
        self.frames: deque[tuple[int, bytes, bytes]] = deque(maxlen=CATCH_UP_TAIL)

    def reset(self) -> None:
        self.count = 0
        self.frames.clear()

    def add(self, frame: tuple[int, bytes, bytes]) -> None:
        self.count += 1
        self.frames.append(frame)


def missed_after(window: list[Any], consumed: list[Any]) -> list[Any] | None:
    """Given the log's last frames (`window`) and the last frames a pass consumed
    (a prefix of the log ends with `consumed`), the frames the pass missed, or None
    when that is not certain: no alignment or several fit, or the overlap is under
    half the window (too many missed to trust an alignment of timestamped frames).
    Pure."""
    fits = [j for j in range(1, min(len(window), len(consumed)) + 1) if window[:j] == consumed[len(consumed) - j :]]
    if len(fits) != 1 or fits[0] * 2 <= len(window):
        return None
    return window[fits[0] :]


@dataclass(eq=False)
class _Watch:
    """One task's log pump and exit observer (see the module docstring)."""

    container_id: str
    task_id: int
    stdout_path: str
    stderr_path: str
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: Any = None
    thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        # RUNNING futures cannot be cancelled, so a cancelled wait() cannot cancel the watch.
        self.future.set_running_or_notify_cancel()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            sock = self.sock
        if sock is not None:
            _shutdown_socket(sock)


def _unreachable(why: str) -> ExecutorError:
    return ExecutorError(f"cannot reach the Docker engine: {why}")


class DockerExecutor(Executor):
    """Runs each task in its own container. See the module docstring."""

    name = "docker"
    capabilities = Capabilities(pause=True, oom_detection=True)

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
        self._watches: dict[str, _Watch] = {}
        self._oom_log = KernelOomLog(kernel_log) if kernel_log else None
        self._closed = False

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
            for path in (spec.stdout_path, spec.stderr_path):
                try:
                    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                    with open(path, "wb"):
                        pass
                except OSError as exc:
                    raise ExecutorError(f"task {spec.task_id}: cannot create output file {path}: {exc}") from exc
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
    def _watch_for(self, handle: Handle) -> _Watch:
        self._check_open()
        w = self._watches.get(handle.ref)
        if w is not None:
            return w
        try:
            stdout_path, stderr_path = handle.data["stdout"], handle.data["stderr"]
        except KeyError:
            raise ExecutorError(f"task {handle.task_id}: the handle carries no output paths") from None
        w = _Watch(handle.ref, handle.task_id, stdout_path, stderr_path)
        w.thread = threading.Thread(
            target=self._watch_main, args=(w,), name=f"hakuriver-watch-{handle.task_id}", daemon=True
        )
        self._watches[handle.ref] = w
        w.thread.start()
        return w

    def _watch_main(self, w: _Watch) -> None:
        try:
            result = self._watch(w)
        except BaseException as exc:
            log.exception("watch of task %s failed", w.task_id)
            err = exc if isinstance(exc, ExecutorError) else ExecutorError(f"task {w.task_id}: watch failed: {exc}")
            _settle(w.future, exc=err)
            return
        if result is None:
            _settle(w.future, exc=ExecutorError("the docker executor was closed before the task ended"))
        else:
            _settle(w.future, result)

    def _watch(self, w: _Watch) -> ExitResult | None:
        """Pump the log until the container stops; return how it ended (None: closed)."""
        docker = sdk()
        for path in (w.stdout_path, w.stderr_path):
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        backoff = 0.0
        trail = _Trail()
        with open(w.stdout_path, "ab", buffering=0) as out, open(w.stderr_path, "ab", buffering=0) as err:
            files = {_STDOUT: out, _STDERR: err}
            while not w.stopping.is_set():
                error: BaseException | None = None
                wrote = False
                try:
                    wrote = self._pump(w, files, trail, follow=True)
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
                    self._catch_up(w, files, trail if error is None else None)
                    if w.stopping.is_set():
                        return None
                    oom = (
                        self._oom_log is not None
                        and int(state.get("ExitCode") or 0) != 0
                        and not state.get("OOMKilled")
                        and self._oom_log.killed(w.container_id)
                    )
                    return exit_result(state, kernel_oom=oom)
                if error is not None:
                    log.warning("task %s: log stream broke (%s); resuming", w.task_id, docker_explanation(error))
                backoff = 0.1 if wrote else min(5.0, max(0.1, backoff * 2))
                if w.stopping.wait(backoff):
                    return None
        return None

    def _catch_up(self, w: _Watch, files: dict[int, Any], trail: _Trail | None) -> None:
        """Fetch what a follow stream can miss once the container has stopped.

        Docker 20.10's follow mode drops what the log copier flushes at exit: a
        last line without a trailing newline. A follow pass always delivers a
        *prefix* of the log, so what is missing is a suffix: after a clean pass
        (`trail` given) a short non-follow tail of the log is aligned with the
        last frames the pass consumed and only what lies beyond is written. When
        the alignment is not certain (a long run of identical frames) or the
        pass broke (`trail` None), the whole log is replayed against the byte
        counts instead, which is always exact.
        """
        try:
            missed = self._missed_frames(w, trail) if trail is not None else None
            if missed is None:
                log.debug("task %s: replaying its whole log to complete the output files", w.task_id)
                self._pump(w, files, _Trail(), follow=False)
                return
            if missed:
                log.debug("task %s: %d log message(s) recovered after the follow ended", w.task_id, len(missed))
            for kind, _ts, data in missed:
                target = files.get(kind)
                if target is not None and data:
                    _write_all(target, data)
        except Exception as exc:  # noqa: BLE001 - the exit status matters more than the tail
            if not w.stopping.is_set():
                log.warning("task %s: the end of its output may be missing: %s", w.task_id, docker_explanation(exc))

    def _missed_frames(self, w: _Watch, trail: _Trail) -> list[tuple[int, bytes, bytes]] | None:
        """The frames after the last pass's end, or None when that is not certain."""
        params = {"stdout": 1, "stderr": 1, "follow": 0, "tail": CATCH_UP_TAIL}
        window = list(self._frames(w, params))
        if len(window) < CATCH_UP_TAIL:  # the window is the whole log
            return window[trail.count :]
        return missed_after(window, list(trail.frames))

    def _frames(self, w: _Watch, params: dict[str, Any]) -> Iterator[tuple[int, bytes, bytes]]:
        """(stream, timestamp, data) for each message of the container's log.

        Uses the APIClient's request helpers directly because the SDK's `logs()`
        merges stdout and stderr. Each frame of the multiplexed stream is one
        log message, prefixed with its RFC 3339 timestamp (fixed width, UTC, so
        byte strings compare in time order).
        """
        api = self._api()
        url = api._url("/containers/{0}/logs", w.container_id)
        response = api._get(url, params={**params, "timestamps": 1}, stream=True)
        try:
            api._raise_for_status(response)
            sock = api._get_raw_response_socket(response)
            api._disable_socket_timeout(sock)  # a silent task must not time the stream out
            with w.lock:
                w.sock = sock
            if w.stopping.is_set():
                return
            raw = response.raw
            while True:
                header = _read_exact(raw, _FRAME.size)
                if len(header) < _FRAME.size:
                    return
                kind, length = _FRAME.unpack(header)
                payload = _read_exact(raw, length)
                if len(payload) < length:
                    return
                ts, sep, data = payload.partition(b" ")
                if not sep:
                    ts, data = b"", payload
                yield kind, ts, data
        finally:
            with w.lock:
                w.sock = None
            response.close()

    def _pump(self, w: _Watch, files: dict[int, Any], trail: _Trail, *, follow: bool) -> bool:
        """Replay the log from its start (following it if asked), appending what
        the files lack: each file's size is how much of its stream to skip.
        Records the pass in `trail`. Returns whether anything was written."""
        trail.reset()
        skip = {kind: os.fstat(f.fileno()).st_size for kind, f in files.items()}
        params = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all"}
        wrote = False
        for frame in self._frames(w, params):
            trail.add(frame)
            kind, _ts, data = frame
            target = files.get(kind)
            if target is None or not data:
                continue
            already = skip[kind]
            if already >= len(data):
                skip[kind] = already - len(data)
            else:
                skip[kind] = 0
                _write_all(target, data[already:])
                wrote = True
        return wrote

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

    async def check(self) -> str:
        """Reach the engine now; its version, or ExecutorError saying why not.
        (Not part of the Executor contract: the constructor never blocks, and an
        engine that comes up later is used then.)"""

        def version() -> str:
            docker = sdk()
            try:
                return str(self._api().version().get("Version", "unknown"))
            except docker.errors.DockerException as exc:
                raise ExecutorError(f"cannot reach the Docker engine: {docker_explanation(exc)}") from exc

        return await self._call(version)

    async def list_untracked(self, tracked: set[int]) -> list[int]:
        containers = await self._call(self._own_containers)
        found: set[int] = set()
        for c in containers:
            value = (c.get("Labels") or {}).get(LABEL_TASK_ID, "")
            if value.isdigit() and int(value) not in tracked:
                found.add(int(value))
        return sorted(found)

    def _own_containers(self) -> list[dict[str, Any]]:
        docker = sdk()
        try:
            return self._api().containers(
                all=True, filters={"label": [LABEL_TASK_ID, f"{LABEL_RUNNER}={self.runner_name}"]}
            )
        except docker.errors.DockerException as exc:
            raise ExecutorError(f"cannot list task containers: {docker_explanation(exc)}") from exc

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
            _settle(w.future, exc=ExecutorError("the docker executor was closed before the task ended"))
        if self._oom_log is not None:
            self._oom_log.close()
        await self._engine.close()
