"""Placement and resource accounting. Pure: no I/O, no asyncio, deterministic.

Accounting (`Ledger`)
---------------------
A task holds its node's resources from the moment it is placed (assigning)
through running and paused, until it reaches a final state. Per node the
ledger counts cores, memory and GPU ids; a task pinned to a NUMA node also
counts its cores and memory against that NUMA node. Memory `None` means "no
memory request": it counts 0 and always fits. Release is idempotent per task
id and frees exactly what was held, whatever the task object says later.

Placement (`Scheduler.schedule`)
--------------------------------
FIFO by task id. A targeted task goes to its node (its NUMA node / GPU ids
when named). An untargeted task goes to the tightest-fitting online node:
least free GPUs left for a GPU task (a CPU-only task prefers nodes without
GPUs), then least cores left, then least memory left, then hostname. A GPU
count gets the lowest free ids (avoiding ids a blocked task is waiting for).
Only nodes able to run the task's kind are candidates (`NodeResources.refusal`:
a node whose runner says it has no Docker engine or no systemd for
`--container NULL`); a node that says nothing may run anything.

Backfill is conservative and needs no runtime estimates. A blocked task H
gets a reservation on one node: its target, or for an untargeted task the
online node where it fits by capacity and is closest to fitting now. A later
task S may use that node only if it cannot delay H: for every dimension
(node cores, node memory, cores/memory of H's NUMA node, H's GPU ids or GPU
count) S takes none of it or what stays free after S still covers H's need.
Since every task takes at least one core, a node whose reservation is short of
cores admits nothing; a task waiting only for GPU 0 lets CPU-only work use the
spare cores as long as its own cores and memory still fit.

A drained node (`drained`: an admin's `node drain`) gets no new task and no
reservation: a targeted task waits pending until the node is resumed (the
pass records it in `PassStats.drained`), an untargeted one goes elsewhere. The
node's running tasks keep their holds in the ledger and end normally.

Within one pass free capacity only shrinks and reservations only grow, so a
request shape that failed once fails again: later tasks of the same shape are
skipped in O(1). A pass fully evaluates at most `max_examined` tasks and makes
at most `max_reservations` reservations. Blocked tasks past that cap keep
their place in the queue without a reservation for this pass; as the tasks
ahead of them start they move into the reserved head of the queue, so every
task is protected before long, while nodes nobody reserved keep filling.

Per-user limits (`UserLimits`)
------------------------------
A task whose owner would go over one of their limits (cores, GPUs, or tasks
holding resources at once: `max_cores`, `max_gpus`, `max_running`) if it
started now is skipped: it stays pending, gets no reservation and is not the
protected head, so it never blocks other users' work. What counts against an
owner is what their tasks in a holding state hold (assigning, running,
paused: the ledger), placements of the same pass included. Within one owner
the queue stays FIFO: once a task of theirs is held back by a limit, their
later tasks wait behind it in this pass. A task that alone exceeds its
owner's limit is refused at submit (`check_fits_limits`); one left so by a
lowered limit waits, saying so, until the limit is raised or it is killed.

Array limits (`Task.array_max_running`)
---------------------------------------
An array's `%N` works like a per-user `max_running` for its batch: while N
tasks of the batch hold resources (`Ledger.batch_running`), its other tasks
are skipped with the reason `limit: array max-running`, get no reservation and
are never the protected head.

Why a task waits (`PassStats.reasons`)
--------------------------------------
Each pass records one short reason per pending task it looked at and did not
place (`limit: max-gpus ...`, `reserved: head of queue on gpu1 ...`,
`resources: ...`, `node gpu1 offline`, `position: ...`), at most
`max_reasons` of them. They live in memory only and are replaced by the next
pass.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ..errors import Unschedulable
from ..models import KIND_WORDS, NodeResources, Target, Task, task_kind
from ..parsing import format_size

DEFAULT_MAX_EXAMINED = 1000
DEFAULT_MAX_RESERVATIONS = 128
DEFAULT_MAX_REASONS = 10_000
"""Most wait reasons one pass records (the rest read as `position`)."""
MAX_REASONS = 3
"""Nodes named, each with its reason, when no node can run a kind of task."""


class Placement(NamedTuple):
    """Where the scheduler put a task (a tuple, as `Database.assign_many` takes)."""

    task_id: int
    node: str
    numa: int | None
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Hold:
    """What one task holds on its node."""

    task_id: int
    node: str
    cores: int
    memory: int
    numa: int | None
    gpus: tuple[int, ...]
    owner: str | None = None
    batch: int | None = None


@dataclass(frozen=True)
class OwnerUsage:
    """What one owner's holding tasks hold, summed over every node."""

    cores: int = 0
    gpus: int = 0
    running: int = 0
    """Tasks holding resources (assigning, running, paused)."""


class _Usage:
    __slots__ = ("cores", "memory", "gpus", "numa_cores", "numa_memory")

    def __init__(self) -> None:
        self.cores = 0
        self.memory = 0
        self.gpus: set[int] = set()
        self.numa_cores: dict[int, int] = {}
        self.numa_memory: dict[int, int] = {}


@dataclass(frozen=True)
class NumaFree:
    cores: int
    memory: int | None
    """None when the node does not report this NUMA node's memory."""


@dataclass(frozen=True)
class FreeView:
    """What is free on a node now (may be negative if a node shrank under its holds)."""

    hostname: str
    cores: int
    memory: int
    gpus: frozenset[int]
    numa: dict[int, NumaFree] = field(default_factory=dict)


@dataclass(frozen=True)
class Used:
    cores: int
    memory: int
    gpus: frozenset[int]
    numa_cores: dict[int, int]
    numa_memory: dict[int, int]


class Ledger:
    """Resources held per node by tasks in assigning/running/paused."""

    def __init__(self) -> None:
        self._holds: dict[int, Hold] = {}
        self._usage: dict[str, _Usage] = {}
        self._owners: dict[str | None, OwnerUsage] = {}
        self._batches: dict[int, int] = {}

    @classmethod
    def from_tasks(cls, tasks: Iterable[Task]) -> Ledger:
        """Build from the holding tasks (`Database.load_holding()`); tasks
        without a node or not in a holding state are ignored."""
        ledger = cls()
        for task in tasks:
            if task.node is not None and task.state.holds_resources:
                ledger.hold(task)
        return ledger

    def hold(self, task: Task) -> bool:
        """Count `task` (placed: `task.node` set) against its node. False if it already was."""
        if task.node is None:
            raise ValueError(f"task {task.id} has no node to hold resources on")
        return self.hold_placement(
            task.id,
            task.node,
            cores=task.cores,
            memory=task.memory,
            numa=task.numa,
            gpus=task.gpus,
            owner=task.owner,
            batch=task.batch_id,
        )

    def hold_placement(
        self,
        task_id: int,
        node: str,
        *,
        cores: int,
        memory: int | None,
        numa: int | None = None,
        gpus: Iterable[int] = (),
        owner: str | None = None,
        batch: int | None = None,
    ) -> bool:
        if task_id in self._holds:
            return False
        h = Hold(task_id, node, int(cores), int(memory or 0), numa, tuple(gpus), owner, batch)
        self._holds[task_id] = h
        self._count_owner(h, 1)
        if batch is not None:
            self._batches[batch] = self._batches.get(batch, 0) + 1
        u = self._usage.get(node)
        if u is None:
            u = self._usage[node] = _Usage()
        u.cores += h.cores
        u.memory += h.memory
        u.gpus.update(h.gpus)
        if h.numa is not None:
            u.numa_cores[h.numa] = u.numa_cores.get(h.numa, 0) + h.cores
            u.numa_memory[h.numa] = u.numa_memory.get(h.numa, 0) + h.memory
        return True

    def release(self, task: Task | int) -> bool:
        """Free what the task held. Idempotent: False if it held nothing."""
        task_id = task.id if isinstance(task, Task) else int(task)
        h = self._holds.pop(task_id, None)
        if h is None:
            return False
        self._count_owner(h, -1)
        if h.batch is not None:
            left = self._batches.get(h.batch, 0) - 1
            if left > 0:
                self._batches[h.batch] = left
            else:
                self._batches.pop(h.batch, None)
        u = self._usage[h.node]
        u.cores -= h.cores
        u.memory -= h.memory
        u.gpus.difference_update(h.gpus)
        if h.numa is not None:
            u.numa_cores[h.numa] -= h.cores
            u.numa_memory[h.numa] -= h.memory
        return True

    def _count_owner(self, h: Hold, sign: int) -> None:
        o = self._owners.get(h.owner) or OwnerUsage()
        o = OwnerUsage(o.cores + sign * h.cores, o.gpus + sign * len(h.gpus), o.running + sign)
        if o.running:
            self._owners[h.owner] = o
        else:
            self._owners.pop(h.owner, None)

    def owner_usage(self, owner: str | None) -> OwnerUsage:
        """What `owner`'s holding tasks hold now (placements of a running pass included)."""
        return self._owners.get(owner) or OwnerUsage()

    def batch_running(self, batch_id: int) -> int:
        """How many tasks of batch `batch_id` hold resources now (this pass's placements included)."""
        return self._batches.get(batch_id, 0)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._holds

    def __len__(self) -> int:
        return len(self._holds)

    def holds_on(self, hostname: str) -> list[Hold]:
        return sorted((h for h in self._holds.values() if h.node == hostname), key=lambda h: h.task_id)

    def used(self, hostname: str) -> Used:
        u = self._usage.get(hostname) or _Usage()
        return Used(u.cores, u.memory, frozenset(u.gpus), dict(u.numa_cores), dict(u.numa_memory))

    def free(self, node: NodeResources) -> FreeView:
        u = self._usage.get(node.hostname) or _Usage()
        numa = {
            n.id: NumaFree(
                cores=len(n.cpus) - u.numa_cores.get(n.id, 0),
                memory=(n.memory - u.numa_memory.get(n.id, 0)) if n.memory > 0 else None,
            )
            for n in node.numa
        }
        return FreeView(
            hostname=node.hostname,
            cores=node.cores - u.cores,
            memory=node.memory - u.memory,
            gpus=node.gpu_ids() - u.gpus,
            numa=numa,
        )

    def usage_record(self, hostname: str) -> _Usage:
        """The live, mutable usage of `hostname`: the scheduling pass reads it
        as holds are added during the pass (a copy would go stale)."""
        u = self._usage.get(hostname)
        if u is None:
            u = self._usage[hostname] = _Usage()
        return u


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class _Request:
    cores: int
    memory: int  # 0 = no request
    node: str | None
    numa: int | None
    gpu_ids: tuple[int, ...]  # explicit ids (a target's ::0,1)
    gpu_count: int  # a count request (0 when ids are explicit)
    kind: str = "docker"  # models.task_kind: what the node must be able to run

    @property
    def gpus_needed(self) -> int:
        return len(self.gpu_ids) or self.gpu_count


def _request(
    target: Target | None, cores: int | None, memory: int | None, gpu_count: int | None, container: str | None = None
) -> _Request:
    cores = 1 if cores is None else int(cores)
    memory = int(memory or 0)
    kind = task_kind(container)
    if target is None:
        return _Request(cores, memory, None, None, (), int(gpu_count or 0), kind)
    if target.gpus:
        return _Request(cores, memory, target.node, target.numa, tuple(target.gpus), 0, kind)
    return _Request(cores, memory, target.node, target.numa, (), int(gpu_count or 0), kind)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ids(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(values))


def _never_fits_node(req: _Request, node: NodeResources) -> str | None:
    """Why `req` can never fit on `node` (its capacity, ignoring what is held), or None."""
    name = node.hostname
    # Only what lasts: during a Docker engine's restart tasks wait, and are
    # neither refused nor failed (placement still skips the node meanwhile).
    cannot = node.refusal(req.kind, lasting_only=True)
    if cannot:
        return _cannot_run(node, req.kind, cannot)
    if req.cores > node.cores:
        return f"task needs {_plural(req.cores, 'core')} but node {name!r} has {node.cores}"
    if req.memory > node.memory:
        return f"task needs {format_size(req.memory)} of memory but node {name!r} has {format_size(node.memory)}"
    if req.numa is not None:
        numa = node.numa_node(req.numa)
        if numa is None:
            # "(it has 0)" reads as "it has none": name them as ids.
            have = f"its NUMA nodes: {_ids(n.id for n in node.numa)}" if node.numa else "it reports no NUMA topology"
            return f"node {name!r} has no NUMA node {req.numa} ({have})"
        if req.cores > len(numa.cpus):
            return f"task needs {_plural(req.cores, 'core')} but NUMA node {req.numa} of {name!r} has {len(numa.cpus)}"
        if numa.memory > 0 and req.memory > numa.memory:
            return (
                f"task needs {format_size(req.memory)} of memory but NUMA node {req.numa} of {name!r} "
                f"has {format_size(numa.memory)}"
            )
    if req.gpus_needed and not node.gpus:
        return f"node {name!r} has no GPUs"
    have_ids = node.gpu_ids()
    for g in req.gpu_ids:
        if g not in have_ids:
            return f"node {name!r} has no GPU {g} (its GPUs: {_ids(have_ids)})"
    if req.gpu_count > len(node.gpus):
        return f"task needs {_plural(req.gpu_count, 'GPU')} but node {name!r} has {len(node.gpus)}"
    return None


def _cannot_run(node: NodeResources, kind: str, reason: str) -> str:
    return f"node {node.hostname!r} cannot run {KIND_WORDS[kind]}: {reason}"


def check_fits_ever(
    req_target: Target | None,
    cores: int,
    memory: int | None,
    gpu_count: int,
    nodes: Sequence[NodeResources],
    container: str | None = None,
) -> None:
    """Raise `Unschedulable` when the request could never run on the known nodes.

    `nodes` should be every known node, offline ones included: they may come
    back, so a task targeted at an offline node waits rather than fails.
    `container` decides what a node must be able to run (`models.task_kind`):
    a node whose runner says it cannot run that kind never fits, with its
    reason; one that says nothing (an older runner) may.
    """
    req = _request(req_target, cores, memory, gpu_count, container)
    if not nodes:
        raise Unschedulable("no nodes are registered")
    if req.node is not None:
        node = next((n for n in nodes if n.hostname == req.node), None)
        if node is None:
            raise Unschedulable(f"unknown node {req.node!r}")
        reason = _never_fits_node(req, node)
        if reason:
            raise Unschedulable(reason)
        return
    if any(_never_fits_node(req, n) is None for n in nodes):
        return
    able = [n for n in nodes if n.refusal(req.kind, lasting_only=True) is None]
    if not able:
        reasons = "; ".join(
            _cannot_run(n, req.kind, n.refusal(req.kind, lasting_only=True) or "") for n in nodes[:MAX_REASONS]
        )
        more = f"; and {len(nodes) - MAX_REASONS} more" if len(nodes) > MAX_REASONS else ""
        raise Unschedulable(f"no node can run {KIND_WORDS[req.kind]} ({reasons}{more})")
    nodes = able  # the sizes below compare with the nodes that could run it
    most_cores = max(n.cores for n in nodes)
    if req.cores > most_cores:
        raise Unschedulable(f"task needs {_plural(req.cores, 'core')} but the largest node has {most_cores}")
    most_memory = max(n.memory for n in nodes)
    if req.memory > most_memory:
        raise Unschedulable(
            f"task needs {format_size(req.memory)} of memory but the largest node has {format_size(most_memory)}"
        )
    most_gpus = max(len(n.gpus) for n in nodes)
    if req.gpu_count > most_gpus:
        if most_gpus == 0:
            raise Unschedulable(f"task needs {_plural(req.gpu_count, 'GPU')} but no node has GPUs")
        raise Unschedulable(f"task needs {_plural(req.gpu_count, 'GPU')} but no node has more than {most_gpus}")
    parts = [_plural(req.cores, "core")]
    if req.memory:
        parts.append(f"{format_size(req.memory)} of memory")
    if req.gpu_count:
        parts.append(_plural(req.gpu_count, "GPU"))
    raise Unschedulable(f"no single node has {' and '.join(parts)}")


# --------------------------------------------------------------------------- per-user limits

LIMIT_NAMES = ("max_cores", "max_gpus", "max_running")
"""The per-user limits, as the API and the database name them."""


@dataclass(frozen=True)
class UserLimits:
    """The limits that apply to one owner (effective: their own setting, else
    the cluster default). 0 means unlimited."""

    max_cores: int = 0
    max_gpus: int = 0
    max_running: int = 0

    @property
    def unlimited(self) -> bool:
        return not (self.max_cores or self.max_gpus or self.max_running)


UNLIMITED = UserLimits()

LimitsOf = Callable[[str | None], UserLimits]
"""An owner's effective limits (the Host: `Accounts.effective_limits`)."""


def _limit_word(name: str) -> str:
    return name.replace("_", "-")


def check_fits_limits(cores: int | None, gpus: int, limits: UserLimits, owner: str | None = None) -> None:
    """Raise `Unschedulable` when one task alone exceeds its owner's limits: it
    could never start, so it is refused at submit like an oversized task."""
    cores = 1 if cores is None else int(cores)
    who = f"user {owner!r}" if owner else "its owner"
    if limits.max_cores and cores > limits.max_cores:
        raise Unschedulable(
            f"task needs {_plural(cores, 'core')} but {who} may hold at most {limits.max_cores} "
            "at once (limit max-cores)"
        )
    if limits.max_gpus and gpus > limits.max_gpus:
        raise Unschedulable(
            f"task needs {_plural(gpus, 'GPU')} but {who} may hold at most {limits.max_gpus} at once (limit max-gpus)"
        )


def limit_refusal(limits: UserLimits, usage: OwnerUsage, cores: int, gpus: int) -> str | None:
    """Why starting a task of `cores` and `gpus` now would put its owner over a
    limit (the wait reason, `limit: max-...`), or None."""
    if limits.max_running and usage.running + 1 > limits.max_running:
        return f"limit: max-running ({usage.running} of {limits.max_running} running)"
    if limits.max_cores and usage.cores + cores > limits.max_cores:
        return f"limit: max-cores ({usage.cores} of {limits.max_cores} in use, task needs {cores})"
    if limits.max_gpus and gpus and usage.gpus + gpus > limits.max_gpus:
        return f"limit: max-gpus ({usage.gpus} of {limits.max_gpus} in use, task needs {gpus})"
    return None


class _OwnerGate:
    """The limit check of one pass: each owner's limits looked up once, and the
    first of their tasks a limit held back, so their later ones wait behind it
    (FIFO within one owner)."""

    __slots__ = ("limits_of", "ledger", "_limits", "_held_back")

    def __init__(self, limits_of: LimitsOf, ledger: Ledger):
        self.limits_of = limits_of
        self.ledger = ledger
        self._limits: dict[str | None, UserLimits] = {}
        self._held_back: dict[str | None, str] = {}

    def refusal(self, task: Task, req: _Request) -> str | None:
        owner = task.owner
        behind = self._held_back.get(owner)
        if behind is not None:
            return behind
        limits = self._limits.get(owner)
        if limits is None:
            limits = self._limits[owner] = self.limits_of(owner)
        if limits.unlimited:
            return None
        why = limit_refusal(limits, self.ledger.owner_usage(owner), req.cores, req.gpus_needed)
        if why is not None:
            word = why.split(" (", 1)[0]
            self._held_back[owner] = f"{word} (behind task {task.id} of the same user)"
        return why


# --------------------------------------------------------------------------- wait reasons


def _shortage(st: _NodeState, req: _Request) -> str:
    """What `req` lacks on `st` now, for a wait reason: `2 free GPUs`, `GPU 0`."""
    u = st.usage
    short = []
    if st.cores - u.cores < req.cores:
        short.append(f"{req.cores} free cores" if req.cores != 1 else "1 free core")
    if req.memory and st.memory - u.memory < req.memory:
        short.append(f"{format_size(req.memory)} free memory")
    if req.numa is not None and req.numa in st.numa:
        ncores, nmem = st.numa[req.numa]
        if ncores - u.numa_cores.get(req.numa, 0) < req.cores:
            short.append(f"{_plural(req.cores, 'free core')} on NUMA node {req.numa}")
        if req.memory and nmem > 0 and nmem - u.numa_memory.get(req.numa, 0) < req.memory:
            short.append(f"{format_size(req.memory)} free memory on NUMA node {req.numa}")
    busy = [g for g in req.gpu_ids if g in u.gpus]
    if busy:
        short.append(("GPU " if len(busy) == 1 else "GPUs ") + _ids(busy))
    if req.gpu_count and len(st.gpu_ids) - len(u.gpus) < req.gpu_count:
        short.append(_plural(req.gpu_count, "free GPU"))
    return " and ".join(short)


def _request_words(req: _Request) -> str:
    parts = [_plural(req.cores, "core")]
    if req.memory:
        parts.append(f"{format_size(req.memory)} of memory")
    if req.gpus_needed:
        parts.append(_plural(req.gpus_needed, "GPU"))
    return " and ".join(parts)


def _wait_reason(
    req: _Request,
    candidates: Sequence[_NodeState],
    by_name: dict[str, _NodeState],
    kept_by: str | None,
    reserved_on: _NodeState | None,
) -> str:
    """Why a task that found no place this pass waits. `kept_by`: a node where it
    fits but an earlier task's reservation keeps it off; `reserved_on`: the
    node reserved for it."""
    if reserved_on is not None:
        lacks = _shortage(reserved_on, req)
        if lacks or kept_by is None:
            return f"reserved: head of queue on {reserved_on.name} (waiting for {lacks or 'an earlier reservation'})"
    if req.node is not None:
        st = by_name.get(req.node)
        if st is None:
            return f"node {req.node} offline"
        if not candidates:
            return f"node {req.node} cannot run {KIND_WORDS[req.kind]}: {st.res.refusal(req.kind)}"
    elif not candidates:
        return f"resources: no online node can run {KIND_WORDS[req.kind]}"
    if kept_by is not None:
        return f"reserved: fits on {kept_by}, which is kept for an earlier task"
    if all(_never_fits_node(req, st.res) is not None for st in candidates):
        return "resources: no online node is large enough (a node that is offline may be)"
    if req.node is not None:
        lacks = _shortage(by_name[req.node], req) or "the room an earlier task's reservation keeps"
        return f"resources: node {req.node} lacks {lacks}"
    return f"resources: no node has {_request_words(req)} free"


# --------------------------------------------------------------------------- scheduling


class _NodeState:
    """One online node during a pass: capacity, the ledger's usage, reservations."""

    __slots__ = ("res", "name", "cores", "memory", "gpu_ids", "gpu_order", "numa", "usage", "reservations")

    def __init__(self, res: NodeResources, usage: _Usage):
        self.res = res
        self.name = res.hostname
        self.cores = res.cores
        self.memory = res.memory
        self.gpu_ids = res.gpu_ids()
        self.gpu_order = tuple(sorted(self.gpu_ids))
        self.numa = {n.id: (len(n.cpus), n.memory) for n in res.numa}
        self.usage = usage
        self.reservations: list[_Request] = []

    def fit(self, req: _Request) -> tuple[int, ...] | None:
        """The GPU ids `req` would get if it fits now, else None."""
        u = self.usage
        if self.cores - u.cores < req.cores:
            return None
        if req.memory and self.memory - u.memory < req.memory:
            return None
        if req.numa is not None:
            numa = self.numa.get(req.numa)
            if numa is None or numa[0] - u.numa_cores.get(req.numa, 0) < req.cores:
                return None
            if req.memory and numa[1] > 0 and numa[1] - u.numa_memory.get(req.numa, 0) < req.memory:
                return None
        if req.gpu_ids:
            for g in req.gpu_ids:
                if g not in self.gpu_ids or g in u.gpus:
                    return None
            return req.gpu_ids
        if req.gpu_count:
            free = [g for g in self.gpu_order if g not in u.gpus]
            if len(free) < req.gpu_count:
                return None
            if self.reservations:
                wanted = {g for r in self.reservations for g in r.gpu_ids}
                if wanted:
                    free.sort(key=lambda g: (g in wanted, g))
            return tuple(sorted(free[: req.gpu_count]))
        return ()

    def respects_reservations(self, req: _Request, gpus: tuple[int, ...]) -> bool:
        """Whether placing `req` (getting `gpus`) here leaves every reservation's need free."""
        u = self.usage
        for h in self.reservations:
            if req.cores and self.cores - u.cores - req.cores < h.cores:
                return False
            if req.memory and h.memory and self.memory - u.memory - req.memory < h.memory:
                return False
            if h.numa is not None and req.numa == h.numa:
                ncores, nmem = self.numa[h.numa]
                if req.cores and ncores - u.numa_cores.get(h.numa, 0) - req.cores < h.cores:
                    return False
                if req.memory and h.memory and nmem > 0 and nmem - u.numa_memory.get(h.numa, 0) - req.memory < h.memory:
                    return False
            if gpus:
                if h.gpu_ids and not set(h.gpu_ids).isdisjoint(gpus):
                    return False
                if h.gpu_count and len(self.gpu_ids) - len(u.gpus) - len(gpus) < h.gpu_count:
                    return False
        return True

    def shortfall(self, req: _Request) -> float:
        """How far `req` is from fitting now (0 = fits), each dimension scaled by capacity."""
        u = self.usage
        total = max(0, req.cores - (self.cores - u.cores)) / max(1, self.cores)
        if req.memory:
            total += max(0, req.memory - (self.memory - u.memory)) / max(1, self.memory)
        if req.numa is not None:
            ncores, nmem = self.numa[req.numa]
            total += max(0, req.cores - (ncores - u.numa_cores.get(req.numa, 0))) / max(1, ncores)
            if req.memory and nmem > 0:
                total += max(0, req.memory - (nmem - u.numa_memory.get(req.numa, 0))) / nmem
        if req.gpu_ids:
            total += sum(1 for g in req.gpu_ids if g in u.gpus) / len(req.gpu_ids)
        elif req.gpu_count:
            free = len(self.gpu_ids) - len(u.gpus)
            total += max(0, req.gpu_count - free) / max(1, len(self.gpu_ids))
        return total


@dataclass
class PassStats:
    pending: int = 0
    examined: int = 0
    placed: int = 0
    reservations: int = 0
    skipped_same_shape: int = 0
    unreserved: int = 0
    """Blocked tasks left without a reservation because the cap was reached."""
    stopped_early: bool = False
    """True when `max_examined` ended the pass before the end of the queue."""
    reserved: dict[int, str] = field(default_factory=dict)
    """Blocked task id -> the node reserved for it."""
    drained: dict[int, str] = field(default_factory=dict)
    """Task id -> the drained node it is targeted at (it waits for a resume)."""
    limited: int = 0
    """Tasks held back by their owner's limits."""
    reasons: dict[int, str] = field(default_factory=dict)
    """Pending task id -> why it waits (see the module doc), for the tasks this
    pass looked at and did not place; at most `max_reasons` of them."""


class Scheduler:
    def __init__(
        self,
        *,
        max_examined: int = DEFAULT_MAX_EXAMINED,
        max_reservations: int = DEFAULT_MAX_RESERVATIONS,
        max_reasons: int = DEFAULT_MAX_REASONS,
    ):
        self.max_examined = max_examined
        self.max_reservations = max_reservations
        self.max_reasons = max_reasons
        self.last_stats = PassStats()

    def schedule(
        self,
        pending: Iterable[Task],
        nodes: Sequence[NodeResources],
        ledger: Ledger,
        limits: LimitsOf | None = None,
        *,
        drained: Collection[str] = (),
        avoid: Mapping[int, str] | None = None,
    ) -> list[Placement]:
        """Place what fits now, FIFO with conservative backfill.

        `nodes` are the online nodes; those named in `drained` get no
        placement and no reservation. Every placement is also held in
        `ledger`; if the caller then fails to record a placement (the task was
        killed meanwhile), it must `ledger.release(task_id)`. `limits` gives
        each owner's effective limits (None: nobody is limited). `avoid`: a
        task id -> a node it goes to only where no other fits (a retried
        task's previous node, host/retries.py).
        """
        queue = sorted(pending, key=lambda t: t.id)
        stats = PassStats(pending=len(queue))
        self.last_stats = stats
        drained = frozenset(drained)
        # A drained node is no candidate at all: not for placement, and not for
        # a reservation (which would hold back work on a node nobody may use).
        states = [
            _NodeState(n, ledger.usage_record(n.hostname))
            for n in sorted(nodes, key=lambda n: n.hostname)
            if n.hostname not in drained
        ]
        by_name = {s.name: s for s in states}
        placements: list[Placement] = []
        failed: set[_Request] = set()
        shape_reason: dict[_Request, str] = {}
        gate = _OwnerGate(limits, ledger) if limits is not None else None
        reasons = stats.reasons

        def note(task_id: int, why: str) -> None:
            if len(reasons) < self.max_reasons:
                reasons[task_id] = why

        for task in queue:
            if task.id in ledger:
                continue
            req = _request(task.target, task.cores, task.memory, task.gpu_count, task.container)
            if req.node is not None and req.node in drained:
                stats.drained[task.id] = req.node
                note(task.id, f"node {req.node!r} is drained")
                continue
            if task.array_max_running and ledger.batch_running(task.batch_id) >= task.array_max_running:
                # An array's `%N`: like a user limit, the task is skipped (no
                # reservation, not the protected head), so it delays nobody.
                stats.limited += 1
                note(task.id, f"limit: array max-running ({task.array_max_running} of batch {task.batch_id} running)")
                continue
            if gate is not None:
                # Before the shape cache: a shape that failed for one owner's
                # limit may fit for another owner.
                held_back = gate.refusal(task, req)
                if held_back is not None:
                    stats.limited += 1
                    note(task.id, held_back)
                    continue
            if req in failed:
                stats.skipped_same_shape += 1
                note(task.id, shape_reason[req])
                continue
            if stats.examined >= self.max_examined:
                stats.stopped_early = True
                break
            stats.examined += 1

            if req.node is not None:
                candidates = [by_name[req.node]] if req.node in by_name else []
            else:
                candidates = states
            # A node that says it cannot run this kind (its Docker engine down,
            # no systemd) gets none; a targeted task waits until it can.
            candidates = [st for st in candidates if st.res.refusal(req.kind) is None]
            best: tuple | None = None
            best_state: _NodeState | None = None
            best_gpus: tuple[int, ...] = ()
            kept_by: str | None = None
            for st in candidates:
                gpus = st.fit(req)
                if gpus is None:
                    continue
                if st.reservations and not st.respects_reservations(req, gpus):
                    kept_by = kept_by or st.name
                    continue
                if req.node is not None:
                    best_state, best_gpus = st, gpus
                    break
                u = st.usage
                rank = (
                    avoid is not None and avoid.get(task.id) == st.name,
                    (len(st.gpu_ids) - len(u.gpus) - len(gpus)) if req.gpus_needed else (1 if st.gpu_ids else 0),
                    st.cores - u.cores - req.cores,
                    st.memory - u.memory - req.memory,
                    st.name,
                )
                if best is None or rank < best:
                    best, best_state, best_gpus = rank, st, gpus

            if best_state is not None:
                ledger.hold_placement(
                    task.id,
                    best_state.name,
                    cores=req.cores,
                    memory=req.memory,
                    numa=req.numa,
                    gpus=best_gpus,
                    owner=task.owner,
                    batch=task.batch_id,
                )
                placements.append(Placement(task.id, best_state.name, req.numa, best_gpus))
                stats.placed += 1
                continue

            failed.add(req)
            reserve_on = None
            if stats.reservations >= self.max_reservations:
                stats.unreserved += 1
            else:
                reserve_on = self._reservation_node(req, candidates)
                if reserve_on is not None:
                    reserve_on.reservations.append(req)
                    stats.reservations += 1
                    stats.reserved[task.id] = reserve_on.name
            why = _wait_reason(req, candidates, by_name, kept_by, reserve_on)
            note(task.id, why)
            shape_reason[req] = f"position: behind task {task.id} (same request)" if reserve_on is not None else why
        return placements

    @staticmethod
    def _reservation_node(req: _Request, candidates: Sequence[_NodeState]) -> _NodeState | None:
        best: tuple | None = None
        chosen = None
        for st in candidates:
            if _never_fits_node(req, st.res) is not None:
                continue  # it could never start here: reserving would block the node forever
            rank = (st.shortfall(req), 0 if (req.gpus_needed or not st.gpu_ids) else 1, st.name)
            if best is None or rank < best:
                best, chosen = rank, st
        return chosen
