"""A task's request as placement sees it, and whether it could ever fit.

`Request` is the shape the pass compares with what nodes have free (two tasks
of the same shape fit or fail alike); `check_fits_ever` refuses at submit a
request no known node could ever run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from ...errors import Unschedulable
from ...models import KIND_WORDS, NodeResources, Target, task_kind
from ...parsing import format_size

MAX_REASONS = 3
"""Nodes named, each with its reason, when no node can run a kind of task."""


class Request(NamedTuple):
    """A task's shape. A tuple, so that the pass's "this shape already failed"
    set hashes and compares it in C: it is looked up once per pending task
    per pass."""

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


def request_of(
    target: Target | None, cores: int | None, memory: int | None, gpu_count: int | None, container: str | None = None
) -> Request:
    cores = 1 if cores is None else int(cores)
    memory = int(memory or 0)
    kind = task_kind(container)
    if target is None:
        return Request(cores, memory, None, None, (), int(gpu_count or 0), kind)
    if target.gpus:
        return Request(cores, memory, target.node, target.numa, tuple(target.gpus), 0, kind)
    return Request(cores, memory, target.node, target.numa, (), int(gpu_count or 0), kind)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def id_list(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in sorted(values))


def never_fits_node(req: Request, node: NodeResources) -> str | None:
    """Why `req` can never fit on `node` (its capacity, ignoring what is held), or None."""
    name = node.hostname
    # Only what lasts: during a Docker engine's restart tasks wait, and are
    # neither refused nor failed (placement still skips the node meanwhile).
    cannot = node.refusal(req.kind, lasting_only=True)
    if cannot:
        return cannot_run(node, req.kind, cannot)
    if req.cores > node.cores:
        return f"task needs {plural(req.cores, 'core')} but node {name!r} has {node.cores}"
    if req.memory > node.memory:
        return f"task needs {format_size(req.memory)} of memory but node {name!r} has {format_size(node.memory)}"
    if req.numa is not None:
        numa = node.numa_node(req.numa)
        if numa is None:
            # "(it has 0)" reads as "it has none": name them as ids.
            have = f"its NUMA nodes: {id_list(n.id for n in node.numa)}" if node.numa else "it reports no NUMA topology"
            return f"node {name!r} has no NUMA node {req.numa} ({have})"
        if req.cores > len(numa.cpus):
            return f"task needs {plural(req.cores, 'core')} but NUMA node {req.numa} of {name!r} has {len(numa.cpus)}"
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
            return f"node {name!r} has no GPU {g} (its GPUs: {id_list(have_ids)})"
    if req.gpu_count > len(node.gpus):
        return f"task needs {plural(req.gpu_count, 'GPU')} but node {name!r} has {len(node.gpus)}"
    return None


def cannot_run(node: NodeResources, kind: str, reason: str) -> str:
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
    req = request_of(req_target, cores, memory, gpu_count, container)
    if not nodes:
        raise Unschedulable("no nodes are registered")
    if req.node is not None:
        node = next((n for n in nodes if n.hostname == req.node), None)
        if node is None:
            raise Unschedulable(f"unknown node {req.node!r}")
        reason = never_fits_node(req, node)
        if reason:
            raise Unschedulable(reason)
        return
    if any(never_fits_node(req, n) is None for n in nodes):
        return
    able = [n for n in nodes if n.refusal(req.kind, lasting_only=True) is None]
    if not able:
        reasons = "; ".join(
            cannot_run(n, req.kind, n.refusal(req.kind, lasting_only=True) or "") for n in nodes[:MAX_REASONS]
        )
        more = f"; and {len(nodes) - MAX_REASONS} more" if len(nodes) > MAX_REASONS else ""
        raise Unschedulable(f"no node can run {KIND_WORDS[req.kind]} ({reasons}{more})")
    nodes = able  # the sizes below compare with the nodes that could run it
    most_cores = max(n.cores for n in nodes)
    if req.cores > most_cores:
        raise Unschedulable(f"task needs {plural(req.cores, 'core')} but the largest node has {most_cores}")
    most_memory = max(n.memory for n in nodes)
    if req.memory > most_memory:
        raise Unschedulable(
            f"task needs {format_size(req.memory)} of memory but the largest node has {format_size(most_memory)}"
        )
    most_gpus = max(len(n.gpus) for n in nodes)
    if req.gpu_count > most_gpus:
        if most_gpus == 0:
            raise Unschedulable(f"task needs {plural(req.gpu_count, 'GPU')} but no node has GPUs")
        raise Unschedulable(f"task needs {plural(req.gpu_count, 'GPU')} but no node has more than {most_gpus}")
    parts = [plural(req.cores, "core")]
    if req.memory:
        parts.append(f"{format_size(req.memory)} of memory")
    if req.gpu_count:
        parts.append(plural(req.gpu_count, "GPU"))
    raise Unschedulable(f"no single node has {' and '.join(parts)}")
