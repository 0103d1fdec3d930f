"""The recent past of every node, from its heartbeats: bounded, in memory.

Each heartbeat carries the node's stats (CPU %, memory, and per GPU:
utilisation, memory, temperature, power; see `runner.gpu.GpuProbe.stats`).
`HeartbeatHistory` keeps a sample of them at most every `interval` seconds
for the last `window` seconds, in one ring buffer per node and per GPU, so
its memory is bounded by nodes x (GPUs + 1) x window / interval samples,
whatever the heartbeat rate. It feeds the dashboard's charts
(`GET /api/nodes/{hostname}/history`). Nothing is written to disk: a Host
restart starts the history afresh.

A runner's stats are its own word: anything malformed in them is dropped
(as None, or the GPU left out), never an error, so a heartbeat is never
refused for what its history would have kept.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

HISTORY_WINDOW = 3600.0
"""Seconds of history kept."""
HISTORY_INTERVAL = 10.0
"""Seconds between two samples of one node, at least (heartbeats in between are not kept)."""
MAX_GPUS = 64
"""GPUs per node whose history is kept (indices 0..MAX_GPUS-1)."""

GPU_FIELDS = ("utilization", "memory_used", "memory_total", "temperature", "power_watts")
NODE_FIELDS = ("cpu_percent", "memory_used", "memory_total")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) < 1e18 else None  # NaN and absurd values read as unknown


@dataclass
class _NodeHistory:
    node: deque[tuple[float | None, ...]]
    gpus: dict[int, deque[tuple[float | None, ...]]] = field(default_factory=dict)
    last: float = float("-inf")


class HeartbeatHistory:
    """Samples of each node's heartbeat stats (see the module doc)."""

    def __init__(self, *, window: float = HISTORY_WINDOW, interval: float = HISTORY_INTERVAL):
        self.window = window
        self.interval = interval
        self._nodes: dict[str, _NodeHistory] = {}

    @property
    def capacity(self) -> int:
        """Samples one ring buffer holds."""
        return int(self.window / self.interval) + 1

    def record(self, hostname: str, stats: Mapping[str, Any], now: float) -> bool:
        """Keep a sample of this heartbeat's stats unless the node's last one
        is younger than `interval`. True when it was kept."""
        history = self._nodes.get(hostname)
        if history is None:
            history = self._nodes[hostname] = _NodeHistory(deque(maxlen=self.capacity))
        if now - history.last < self.interval:
            return False
        history.last = now
        history.node.append((now, *(_number(stats.get(k)) for k in NODE_FIELDS)))
        gpus = stats.get("gpus")
        for gpu in gpus if isinstance(gpus, list) else ():
            if not isinstance(gpu, Mapping):
                continue
            index = gpu.get("index")
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < MAX_GPUS:
                continue
            ring = history.gpus.get(index)
            if ring is None:
                ring = history.gpus[index] = deque(maxlen=self.capacity)
            ring.append((now, *(_number(gpu.get(k)) for k in GPU_FIELDS)))
        return True

    def forget(self, hostname: str) -> None:
        self._nodes.pop(hostname, None)

    def nodes(self) -> list[str]:
        return sorted(self._nodes)

    def series(self, hostname: str, now: float, since: float | None = None) -> dict[str, Any]:
        """The node's samples of the last `window` seconds (and after `since`),
        column-wise, oldest first, as charts take them:
        `{"node": {"t": [...], "cpu_percent": [...], ...}, "gpus": [{"index": 0, "t": [...], ...}]}`."""
        start = now - self.window if since is None else max(since, now - self.window)
        history = self._nodes.get(hostname)
        out: dict[str, Any] = {"window": self.window, "interval": self.interval}
        if history is None:
            return {**out, "node": _columns([], NODE_FIELDS), "gpus": []}
        out["node"] = _columns([s for s in history.node if s[0] is not None and s[0] > start], NODE_FIELDS)
        out["gpus"] = [
            {"index": index, **_columns([s for s in ring if s[0] is not None and s[0] > start], GPU_FIELDS)}
            for index, ring in sorted(history.gpus.items())
        ]
        return out


def _columns(samples: list[tuple[float | None, ...]], names: tuple[str, ...]) -> dict[str, list[float | None]]:
    columns: dict[str, list[float | None]] = {"t": [s[0] for s in samples]}
    for i, name in enumerate(names, start=1):
        columns[name] = [s[i] for s in samples]
    return columns
