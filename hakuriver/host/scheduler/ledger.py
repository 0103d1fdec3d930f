"""The resource ledger: what each holding task holds, per node and per owner.

A task holds its node's resources from the moment it is placed (assigning)
through running and paused, until it reaches a final state. Per node the
ledger counts cores, memory and GPU ids; a task pinned to a NUMA node also
counts its cores and memory against that NUMA node. Memory `None` means "no
memory request": it counts 0 and always fits. Release is idempotent per task
id and frees exactly what was held, whatever the task object says later.
Per owner it counts what their holding tasks hold (the per-user limits read
it), and per batch how many of its tasks hold resources (an array's `%N`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ...models import NodeResources, Task


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


class NodeUsage:
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
        self._usage: dict[str, NodeUsage] = {}
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
            u = self._usage[node] = NodeUsage()
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

    def holds(self) -> Mapping[int, Hold]:
        """Every hold by task id (read only: change it through hold/release)."""
        return self._holds

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._holds

    def __len__(self) -> int:
        return len(self._holds)

    def holds_on(self, hostname: str) -> list[Hold]:
        return sorted((h for h in self._holds.values() if h.node == hostname), key=lambda h: h.task_id)

    def used(self, hostname: str) -> Used:
        u = self._usage.get(hostname) or NodeUsage()
        return Used(u.cores, u.memory, frozenset(u.gpus), dict(u.numa_cores), dict(u.numa_memory))

    def free(self, node: NodeResources) -> FreeView:
        u = self._usage.get(node.hostname) or NodeUsage()
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

    def usage_record(self, hostname: str) -> NodeUsage:
        """The live, mutable usage of `hostname`: the scheduling pass reads it
        as holds are added during the pass (a copy would go stale)."""
        u = self._usage.get(hostname)
        if u is None:
            u = self._usage[hostname] = NodeUsage()
        return u
