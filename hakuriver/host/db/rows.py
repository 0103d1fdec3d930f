"""Rows and models: the records the database returns, and the conversions
between a row and a `models` object (row factories run in the database
thread)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import ValidationError
from ...jsoncodec import dumps_text, loads
from ...models import (
    GpuInfo,
    Mount,
    NodeCapabilities,
    NodeResources,
    NumaNode,
    Target,
    Task,
    TaskAttempt,
    TaskState,
)
from ...parsing import parse_target

log = logging.getLogger(__name__)

_CHUNK = 500
"""Most rows per statement where a statement takes rows as parameters."""

USAGE_GROUPS = ("user", "node")
"""What `Database.usage` can sum by: the task's owner or its node."""


@dataclass(frozen=True)
class UsageRow:
    """The resources one owner (or node) used: `name` is None for tasks from
    before users (by user) or that never had a node (by node)."""

    name: str | None
    tasks: int
    core_hours: float
    gpu_hours: float
    hours: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "core_hours": round(self.core_hours, 6),
            "gpu_hours": round(self.gpu_hours, 6),
            "hours": round(self.hours, 6),
        }


def _dumps(value: Any) -> str:
    # Lone surrogates (surrogateescape'd argv bytes) cannot be stored raw
    # (SQLite stores UTF-8); dumps_text escapes them then.
    return dumps_text(value)


def _mounts_json(mounts: Iterable[Mount]) -> str:
    return _dumps([[m.host_path, m.container_path, bool(m.read_only)] for m in mounts])


@functools.lru_cache(maxsize=4096)
def target_from_stored(text: str | None) -> Target | None:
    """The typed target of a stored row. Targets are validated at submit, so
    one that no longer parses means a damaged row: it becomes a target that
    names no node (node names never hold ':'), so it waits, never misplaced."""
    if text is None:
        return None
    try:
        return parse_target(text)
    except ValidationError:
        log.error("stored target %r does not parse; the task can never be placed", text)
        return Target(node=text)


def _task_from_row(_cursor: Any, row: Sequence[Any]) -> Task:
    """Row factory for `_TASK_COLUMNS` (runs in the database thread for lists)."""
    return Task(
        id=row[0],
        batch_id=row[1],
        state=TaskState(row[2]),
        command=loads(row[3]),
        cores=row[4],
        memory=row[5],
        container=row[6],
        env=loads(row[7]),
        mounts=[Mount(h, c, bool(ro)) for h, c, ro in loads(row[8])],
        privileged=bool(row[9]),
        target=target_from_stored(row[10]),
        gpu_count=row[11],
        node=row[12],
        numa=row[13],
        gpus=loads(row[14]),
        submitted_at=row[15],
        assigned_at=row[16],
        started_at=row[17],
        finished_at=row[18],
        exit_code=row[19],
        error=row[20],
        owner=row[21],
        output_error=row[22],
        time_limit=row[23],
        array_index=row[24],
        array_max_running=row[25] or 0,
        retries=row[26] or 0,
        retry_on_exit=bool(row[27]),
        attempt=row[28] or 1,
        priority=row[29] or 0,
    )


def _attempt_from_row(_cursor: Any, row: Sequence[Any]) -> tuple[int, TaskAttempt]:
    """Row factory for `task_id, ` + `_ATTEMPT_COLUMNS`."""
    return row[0], TaskAttempt(
        attempt=row[1],
        node=row[2],
        started_at=row[3],
        finished_at=row[4],
        state=TaskState(row[5]),
        exit_code=row[6],
        error=row[7],
    )


def _task_params(task: Task, now: float) -> tuple[Any, ...]:
    return (
        int(task.id),
        int(task.batch_id),
        str(TaskState(task.state)),
        _dumps(list(task.command)),
        int(task.cores),
        None if task.memory is None else int(task.memory),
        task.container,
        _dumps(dict(task.env)),
        _mounts_json(task.mounts),
        1 if task.privileged else 0,
        None if task.target is None else str(task.target),
        int(task.gpu_count),
        task.node,
        None if task.numa is None else int(task.numa),
        _dumps([int(g) for g in task.gpus]),
        float(task.submitted_at),
        task.assigned_at,
        task.started_at,
        task.finished_at,
        task.exit_code,
        task.error,
        task.owner,
        task.output_error,
        None if task.time_limit is None else int(task.time_limit),
        None if task.array_index is None else int(task.array_index),
        int(task.array_max_running or 0),
        int(task.retries or 0),
        1 if task.retry_on_exit else 0,
        int(task.attempt or 1),
        int(task.priority),
        now,
    )


@dataclass(frozen=True)
class Drain:
    """An admin's drain of a node: when, by whom, why (`reason` may be empty)."""

    at: float
    by: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": self.at}


@dataclass(frozen=True)
class NodeRecord:
    """A registered node as the Host stores it."""

    hostname: str
    url: str
    cores: int
    memory: int
    numa: tuple[NumaNode, ...]
    gpus: tuple[GpuInfo, ...]
    online: bool
    registered_at: float
    last_heartbeat: float
    stats: dict[str, Any] = field(default_factory=dict)
    identity_hash: str | None = None
    """sha256 of the key of the runner this name is bound to (None: unbound)."""
    order_token: str = ""
    """What the Host presents to this runner; the runner chose it. Never shown."""
    capabilities: NodeCapabilities | None = None
    """What its runner last said it can run; None if it never said."""
    drain: Drain | None = None
    """Set while an admin has drained the node: no new task is placed there."""

    @property
    def resources(self) -> NodeResources:
        return NodeResources(
            hostname=self.hostname,
            url=self.url,
            cores=self.cores,
            memory=self.memory,
            numa=self.numa,
            gpus=self.gpus,
            capabilities=self.capabilities,
        )


def _node_from_row(_cursor: Any, row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        hostname=row[0],
        url=row[1],
        cores=row[2],
        memory=row[3],
        numa=tuple(NumaNode.from_json(n) for n in loads(row[4])),
        gpus=tuple(GpuInfo.from_json(g) for g in loads(row[5])),
        online=bool(row[6]),
        registered_at=row[7],
        last_heartbeat=row[8],
        stats=loads(row[9]),
        identity_hash=row[10],
        order_token=row[11],
        capabilities=_capabilities_from_text(row[12]),
        drain=None if row[13] is None else Drain(at=row[13], by=row[14] or "", reason=row[15] or ""),
    )


def _capabilities_from_text(text: str | None) -> NodeCapabilities | None:
    if text is None:
        return None
    try:
        return NodeCapabilities.from_json(loads(text))
    except ValueError:
        # Written by a newer Host (a kind this one does not know): unknown, so
        # nothing is refused on it; the runner's next heartbeat says again.
        log.warning("ignoring unreadable node capabilities %r", text[:200])
        return None


def _capabilities_text(caps: NodeCapabilities | None) -> str | None:
    return None if caps is None else _dumps(caps.to_json())


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str
    """`admin` or `user`."""
    unix_user: str | None
    created_at: float
    tokens: int = 0
    """How many live tokens the user has."""
    max_cores: int | None = None
    """The user's own limits (`scheduler.LIMIT_NAMES`); None: the config's
    default applies, 0: unlimited."""
    max_gpus: int | None = None
    max_running: int | None = None

    def own_limits(self) -> dict[str, int | None]:
        return {"max_cores": self.max_cores, "max_gpus": self.max_gpus, "max_running": self.max_running}


def _user_from_row(_cursor: Any, row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        name=row[0],
        role=row[1],
        unix_user=row[2],
        created_at=row[3],
        tokens=row[4],
        max_cores=row[5],
        max_gpus=row[6],
        max_running=row[7],
    )


_LIMIT_COLUMNS = ("max_cores", "max_gpus", "max_running")
"""The users columns of per-user limits (the names of `scheduler.LIMIT_NAMES`)."""
