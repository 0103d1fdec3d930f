"""The one contract every execution backend implements (Docker, systemd, fake).

Lifecycle, as the runner's task supervisor drives it:

    handle = await ex.start(spec)     # the task exists and is running
    <persist handle>                  # before anything is reported to the Host
    result = await ex.wait(handle)    # returns when the task has ended
    await ex.destroy(handle)          # remove what is left (container, unit)

After a runner restart the supervisor loads persisted handles and calls
`recover(handle)` for each: it returns the task's current `Presence`, and
`wait` then works on the recovered handle exactly as on a fresh one.
`fingerprint()` is the one health check: the runner calls it at start-up
to tell the admin what each backend reaches.

Rules for implementations:
- Every method is async and never blocks the event loop: SDK calls, NVML,
  subprocess waits and file reads go through a thread or an async API.
- `start` either returns a handle for a task that really started, or raises
  `ExecutorError` with a message a person can act on. It never leaves a
  half-started task behind when it raises.
- `wait` reports the real end: exit code, and `KILLED_OOM` for a memory
  kill. It does not decide `KILLED`; the supervisor knows whether a kill was
  asked for and maps the result itself. Likewise `TIMEOUT`, except from a
  backend that enforces time limits itself (`Capabilities.time_limit`).
- Stopping the runner process must never stop tasks: nothing an executor
  starts may be tied to the runner's lifetime.
- Handles are JSON-serialisable (`Handle.to_json`), since they are persisted.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ...models import ExitResult, Mount, NumaNode

if TYPE_CHECKING:
    from ...config import Config


@dataclass(frozen=True)
class TaskIdentity:
    """Who a Docker task runs as: numeric ids, looked up on the node (the
    image's own /etc/passwd plays no part)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    """Supplementary groups (besides `gid`)."""
    home: str | None = None
    """The account's home directory on the node, if it has one."""
    name: str = ""
    """The account's name, for messages."""


NOBODY = TaskIdentity(uid=65534, gid=65534, name="nobody")
"""The identity of a task whose submitter has no Unix account (`docker.task_user = "submitter"`)."""
ROOT = TaskIdentity(uid=0, gid=0, home="/root", name="root")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything an executor needs to start one task. Built by the runner from
    the Host's request, after checking it against the node's own policy
    (`hakuriver.policy`) and facts: mounts are resolved on the node."""

    task_id: int
    command: tuple[str, ...]
    """argv: the program and its arguments. Never joined into a shell string."""
    env: dict[str, str]
    """The user's `--env` values; executors add HAKURIVER_* variables."""
    stdout_path: str
    stderr_path: str
    shared_dir: str
    local_temp_dir: str
    cores: int | None = None
    memory: int | None = None
    gpus: tuple[int, ...] = ()
    numa: NumaNode | None = None
    image: str | None = None
    """Docker only: the local image to run (`hakuriver/<env>:base`)."""
    mounts: tuple[Mount, ...] = ()
    privileged: bool = False
    user: str = ""
    """The HakuRiver user who submitted the task."""
    unix_user: str | None = None
    """Their Unix account on this node, if they have one (who the task runs as)."""
    identity: TaskIdentity | None = None
    """Docker: the uid/gid the container runs as (`runner.identity`); None
    runs it as `NOBODY`, never as the image's default user."""
    time_limit: int | None = None
    """Seconds of wall time after the start before the task is stopped; only
    backends with `Capabilities.time_limit` read it (the supervisor enforces
    it for the others)."""
    timeout_grace: float = 30.0
    """Seconds between SIGTERM and SIGKILL at the time limit (`runner.timeout_grace`)."""
    batch_id: int | None = None
    """An array task's batch; None for other tasks."""
    array_index: int | None = None
    """An array task's index (`--array`); None for other tasks."""
    attempt: int = 1
    """Which run of the task this is (`--retries`); its output files are its own (`naming.stdout_path`)."""

    def task_env(self) -> dict[str, str]:
        """The environment the task sees inside its sandbox (Docker paths)."""
        env = dict(self.env)
        env["HAKURIVER_TASK_ID"] = str(self.task_id)
        env.update(self.array_env())
        return env

    def array_env(self) -> dict[str, str]:
        """`HAKURIVER_ARRAY_INDEX` and `HAKURIVER_BATCH_ID` of an array task (else nothing)."""
        if self.array_index is None:
            return {}
        return {"HAKURIVER_ARRAY_INDEX": str(self.array_index), "HAKURIVER_BATCH_ID": str(self.batch_id)}


@dataclass
class Handle:
    """What the runner persists to find a task again after a restart."""

    task_id: int
    executor: str
    ref: str
    """Backend reference: a container id, a unit name."""
    data: dict[str, Any] = field(default_factory=dict)
    """Backend-owned state (output paths, names); only the backend reads it."""
    started: bool = False
    """The supervisor's mark: `start` returned this handle, so the task really
    started. The placeholder persisted before `start` is not marked."""
    started_at: float | None = None
    """The supervisor's mark too: when `start` returned (wall clock, seconds
    since the epoch), what a time limit counts from, across runner restarts."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "task_id": str(self.task_id),
            "executor": self.executor,
            "ref": self.ref,
            "data": self.data,
            "started": self.started,
        }
        if self.started_at is not None:
            data["started_at"] = self.started_at
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Handle:
        backend = dict(data.get("data") or {})
        # Handles persisted by earlier versions carry the mark in `data`.
        started = bool(data.get("started", False)) | bool(backend.pop("started", False))
        started_at = data.get("started_at")
        return cls(
            task_id=int(data["task_id"]),
            executor=str(data["executor"]),
            ref=str(data["ref"]),
            data=backend,
            started=started,
            started_at=float(started_at) if isinstance(started_at, (int, float)) else None,
        )


class Presence(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    EXITED = "exited"
    """Ended; `wait` returns its result at once."""
    MISSING = "missing"
    """Gone without a trace (removed by hand, node rebooted): the result is unknown."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do beyond the contract's minimum."""

    pause: bool = True
    """`pause` and `resume` work (the supervisor refuses them otherwise)."""
    time_limit: bool = False
    """The backend enforces `LaunchSpec.time_limit` itself, in what it starts
    (systemd's `RuntimeMaxSec=`), so the limit holds even while no runner
    runs, and `wait` reports `TIMEOUT` when it struck. Otherwise the
    supervisor enforces it with `stop` (SIGTERM, then SIGKILL)."""


@dataclass(frozen=True)
class Fingerprint:
    """What a backend found when it reached what it drives (`Executor.fingerprint`)."""

    version: str
    """The version of what it drives: the Docker engine's, the task launcher's protocol."""
    summary: str
    """One line for the runner's start-up log."""
    facts: Mapping[str, Any] = field(default_factory=dict)
    """What else it was told (systemd: the launcher's paths and allow-list)."""


class Executor(abc.ABC):
    """An execution backend. See the module docstring for the contract."""

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config: Config) -> Self:
        """This backend for a runner's configuration. Never blocks and reaches
        nothing yet: a backend connects on first use."""

    async def unavailable(self) -> str | None:
        """Why this backend cannot work on this node at all (a missing system
        piece), or None when it can. One that only cannot be reached yet is
        available: `fingerprint` says so, and it is used once it can be."""
        return None

    @abc.abstractmethod
    async def fingerprint(self) -> Fingerprint:
        """Reach what this backend drives (the Docker engine, the task launcher)
        now and say what it found; ExecutorError saying why it cannot.

        Nothing calls it implicitly: constructing a backend never blocks or
        fails on an absent engine, and one that comes up later is used then.
        The runner calls it once at start-up, to tell the admin."""

    @abc.abstractmethod
    async def start(self, spec: LaunchSpec) -> Handle:
        """Start the task `spec` describes; return its handle once it really runs.

        Raises ExecutorError with a message a person can act on, and then
        leaves no half-started task behind. The handle's `data` must let
        `recover` and `wait` find the task again from another process."""

    @abc.abstractmethod
    async def wait(self, handle: Handle) -> ExitResult:
        """How the task ended, once it has ended and its output is complete in
        its files.

        The real end: the exit code, and `KILLED_OOM` for a memory kill; never
        `KILLED`, which the supervisor decides. Works the same on a handle
        from `recover`. Cancelling the wait leaves the task alone."""

    @abc.abstractmethod
    async def stop(self, handle: Handle, signal: str = "SIGKILL") -> None:
        """Send `signal` to the task (SIGKILL by default). A task that already
        ended is not an error."""

    @abc.abstractmethod
    async def pause(self, handle: Handle) -> None:
        """Freeze every process of the task (where `capabilities.pause`). A task
        already paused is not an error; ExecutorError when it no longer runs."""

    @abc.abstractmethod
    async def resume(self, handle: Handle) -> None:
        """Thaw a paused task. A task that is not paused is not an error;
        ExecutorError when it no longer runs."""

    @abc.abstractmethod
    async def destroy(self, handle: Handle) -> None:
        """Remove what the task left (container, unit, status files), killing it
        first if it still runs. Idempotent."""

    @abc.abstractmethod
    async def recover(self, handle: Handle) -> Presence:
        """Re-attach to a task after a runner restart and say where it stands.

        Also accepts the placeholder handle the supervisor persists before
        `start` (its ref follows from the task id): MISSING then says the task
        never started. Afterwards `wait` works as on a fresh handle."""

    async def close(self) -> None:  # noqa: B027 - optional hook; a no-op by default
        """Release backend resources (clients, threads, watches). Tasks keep
        running; another executor's `recover` finds them."""
