"""The scheduler: pure placement and resource accounting (no I/O, no asyncio,
deterministic). One module per concept:

| module | concept |
|---|---|
| `ledger` | what each holding task holds, per node, per owner, per batch |
| `requests` | a task's request as placement sees it; `check_fits_ever` |
| `limits` | per-user limits: `UserLimits`, the refusals, the per-pass gate |
| `nodestate` | one online node during a pass: fit, reservations, shortfall |
| `reasons` | why a task that found no place waits |
| `ordering` | the queue's order: priority, fair share, submission |
| `pending` | the pending queue, handed out in that order without a sort |
| `placement` | `Scheduler.schedule`: conservative backfill over the queue |

The names callers use are importable from here.
"""

from __future__ import annotations

from .ledger import FreeView, Hold, Ledger, NodeUsage, NumaFree, OwnerUsage, Used
from .limits import LIMIT_NAMES, UNLIMITED, LimitsOf, UserLimits, check_fits_limits, limit_refusal
from .ordering import Usage, queue_key, queue_order
from .pending import PendingQueue
from .placement import (
    DEFAULT_MAX_EXAMINED,
    DEFAULT_MAX_REASONS,
    DEFAULT_MAX_RESERVATIONS,
    PassStats,
    Placement,
    Scheduler,
)
from .requests import MAX_REASONS, check_fits_ever

__all__ = [
    "DEFAULT_MAX_EXAMINED",
    "DEFAULT_MAX_REASONS",
    "DEFAULT_MAX_RESERVATIONS",
    "LIMIT_NAMES",
    "MAX_REASONS",
    "UNLIMITED",
    "FreeView",
    "Hold",
    "Ledger",
    "LimitsOf",
    "NodeUsage",
    "NumaFree",
    "OwnerUsage",
    "PassStats",
    "PendingQueue",
    "Placement",
    "Scheduler",
    "Used",
    "UserLimits",
    "Usage",
    "check_fits_ever",
    "check_fits_limits",
    "limit_refusal",
    "queue_key",
    "queue_order",
]
