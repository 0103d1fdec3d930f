"""The Host with a timer on its scheduling pass (a launcher for `bench.scheduling`).

    python bench/pass_timer_host.py --config host.toml     # PASS_OUT=/path/passes.json

Monkeypatches at start (the repository is not changed): `Dispatcher.schedule_once`
(the whole pass: building the queue, the scheduler, the database's `assign_many`)
and the scheduler's `schedule` (the pure placement decision) record, per pass,
the size of the pending queue, both durations and how many tasks were placed. On
exit the raw records go to $PASS_OUT (default /tmp/hakuriver_passes.json).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hakuriver.host.dispatch as dispatch_mod

PASSES: list[dict[str, float]] = []
_inner: list[float] = []

_schedule = dispatch_mod.Scheduler.schedule


def _timed_schedule(self, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    try:
        return _schedule(self, *args, **kwargs)
    finally:
        _inner.append(time.perf_counter() - t0)


dispatch_mod.Scheduler.schedule = _timed_schedule  # type: ignore[method-assign]

_schedule_once = dispatch_mod.Dispatcher.schedule_once


async def _timed_schedule_once(self):  # type: ignore[no-untyped-def]
    pending = len(self.cluster.pending)
    _inner.clear()
    t0 = time.perf_counter()
    placed = await _schedule_once(self)
    total = time.perf_counter() - t0
    if _inner:  # a pass that found nothing to do (no pending, no nodes) is not one
        PASSES.append({"pending": pending, "pass": total, "schedule": _inner[-1], "placed": len(placed)})
    return placed


dispatch_mod.Dispatcher.schedule_once = _timed_schedule_once  # type: ignore[method-assign]


def _dump() -> None:
    with open(os.environ.get("PASS_OUT", "/tmp/hakuriver_passes.json"), "w") as fh:
        json.dump(PASSES, fh)


atexit.register(_dump)

if __name__ == "__main__":
    from hakuriver.cli.host import main

    sys.exit(main(sys.argv[1:]))
