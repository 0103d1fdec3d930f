"""Fair share: each user's recent usage, decayed, for the order of the queue.

A task's usage is its rate, `cores + gpu_weight x GPUs` (core-seconds per
second), over the time it holds resources. Usage decays exponentially with a
half-life (`[scheduler] fairshare_half_life`): what a user used one half-life
ago counts half. The scheduling pass orders equal priorities by their owners'
decayed usage, lightest first (`scheduler.ordering`).

Cheap by construction: nothing here reads the database during a pass.
`FairShare` keeps, per user, one decayed total (tasks that ended) and, per
holding task, its rate and since when it holds; the dispatcher brings it up
to date with the ledger on every pass (`sync`: a task that appeared there
starts accruing, one that left it is folded into its owner's total), and a
snapshot costs one look at each holding task. At Host start `rebuild` reads
the final tasks of the last `WINDOW_HALF_LIVES` half-lives once.

A half-life of 0 turns fair share off: every snapshot is empty, so the queue
is FIFO within a priority. Pure: times come from the caller.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..models import Task
from .scheduler import Hold

WINDOW_HALF_LIVES = 10
"""Final tasks older than this many half-lives are left out of the rebuild (under 0.1% of their usage remains)."""


@dataclass(frozen=True, slots=True)
class _Accrual:
    owner: str | None
    rate: float
    since: float


@dataclass(slots=True)
class _Running:
    """One user's holding tasks, summed so that their usage now is O(1).

    A task of rate r holding since s is worth r/k (1 - e^(-k (now - s))) at
    `now` (k = ln 2 / half-life), so n of them are worth
    (A - e^(-k (now - t0)) B) / k with A = sum(r) and B = sum(r e^(k (s - t0))),
    t0 a reference time kept within a half-life or so of the present
    (`FairShare._rebase`) so that the exponentials stay near 1."""

    count: int = 0
    rates: float = 0.0
    weighted: float = 0.0


def span_usage(rate: float, start: float, end: float, now: float, half_life: float) -> float:
    """The decayed value at `now` of using `rate` from `start` to `end`:
    the integral of rate x 2^(-(now - t) / half_life) over [start, end]."""
    if end <= start:
        return 0.0
    k = math.log(2) / half_life
    return rate / k * (math.exp(-k * (now - end)) - math.exp(-k * (now - start)))


class FairShare:
    """Decayed recent usage per user (see the module doc)."""

    def __init__(self, half_life: float, gpu_weight: float = 10.0):
        self.half_life = float(half_life)
        self.gpu_weight = float(gpu_weight)
        self._base: dict[str | None, tuple[float, float]] = {}
        """owner -> (decayed usage of their ended tasks, as of this time)."""
        self._running: dict[int, _Accrual] = {}
        self._sums: dict[str | None, _Running] = {}
        self._t0 = 0.0
        """The reference time of every `_Running.weighted` (see `_Running`)."""

    @property
    def enabled(self) -> bool:
        return self.half_life > 0

    def rate(self, cores: int, gpus: int) -> float:
        return float(cores) + self.gpu_weight * gpus

    def window_start(self, now: float) -> float:
        """The oldest finish time `rebuild` needs."""
        return now - WINDOW_HALF_LIVES * self.half_life

    def rebuild(
        self,
        ended: Iterable[tuple[str | None, int, int, float, float]],
        holding: Iterable[Task],
        now: float,
    ) -> None:
        """Start over from the database: `ended` are (owner, cores, GPUs,
        start, end) of recent final tasks (`Database.usage_spans`), `holding`
        the tasks holding resources now."""
        totals: dict[str | None, float] = {}
        if self.enabled:
            for owner, cores, gpus, start, end in ended:
                value = span_usage(self.rate(cores, gpus), start, min(end, now), now, self.half_life)
                totals[owner] = totals.get(owner, 0.0) + value
        self.rebuild_totals(totals, holding, now)

    def rebuild_totals(self, ended: Mapping[str | None, float], holding: Iterable[Task], now: float) -> None:
        """`rebuild` from each owner's decayed usage of their ended tasks at
        `now`, summed already (`Database.usage_totals`, which never holds the
        rows themselves)."""
        self._base.clear()
        self._running.clear()
        self._sums.clear()
        if not self.enabled:
            return
        self._t0 = now
        for owner, value in ended.items():
            self._add(owner, value, now)
        for task in holding:
            since = task.assigned_at or task.started_at or now
            self._start(task.id, _Accrual(task.owner, self.rate(task.cores, len(task.gpus)), min(since, now)))

    def sync(self, holds: Mapping[int, Hold], now: float) -> None:
        """Follow the ledger: holds that appeared start accruing now, tasks
        that no longer hold are folded into their owner's total."""
        if not self.enabled:
            return
        if now - self._t0 > self.half_life:
            self._rebase(now)
        # Set differences of the key views: two passes in C over the holds,
        # not a Python loop, since every scheduling pass calls this.
        for task_id in self._running.keys() - holds.keys():
            acc = self._stop(task_id)
            self._add(acc.owner, span_usage(acc.rate, acc.since, now, now, self.half_life), now)
        if len(self._running) != len(holds):
            for task_id in holds.keys() - self._running.keys():
                hold = holds[task_id]
                self._start(task_id, _Accrual(hold.owner, self.rate(hold.cores, len(hold.gpus)), now))

    def _k(self) -> float:
        return math.log(2) / self.half_life

    def _start(self, task_id: int, acc: _Accrual) -> None:
        self._running[task_id] = acc
        sums = self._sums.setdefault(acc.owner, _Running())
        sums.count += 1
        sums.rates += acc.rate
        sums.weighted += acc.rate * math.exp(self._k() * (acc.since - self._t0))

    def _stop(self, task_id: int) -> _Accrual:
        acc = self._running.pop(task_id)
        sums = self._sums[acc.owner]
        sums.count -= 1
        if sums.count == 0:  # exactly nothing, not what rounding left over
            del self._sums[acc.owner]
        else:
            sums.rates -= acc.rate
            sums.weighted -= acc.rate * math.exp(self._k() * (acc.since - self._t0))
        return acc

    def _rebase(self, now: float) -> None:
        """Move the reference time to `now` (once a half-life or so): the sums
        are rebuilt from the holding tasks, which also drops rounding drift."""
        held = list(self._running.items())
        self._running.clear()
        self._sums.clear()
        self._t0 = now
        for task_id, acc in held:
            self._start(task_id, acc)

    def _add(self, owner: str | None, value: float, now: float) -> None:
        if value <= 0:
            return
        self._base[owner] = (self._decayed_base(owner, now) + value, now)

    def _decayed_base(self, owner: str | None, now: float) -> float:
        base = self._base.get(owner)
        if base is None:
            return 0.0
        value, at = base
        return value * 2.0 ** (-max(0.0, now - at) / self.half_life)

    def snapshot(self, now: float) -> dict[str | None, float]:
        """Each user's decayed usage now (core-second equivalents); users
        with none are left out (they count 0). Empty when fair share is off."""
        if not self.enabled:
            return {}
        usage = {owner: self._decayed_base(owner, now) for owner in self._base}
        k = self._k()
        fade = math.exp(-k * (now - self._t0))
        for owner, sums in self._sums.items():
            # max(): rounding must never make a holding user's usage negative.
            usage[owner] = usage.get(owner, 0.0) + max(0.0, (sums.rates - fade * sums.weighted) / k)
        return usage
