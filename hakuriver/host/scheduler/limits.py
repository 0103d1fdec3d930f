"""Per-user limits (`UserLimits`).

A task whose owner would go over one of their limits (cores, GPUs, or tasks
holding resources at once: `max_cores`, `max_gpus`, `max_running`) if it
started now is skipped: it stays pending, gets no reservation and is not the
protected head, so it never blocks other users' work. What counts against an
owner is what their tasks in a holding state hold (assigning, running,
paused: the ledger), placements of the same pass included. Within one owner
the queue keeps its order: once a task of theirs is held back by a limit,
their later tasks wait behind it in this pass. A task that alone exceeds its
owner's limit is refused at submit (`check_fits_limits`); one left so by a
lowered limit waits, saying so, until the limit is raised or it is killed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import Unschedulable
from ...models import Task
from .ledger import Ledger, OwnerUsage
from .requests import Request, plural

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
            f"task needs {plural(cores, 'core')} but {who} may hold at most {limits.max_cores} "
            "at once (limit max-cores)"
        )
    if limits.max_gpus and gpus > limits.max_gpus:
        raise Unschedulable(
            f"task needs {plural(gpus, 'GPU')} but {who} may hold at most {limits.max_gpus} at once (limit max-gpus)"
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


class OwnerGate:
    """The limit check of one pass: each owner's limits looked up once, and the
    first of their tasks a limit held back, so their later ones wait behind it
    (in queue order within one owner)."""

    __slots__ = ("limits_of", "ledger", "_limits", "_held_back")

    def __init__(self, limits_of: LimitsOf, ledger: Ledger):
        self.limits_of = limits_of
        self.ledger = ledger
        self._limits: dict[str | None, UserLimits] = {}
        self._held_back: dict[str | None, str] = {}

    def refusal(self, task: Task, req: Request) -> str | None:
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
