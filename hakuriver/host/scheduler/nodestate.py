"""One online node during a scheduling pass: its capacity, the ledger's live
usage, the reservations made on it, and the fit and backfill checks."""

from __future__ import annotations

from ...models import NodeResources
from .ledger import NodeUsage
from .requests import Request


class NodeState:
    """One online node during a pass: capacity, the ledger's usage, reservations."""

    __slots__ = ("res", "name", "cores", "memory", "gpu_ids", "gpu_order", "numa", "usage", "reservations")

    def __init__(self, res: NodeResources, usage: NodeUsage):
        self.res = res
        self.name = res.hostname
        self.cores = res.cores
        self.memory = res.memory
        self.gpu_ids = res.gpu_ids()
        self.gpu_order = tuple(sorted(self.gpu_ids))
        self.numa = {n.id: (len(n.cpus), n.memory) for n in res.numa}
        self.usage = usage
        self.reservations: list[Request] = []

    def fit(self, req: Request) -> tuple[int, ...] | None:
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

    def respects_reservations(self, req: Request, gpus: tuple[int, ...]) -> bool:
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

    def shortfall(self, req: Request) -> float:
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
