"""What this runner can run, as it tells the Host (`models.NodeCapabilities`).

One kind per backend: Docker tasks need the "docker" executor and an engine
that answers; `--container NULL` tasks need the "systemd" executor (systemd is
PID 1, the root-owned launcher is installed: `Executor.unavailable`) and a
launcher that answers through sudo (the sudoers rule works, which only
calling it shows: `Executor.fingerprint`). Each kind a node lacks carries the
reason the backend gave, so the Host can refuse such a task at submit with it.

Probing blocks (a Docker ping, `sudo -n <launcher> info`, file checks), so it
runs in the backends' threads and subprocesses, never on the event loop's
time, and `CapabilityWatch` probes at start-up and then rarely, in its own
loop: a heartbeat only reads the latest record, so it is never late for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from ..models import Capability, NodeCapabilities
from .executors.base import Executor

log = logging.getLogger(__name__)

EXECUTOR_OF = {"docker": "docker", "null": "systemd"}
"""Which executor runs each kind of task (`models.TASK_KINDS`)."""
PROBE_TIMEOUT = 20.0
"""A backend that does not answer within this long is reported unavailable."""
DEFAULT_REFRESH_INTERVAL = 60.0
"""Seconds between two probes after start-up: an engine that came up (or
went away) is noticed within about this long."""


PASSING_KINDS = frozenset({"docker"})
"""Kinds whose executor failing to answer is an outage that passes (a Docker
engine restarting): tasks wait rather than being refused. For NULL tasks a
launcher that does not answer through sudo is a setup problem that lasts."""


async def probe_kind(
    executor: Executor | None, missing: str, *, timeout: float = PROBE_TIMEOUT, passing: bool = False
) -> Capability:
    """Whether `executor` can run its tasks now. `missing`: the reason when the
    runner has no such executor at all (which lasts); `passing`: whether a
    failing answer is a passing outage (`Capability.lasting`)."""
    if executor is None:
        return Capability(False, missing)
    try:
        await asyncio.wait_for(executor.fingerprint(), timeout)
    except TimeoutError:
        return Capability(False, f"the {executor.name} executor did not answer within {timeout:g}s", not passing)
    except Exception as exc:  # noqa: BLE001 - any failure is the reason, told to the Host
        return Capability(False, str(exc) or type(exc).__name__, not passing)
    return Capability(True)


async def probe(
    executors: Mapping[str, Executor], missing: Mapping[str, str] | None = None, *, timeout: float = PROBE_TIMEOUT
) -> NodeCapabilities:
    """Every kind at once. `missing[name]`: why executor `name` was not set up
    (`Executor.unavailable`); a name without one says only that it is absent."""
    missing = missing or {}
    kinds = list(EXECUTOR_OF)
    found = await asyncio.gather(
        *(
            probe_kind(
                executors.get(EXECUTOR_OF[kind]),
                missing.get(EXECUTOR_OF[kind]) or f"this runner has no {EXECUTOR_OF[kind]} executor",
                timeout=timeout,
                passing=kind in PASSING_KINDS,
            )
            for kind in kinds
        )
    )
    return NodeCapabilities(**dict(zip(kinds, found, strict=True)))


class CapabilityWatch:
    """The latest capability record, refreshed in the background.

    `current` is what registration and every heartbeat send; it never waits
    for a probe. `start` probes once (before the runner registers, so the
    Host knows from the first moment) and then every `interval` seconds."""

    def __init__(
        self,
        executors: Mapping[str, Executor],
        missing: Mapping[str, str] | None = None,
        *,
        interval: float = DEFAULT_REFRESH_INTERVAL,
    ):
        self._executors = executors
        self._missing = dict(missing or {})
        self.interval = interval
        self.current = NodeCapabilities()
        self._loop: asyncio.Task[None] | None = None

    async def refresh(self) -> NodeCapabilities:
        """Probe now; log a change; return the new record."""
        found = await probe(self._executors, self._missing)
        if found != self.current:
            log.info("this node runs: %s", found.summary())
        self.current = found
        return found

    async def start(self) -> None:
        await self.refresh()
        self._loop = asyncio.create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("probing what this node can run failed; keeping the last answer")

    async def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
