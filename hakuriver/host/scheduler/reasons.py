"""Why a task waits (`PassStats.reasons`).

Each pass records one short reason per pending task it looked at and did not
place (`limit: max-gpus ...`, `reserved: head of queue on gpu1 ...`,
`resources: ...`, `node gpu1 offline`, `position: ...`), at most
`max_reasons` of them. They live in memory only and are replaced by the next
pass.
"""

from __future__ import annotations

from collections.abc import Sequence

from ...models import KIND_WORDS
from ...parsing import format_size
from .nodestate import NodeState
from .requests import Request, id_list, never_fits_node, plural


def shortage(st: NodeState, req: Request) -> str:
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
            short.append(f"{plural(req.cores, 'free core')} on NUMA node {req.numa}")
        if req.memory and nmem > 0 and nmem - u.numa_memory.get(req.numa, 0) < req.memory:
            short.append(f"{format_size(req.memory)} free memory on NUMA node {req.numa}")
    busy = [g for g in req.gpu_ids if g in u.gpus]
    if busy:
        short.append(("GPU " if len(busy) == 1 else "GPUs ") + id_list(busy))
    if req.gpu_count and len(st.gpu_ids) - len(u.gpus) < req.gpu_count:
        short.append(plural(req.gpu_count, "free GPU"))
    return " and ".join(short)


def request_words(req: Request) -> str:
    parts = [plural(req.cores, "core")]
    if req.memory:
        parts.append(f"{format_size(req.memory)} of memory")
    if req.gpus_needed:
        parts.append(plural(req.gpus_needed, "GPU"))
    return " and ".join(parts)


def wait_reason(
    req: Request,
    candidates: Sequence[NodeState],
    by_name: dict[str, NodeState],
    kept_by: str | None,
    reserved_on: NodeState | None,
) -> str:
    """Why a task that found no place this pass waits. `kept_by`: a node where it
    fits but an earlier task's reservation keeps it off; `reserved_on`: the
    node reserved for it."""
    if reserved_on is not None:
        lacks = shortage(reserved_on, req)
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
    if all(never_fits_node(req, st.res) is not None for st in candidates):
        return "resources: no online node is large enough (a node that is offline may be)"
    if req.node is not None:
        lacks = shortage(by_name[req.node], req) or "the room an earlier task's reservation keeps"
        return f"resources: node {req.node} lacks {lacks}"
    return f"resources: no node has {request_words(req)} free"
