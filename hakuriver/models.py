"""The domain model shared by the Host, the Runner and the CLIs.

Everything here is plain data: no I/O, no framework imports. The JSON forms
(`to_json` / `from_json`) are the wire format of the HTTP API, so changing a
field name here is an API change.

Task IDs are 64-bit integers; JSON carries them as *strings* because
JavaScript and many JSON tools lose precision above 2**53.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskState(enum.StrEnum):
    PENDING = "pending"
    ASSIGNING = "assigning"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    KILLED_OOM = "killed_oom"
    LOST = "lost"
    TIMEOUT = "timeout"
    """Stopped by its runner at its time limit (`--time`): SIGTERM, then SIGKILL."""
    CANCELLED = "cancelled"
    """Never started: a dependency it needed (`--after`) can no longer be met."""

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def holds_resources(self) -> bool:
        return self in HOLDING_STATES


FINAL_STATES = frozenset(
    {
        TaskState.COMPLETED,
        TaskState.FAILED,
        TaskState.KILLED,
        TaskState.KILLED_OOM,
        TaskState.LOST,
        TaskState.TIMEOUT,
        TaskState.CANCELLED,
    }
)
"""States after which the Host ignores reports (with one exception, see LOST)."""

HOLDING_STATES = frozenset({TaskState.ASSIGNING, TaskState.RUNNING, TaskState.PAUSED})
"""States in which a task counts against its node's cores, memory and GPUs."""

# Every allowed edge. The Host applies state changes as guarded updates
# (`UPDATE ... WHERE state IN (<allowed predecessors>)`), so anything not
# listed here can never be written, whatever order reports arrive in.
#
# LOST is final for *Host-side* decisions, but a runner that comes back and
# reports the task as still alive (or reports how it ended while it was cut
# off) is the better witness: LOST may then move on. Nothing else leaves a
# final state.
#
# TIMEOUT is entered from every state in which a runner holds the task
# (assigning included: a fast limit may fire before `running` is reported,
# and LOST: the runner enforces the limit while cut off from the Host).
TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # CANCELLED is entered from pending only: a task whose dependency failed
    # never started (see host/dependencies.py).
    TaskState.PENDING: frozenset({TaskState.ASSIGNING, TaskState.KILLED, TaskState.FAILED, TaskState.CANCELLED}),
    TaskState.ASSIGNING: frozenset(
        {
            TaskState.RUNNING,
            TaskState.PAUSED,
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.KILLED_OOM,
            TaskState.LOST,
            TaskState.TIMEOUT,
        }
    ),
    TaskState.RUNNING: frozenset(
        {
            TaskState.PAUSED,
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.KILLED_OOM,
            TaskState.LOST,
            TaskState.TIMEOUT,
        }
    ),
    TaskState.PAUSED: frozenset(
        {
            TaskState.RUNNING,
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.KILLED_OOM,
            TaskState.LOST,
            TaskState.TIMEOUT,
        }
    ),
    TaskState.LOST: frozenset(
        {
            TaskState.RUNNING,
            TaskState.PAUSED,
            TaskState.COMPLETED,
            TaskState.FAILED,
            TaskState.KILLED,
            TaskState.KILLED_OOM,
            TaskState.TIMEOUT,
        }
    ),
    TaskState.COMPLETED: frozenset(),
    TaskState.FAILED: frozenset(),
    TaskState.KILLED: frozenset(),
    TaskState.KILLED_OOM: frozenset(),
    TaskState.TIMEOUT: frozenset(),
    TaskState.CANCELLED: frozenset(),
}


REQUEUE_FROM = frozenset({TaskState.ASSIGNING, TaskState.RUNNING, TaskState.PAUSED, TaskState.LOST})
"""The one way back to PENDING (`--retries`, host/retries.py), kept out of
TRANSITIONS on purpose: no runner report and no default `transition` may
ever enter PENDING. A retry moves a task from one of these states straight to
`pending` in one guarded write that also checks the attempt number and
records the ending attempt, so the task is never seen final in between
(its dependents are not cancelled, `--wait` does not return), and a late
report of the old attempt finds a newer attempt number and changes nothing."""


def predecessors(target: TaskState) -> frozenset[TaskState]:
    """States from which `target` may be entered."""
    return frozenset(s for s, nxt in TRANSITIONS.items() if target in nxt)


SYSTEMD_CONTAINER = "NULL"
"""`--container NULL` selects the systemd-run executor instead of Docker."""


@dataclass(frozen=True)
class Target:
    """Where a task must run: `HOST[:NUMA][::GPU,GPU...]`."""

    node: str
    numa: int | None = None
    gpus: tuple[int, ...] = ()

    def __str__(self) -> str:
        text = self.node
        if self.numa is not None:
            text += f":{self.numa}"
        if self.gpus:
            text += "::" + ",".join(str(g) for g in self.gpus)
        return text


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = False

    def __str__(self) -> str:
        return f"{self.host_path}:{self.container_path}" + (":ro" if self.read_only else "")


@dataclass(frozen=True)
class TaskRequest:
    """A validated submission: one task per target, or one auto-placed task."""

    command: tuple[str, ...]
    cores: int = 1
    memory: int | None = None
    container: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[Mount, ...] = ()
    privileged: bool = False
    targets: tuple[Target, ...] = ()
    gpus: int = 0
    """GPU *count* for automatic placement (no target); targets name GPU ids instead."""
    time_limit: int | None = None
    """Seconds of wall time from its start after which its runner stops it (`--time`); None: no limit."""
    after: tuple[int, ...] = ()
    """Tasks that must all end `completed` before this one starts (`--after`)."""
    after_any: tuple[int, ...] = ()
    """Tasks that must all reach a final state, whichever, before this one starts (`--after-any`)."""
    array: tuple[int, ...] = ()
    """Array indices (`--array`): one task per index, in one batch; empty: no array."""
    array_max_running: int = 0
    """At most this many tasks of the array hold resources at once (`%N`); 0: no limit."""
    commands: tuple[tuple[str, ...], ...] = ()
    """A sweep's commands, one per array index (`array` is then 0..n-1); empty: every task runs `command`."""
    retries: int = 0
    """How many times a task that ended `lost`, or `failed` on the node's side, runs again (`--retries`)."""
    retry_on_exit: bool = False
    """Retry a non-zero exit of the command too (`--retry-on-exit`)."""
    priority: int = 0
    """Its place among pending tasks (`--priority`, `policy.PRIORITY_MIN..PRIORITY_MAX`): higher goes first."""


@dataclass(frozen=True)
class TaskAttempt:
    """One earlier run of a task that was retried (`--retries`): where it ran and how it ended."""

    attempt: int
    """1-based."""
    node: str | None
    started_at: float | None
    finished_at: float | None
    state: TaskState
    """How it ended: `lost` or `failed`."""
    exit_code: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "node": self.node,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "state": str(self.state),
            "exit_code": self.exit_code,
            "error": self.error,
        }


@dataclass
class Task:
    """A task as the Host stores it. `node`, `numa` and `gpus` are the placement."""

    id: int
    batch_id: int
    state: TaskState
    command: list[str]
    cores: int
    memory: int | None
    container: str | None
    env: dict[str, str]
    mounts: list[Mount]
    privileged: bool
    target: Target | None
    """Where the user asked it to run, or None for automatic placement."""
    node: str | None = None
    numa: int | None = None
    gpus: list[int] = field(default_factory=list)
    gpu_count: int = 0
    submitted_at: float = 0.0
    assigned_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    owner: str | None = None
    """Who submitted it; None for tasks from before users existed."""
    output_error: str | None = None
    """Set when the task's stdout/stderr files are known or suspected to be
    incomplete (ENOSPC, EIO, a vanished shared dir): what went wrong, e.g.
    "stdout: No space left on device (ENOSPC) after 1.0 MiB". The task's state
    and exit code are still its real ones."""
    time_limit: int | None = None
    """Seconds of wall time from its start (paused time counts, as in Slurm)
    after which its runner stops it and it ends `timeout`; None: no limit."""
    after: list[int] = field(default_factory=list)
    """Its `--after` dependencies (stored in `task_dependencies`)."""
    after_any: list[int] = field(default_factory=list)
    """Its `--after-any` dependencies."""
    waiting_for: list[int] = field(default_factory=list)
    """Computed, not stored: the dependencies a pending task still waits for."""
    array_index: int | None = None
    """Its index in its batch's array (`--array`; `HAKURIVER_ARRAY_INDEX`); None: not an array task."""
    array_max_running: int = 0
    """Its batch's `%N`: at most this many of the batch's tasks hold resources at once; 0: no limit."""
    retries: int = 0
    """How many retries it may have (`--retries`); 0: none."""
    retry_on_exit: bool = False
    """Whether a non-zero exit is retried too (`--retry-on-exit`)."""
    attempt: int = 1
    """Which run this is, 1-based: a retry puts the task back to `pending` with the next number."""
    attempts: list[TaskAttempt] = field(default_factory=list)
    """Not a column: the earlier attempts (`task_attempts`), filled in for the task views."""
    priority: int = 0
    """Higher is scheduled first (`--priority`; default 0; only an admin goes above it)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": str(self.id),
            "batch_id": str(self.batch_id),
            "state": str(self.state),
            "command": list(self.command),
            "cores": self.cores,
            "memory": self.memory,
            "container": self.container,
            "env": dict(self.env),
            "mounts": [str(m) for m in self.mounts],
            "privileged": self.privileged,
            "target": None if self.target is None else str(self.target),
            "node": self.node,
            "numa": self.numa,
            "gpus": list(self.gpus),
            "gpu_count": self.gpu_count,
            "submitted_at": self.submitted_at,
            "assigned_at": self.assigned_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "error": self.error,
            "owner": self.owner,
            "output_error": self.output_error,
            "time_limit": self.time_limit,
            "after": [str(i) for i in self.after],
            "after_any": [str(i) for i in self.after_any],
            "waiting_for": [str(i) for i in self.waiting_for],
            "array_index": self.array_index,
            "array_max_running": self.array_max_running or None,
            "retries": self.retries,
            "retry_on_exit": self.retry_on_exit,
            "attempt": self.attempt,
            "attempts": [a.to_json() for a in self.attempts],
            "priority": self.priority,
        }


@dataclass(frozen=True)
class NumaNode:
    id: int
    cpus: tuple[int, ...]
    memory: int
    """Bytes of memory local to this NUMA node (0 when unknown)."""

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "cpus": list(self.cpus), "memory": self.memory}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NumaNode:
        return cls(id=int(data["id"]), cpus=tuple(int(c) for c in data["cpus"]), memory=int(data.get("memory", 0)))


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str = ""
    uuid: str = ""
    memory_total: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "uuid": self.uuid, "memory_total": self.memory_total}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GpuInfo:
        return cls(
            index=int(data["index"]),
            name=str(data.get("name", "")),
            uuid=str(data.get("uuid", "")),
            memory_total=int(data.get("memory_total", 0)),
        )


MAX_REASON_CHARS = 300
"""The longest reason a runner may give for a capability it lacks."""


@dataclass(frozen=True)
class Capability:
    """Whether a node can run one kind of task, and if not, why (one line)."""

    available: bool
    reason: str | None = None
    """Why not, in words a person can act on; None when available."""
    lasting: bool = True
    """Whether "not available" lasts until someone fixes the node (no systemd,
    no launcher, a broken sudo rule) rather than a moment's outage (a Docker
    engine restarting). Only lasting refusals make the Host refuse a task at
    submit; during an outage tasks wait."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"available": self.available}
        if not self.available and self.reason:
            data["reason"] = self.reason
        if not self.available and not self.lasting:
            data["lasting"] = False
        return data

    @classmethod
    def from_json(cls, data: Any) -> Capability:
        """Strict: ValueError on anything but `{"available": bool[, "reason": str][, "lasting": bool]}`."""
        if not isinstance(data, dict) or not set(data) <= {"available", "reason", "lasting"}:
            raise ValueError('a capability must be {"available": true|false, "reason": "..."}')
        available = data.get("available")
        reason = data.get("reason")
        lasting = data.get("lasting", True)
        if not isinstance(available, bool):
            raise ValueError("a capability's 'available' must be true or false")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("a capability's 'reason' must be a string")
        if not isinstance(lasting, bool):
            raise ValueError("a capability's 'lasting' must be true or false")
        if available:
            return cls(True)
        # A runner's words end up in refusals and tables: one printable line.
        text = " ".join((reason or "").split())[:MAX_REASON_CHARS]
        return cls(False, "".join(c for c in text if c.isprintable()) or "no reason given", lasting)


TASK_KINDS = ("docker", "null")
"""The kinds of task a node may or may not be able to run: Docker tasks, and
`--container NULL` ones (systemd). The keys of `NodeCapabilities.to_json()`."""

KIND_WORDS = {"docker": "Docker tasks", "null": f"--container {SYSTEMD_CONTAINER} tasks"}


def task_kind(container: str | None) -> str:
    """The kind of task a container choice makes: "null" for NULL, "docker" otherwise."""
    return "null" if container == SYSTEMD_CONTAINER else "docker"


@dataclass(frozen=True)
class NodeCapabilities:
    """What kinds of task a runner says its node can run, as it reports them at
    registration and in heartbeats. A kind it did not report (a runner from
    before capabilities) is unknown, and unknown counts as able: the Host never
    refuses work on a guess."""

    docker: Capability | None = None
    null: Capability | None = None

    def get(self, kind: str) -> Capability | None:
        return self.docker if kind == "docker" else self.null if kind == "null" else None

    def refusal(self, kind: str, *, lasting_only: bool = False) -> str | None:
        """Why this node cannot run tasks of `kind`, or None when it can (or may).
        `lasting_only`: ignore a passing outage (see `Capability.lasting`)."""
        cap = self.get(kind)
        if cap is None or cap.available or (lasting_only and not cap.lasting):
            return None
        return cap.reason or "no reason given"

    def to_json(self) -> dict[str, Any]:
        return {kind: cap.to_json() for kind in TASK_KINDS if (cap := self.get(kind)) is not None}

    def summary(self) -> str:
        """One line for people: `docker,null`, `docker (null: systemd is not PID 1)`,
        `none (docker: ...; null: ...)`; `unknown` when the runner said nothing."""
        able = [kind for kind in TASK_KINDS if (cap := self.get(kind)) is not None and cap.available]
        unable = [f"{kind}: {reason}" for kind in TASK_KINDS if (reason := self.refusal(kind))]
        if not able and not unable:
            return "unknown"
        text = ",".join(able) or "none"
        return f"{text} ({'; '.join(unable)})" if unable else text

    @classmethod
    def from_json(cls, data: Any) -> NodeCapabilities:
        """ValueError on a malformed entry. Kinds this code does not know are
        ignored: a newer runner may report more, and must not be turned away."""
        if not isinstance(data, dict):
            raise ValueError('\'capabilities\' must be an object like {"docker": {"available": true}}')
        return cls(**{kind: Capability.from_json(data[kind]) for kind in TASK_KINDS if kind in data})


@dataclass(frozen=True)
class NodeResources:
    """What a runner offers the scheduler, as it reports at registration."""

    hostname: str
    url: str
    cores: int
    memory: int
    numa: tuple[NumaNode, ...] = ()
    gpus: tuple[GpuInfo, ...] = ()
    capabilities: NodeCapabilities | None = None
    """What it can run; None from a runner that does not say (it may run anything)."""

    def refusal(self, kind: str, *, lasting_only: bool = False) -> str | None:
        """Why this node cannot run tasks of `kind` (see `task_kind`), or None."""
        return None if self.capabilities is None else self.capabilities.refusal(kind, lasting_only=lasting_only)

    def numa_node(self, numa_id: int) -> NumaNode | None:
        return next((n for n in self.numa if n.id == numa_id), None)

    def gpu_ids(self) -> frozenset[int]:
        return frozenset(g.index for g in self.gpus)


@dataclass(frozen=True)
class ExitResult:
    """How a task ended, as an executor observed it."""

    state: TaskState
    exit_code: int | None = None
    error: str | None = None
    output_error: str | None = None
    """Why the task's output files are incomplete, if they are (see `Task.output_error`)."""

    def __post_init__(self) -> None:
        if not self.state.is_final:
            raise ValueError(f"ExitResult needs a final state, not {self.state}")


@dataclass(frozen=True)
class RunnerReport:
    """One state change a runner tells the Host about one of its tasks: its
    start (`running`) or its result. The runner builds and sends it
    (`to_json`); the Host builds it from what it received and applies it
    (`host/reports.py`)."""

    task_id: int
    state: TaskState
    exit_code: int | None = None
    error: str | None = None
    output_error: str | None = None
    """Only with a final state: why the task's output files are incomplete."""
    attempt: int = 1

    def to_json(self, *, with_id: bool) -> dict[str, Any]:
        """The report's fields (and `task_id`, for an item of a batch)."""
        out: dict[str, Any] = {"task_id": str(self.task_id)} if with_id else {}
        out["state"] = str(self.state)
        if self.attempt != 1:
            # Only a retried task's later runs (`--retries`): a Host from before retries never orders those.
            out["attempt"] = self.attempt
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.error is not None:
            out["error"] = self.error
        if self.output_error is not None:
            # Sent only when set, so a Host from before the field accepts every other report.
            out["output_error"] = self.output_error
        return out
