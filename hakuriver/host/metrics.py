"""The Host's Prometheus metrics, served at `GET /metrics` (docs/monitoring.md).

Two kinds, in one `CollectorRegistry` per Host app (never the library's
global one: tests run several Hosts in one process):

- **State**, computed at scrape time from what the Host already holds in
  memory: nodes and what they offer, the resource ledger, each node's latest
  heartbeat stats (its GPUs' utilisation, memory, temperature, power), the
  pending queue with the latest pass's wait reasons, and the task counts by
  state that the database keeps in memory (`Store.task_counts`). A scrape
  never reads the database.
- **Events**, histograms observed as they happen: a submission's latency,
  each group commit of the database, each scheduling pass, each task's wait
  (submitted to running) and run time (started to its end, by final state).

`HostMetrics.render` tallies the pending queue (in chunks), builds the state
families on the event loop in one go (one pass over the nodes), then
formats the text one family at a time, yielding to the loop between
families, so a heartbeat waits at most for one family's formatting. (A worker
thread would not spare the loop: formatting is Python code that holds the
GIL, and each step of a heartbeat, the database thread's included, could then
wait up to the interpreter's switch interval for it.)

Labels are bounded: node names, GPU indexes a node registered, user names,
final states and wait-reason categories (`reason_category`); never a task id.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from .. import __version__
from ..models import FINAL_STATES, Task, TaskState
from .cluster import Cluster
from .waiting import NO_NODE_ONLINE

__all__ = ["CONTENT_TYPE_LATEST", "HostMetrics", "pending_by_user_reason", "reason_category", "state_families"]

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Seconds: submissions, commits, scheduling passes (fast, with a long tail)."""
TASK_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)
"""Seconds: how long tasks wait and run (seconds to days)."""
COMMIT_OPS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

NO_OWNER = "(none)"
"""The `user` label of tasks from before users (parentheses: no user name has them)."""

REASON_CATEGORIES = (
    "dependency",
    "limit_max_running",
    "limit_max_cores",
    "limit_max_gpus",
    "limit_array_max_running",
    "node_offline",
    "node_drained",
    "node_cannot_run",
    "no_node_online",
    "reserved",
    "resources",
    "position",
    "retry",
    "other",
)
"""Every value of the `reason` label of `hakuriver_tasks_pending`."""

_REASON_PREFIXES = (
    ("limit: max-running", "limit_max_running"),
    ("limit: max-cores", "limit_max_cores"),
    ("limit: max-gpus", "limit_max_gpus"),
    ("limit: array max-running", "limit_array_max_running"),
    ("reserved:", "reserved"),
    ("resources:", "resources"),
    ("position:", "position"),
    ("retry:", "retry"),
)


@functools.lru_cache(maxsize=4096)
def reason_category(reason: str) -> str:
    """The bounded category (one of `REASON_CATEGORIES`) of a wait reason from
    the scheduler (`host/scheduler/reasons.py`) or the retry fences
    (`host/retries.py`): the text names nodes, sizes and task ids, the
    category does not."""
    for prefix, category in _REASON_PREFIXES:
        if reason.startswith(prefix):
            return category
    if reason == NO_NODE_ONLINE:
        return "no_node_online"
    if reason.startswith("node "):
        if reason.endswith(" offline"):
            return "node_offline"
        if reason.endswith(" is drained"):
            return "node_drained"
        if " cannot run " in reason:
            return "node_cannot_run"
    return "other"


def _number(value: Any) -> float | None:
    """A finite number from a runner's stats, or None (stats are the runner's words)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


PENDING_CHUNK = 5000
"""Pending tasks tallied between two yields to the event loop."""


async def pending_by_user_reason(cluster: Cluster) -> dict[tuple[str, str], int]:
    """How many pending tasks each (owner, reason category) has. The queue is
    copied at once, then tallied `PENDING_CHUNK` tasks at a time, yielding to
    the loop in between: a queue of 100,000 holds no heartbeat up for long."""
    items = list(cluster.pending.items())
    tally: dict[tuple[str, str], int] = {}
    for start in range(0, len(items), PENDING_CHUNK):
        if start:
            await asyncio.sleep(0)
        for task_id, task in items[start : start + PENDING_CHUNK]:
            why = "dependency" if cluster.deps.blocked(task_id) else reason_category(cluster.waits.reason(task_id))
            key = (task.owner or NO_OWNER, why)
            tally[key] = tally.get(key, 0) + 1
    return tally


def state_families(
    cluster: Cluster,
    counts: Mapping[TaskState, int] | None,
    now: float,
    pending: Mapping[tuple[str, str], int],
) -> list[Metric]:
    """The state gauges, from the Host's memory as it is now (run on the event
    loop), with `pending` from `pending_by_user_reason`."""
    info = GaugeMetricFamily("hakuriver_host_info", "The Host's version (always 1).", labels=["version"])
    info.add_metric([__version__], 1)
    started = GaugeMetricFamily("hakuriver_host_start_time_seconds", "When the Host started (Unix time).")
    started.add_metric([], cluster.started_at)

    by_state = GaugeMetricFamily(
        "hakuriver_nodes", "Nodes the Host knows, by state (online, offline).", labels=["state"]
    )
    drained_total = GaugeMetricFamily("hakuriver_nodes_drained", "Nodes an admin drained (online or not).")
    node = ["node"]
    online = GaugeMetricFamily("hakuriver_node_online", "1 while the node heartbeats, 0 when offline.", labels=node)
    drained = GaugeMetricFamily("hakuriver_node_drained", "1 while an admin has drained the node.", labels=node)
    age = GaugeMetricFamily(
        "hakuriver_node_heartbeat_age_seconds", "Seconds since the node's latest heartbeat.", labels=node
    )
    cores = GaugeMetricFamily("hakuriver_node_cores", "Cores the node offers.", labels=node)
    cores_used = GaugeMetricFamily(
        "hakuriver_node_cores_allocated", "Cores held by tasks on the node (assigning, running, paused).", labels=node
    )
    memory = GaugeMetricFamily("hakuriver_node_memory_bytes", "Memory the node offers.", labels=node)
    memory_used = GaugeMetricFamily(
        "hakuriver_node_memory_allocated_bytes", "Memory reserved by tasks on the node (--memory).", labels=node
    )
    gpus = GaugeMetricFamily("hakuriver_node_gpus", "GPUs the node offers.", labels=node)
    gpus_used = GaugeMetricFamily("hakuriver_node_gpus_allocated", "GPUs held by tasks on the node.", labels=node)
    cpu = GaugeMetricFamily(
        "hakuriver_node_cpu_usage_ratio", "The node's CPU use (0 to 1), from its latest heartbeat.", labels=node
    )
    mem_measured = GaugeMetricFamily(
        "hakuriver_node_memory_used_bytes", "Memory in use on the node, from its latest heartbeat.", labels=node
    )
    gpu = ["node", "gpu"]
    gpu_allocated = GaugeMetricFamily("hakuriver_gpu_allocated", "1 while a task holds the GPU.", labels=gpu)
    gpu_util = GaugeMetricFamily(
        "hakuriver_gpu_utilization_ratio", "GPU utilisation (0 to 1), from the node's latest heartbeat.", labels=gpu
    )
    gpu_mem = GaugeMetricFamily("hakuriver_gpu_memory_used_bytes", "GPU memory in use (heartbeat).", labels=gpu)
    gpu_mem_total = GaugeMetricFamily("hakuriver_gpu_memory_total_bytes", "GPU memory in all.", labels=gpu)
    gpu_temp = GaugeMetricFamily("hakuriver_gpu_temperature_celsius", "GPU temperature (heartbeat).", labels=gpu)
    gpu_power = GaugeMetricFamily("hakuriver_gpu_power_watts", "GPU power draw (heartbeat).", labels=gpu)

    up = down = 0
    for name, record in sorted(cluster.nodes.items()):
        is_drained = name in cluster.drains
        up, down = (up + 1, down) if record.online else (up, down + 1)
        used = cluster.allocated(name)
        online.add_metric([name], 1 if record.online else 0)
        drained.add_metric([name], 1 if is_drained else 0)
        if record.last_heartbeat:
            age.add_metric([name], max(0.0, now - record.last_heartbeat))
        cores.add_metric([name], record.cores)
        cores_used.add_metric([name], used.cores)
        memory.add_metric([name], record.memory)
        memory_used.add_metric([name], used.memory)
        gpus.add_metric([name], len(record.gpus))
        gpus_used.add_metric([name], len(used.gpus))
        stats = record.stats if isinstance(record.stats, dict) else {}
        if (value := _number(stats.get("cpu_percent"))) is not None:
            cpu.add_metric([name], value / 100.0)
        if (value := _number(stats.get("memory_used"))) is not None:
            mem_measured.add_metric([name], value)
        # Only GPUs the node registered: what a heartbeat says cannot add series.
        registered = {g.index: g for g in record.gpus}
        for gpu_index in sorted(registered):
            gpu_allocated.add_metric([name, str(gpu_index)], 1 if gpu_index in used.gpus else 0)
        reported = stats.get("gpus")
        seen: set[int] = set()
        for entry in reported if isinstance(reported, list) else []:
            index = entry.get("index") if isinstance(entry, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or index not in registered or index in seen:
                continue
            seen.add(index)
            labels = [name, str(index)]
            if (value := _number(entry.get("utilization"))) is not None:
                gpu_util.add_metric(labels, value / 100.0)
            if (value := _number(entry.get("memory_used"))) is not None:
                gpu_mem.add_metric(labels, value)
            total = _number(entry.get("memory_total")) or float(registered[index].memory_total or 0)
            if total:
                gpu_mem_total.add_metric(labels, total)
            if (value := _number(entry.get("temperature"))) is not None:
                gpu_temp.add_metric(labels, value)
            if (value := _number(entry.get("power_watts"))) is not None:
                gpu_power.add_metric(labels, value)
    by_state.add_metric(["online"], up)
    by_state.add_metric(["offline"], down)
    drained_total.add_metric([], len(cluster.drains))

    families: list[Metric] = [info, started, by_state, drained_total, online, drained, age, cores, cores_used]
    families += [memory, memory_used, gpus, gpus_used, cpu, mem_measured]
    families += [gpu_allocated, gpu_util, gpu_mem, gpu_mem_total, gpu_temp, gpu_power]

    if counts is not None:
        tasks = GaugeMetricFamily("hakuriver_tasks", "Tasks in the database, by state.", labels=["state"])
        for state in TaskState:
            tasks.add_metric([str(state)], counts.get(state, 0))
        families.append(tasks)
    by_user_reason = GaugeMetricFamily(
        "hakuriver_tasks_pending",
        "Pending tasks by owner and by why they wait (the latest scheduling pass; categories in docs/monitoring.md).",
        labels=["user", "reason"],
    )
    for (user, why), n in sorted(pending.items()):
        by_user_reason.add_metric([user, why], n)
    families.append(by_user_reason)
    return families


class _Snapshot(Collector):
    """Yields the families it is given (one render's, a few at a time)."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)

    def describe(self) -> Iterable[Metric]:
        return []  # its names change with the cluster; nothing to check at register


class HostMetrics:
    """One Host's registry: the event histograms and the state snapshot."""

    def __init__(self, *, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.submit_seconds = Histogram(
            "hakuriver_submit_duration_seconds",
            "Time to accept a submission (POST /api/tasks answered 201), its commit included.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.db_commit_seconds = Histogram(
            "hakuriver_db_commit_duration_seconds",
            "One group commit of the Host's database, BEGIN to COMMIT (fsync included).",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.db_commit_operations = Histogram(
            "hakuriver_db_commit_operations",
            "Write operations sharing one group commit.",
            buckets=COMMIT_OPS_BUCKETS,
            registry=reg,
        )
        self.scheduling_pass_seconds = Histogram(
            "hakuriver_scheduling_pass_duration_seconds",
            "One scheduling pass: the lock, placement, and writing the placements.",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.task_wait_seconds = Histogram(
            "hakuriver_task_wait_seconds",
            "From a task's submission to its start (running).",
            buckets=TASK_BUCKETS,
            registry=reg,
        )
        self.task_run_seconds = Histogram(
            "hakuriver_task_run_seconds",
            "From a task's start to its end, by final state.",
            ["state"],
            buckets=TASK_BUCKETS,
            registry=reg,
        )
        for state in sorted(FINAL_STATES):
            self.task_run_seconds.labels(state=str(state))  # every series exists from the start

    # ------------------------------------------------------------- observers
    def observe_commit(self, seconds: float, operations: int) -> None:
        self.db_commit_seconds.observe(seconds)
        self.db_commit_operations.observe(operations)

    def observe_pass(self, seconds: float) -> None:
        self.scheduling_pass_seconds.observe(seconds)

    def observe_transition(self, before: Task | None, after: Task) -> None:
        """A task changed state (`Cluster.transition`): its first start gives
        its wait, its end its run time."""
        if (
            before is not None
            and before.state is TaskState.ASSIGNING
            and after.state in (TaskState.RUNNING, TaskState.PAUSED)
            and after.started_at is not None
        ):
            self.task_wait_seconds.observe(max(0.0, after.started_at - after.submitted_at))
        if after.state.is_final and after.started_at is not None and after.finished_at is not None:
            self.task_run_seconds.labels(state=str(after.state)).observe(max(0.0, after.finished_at - after.started_at))

    # ----------------------------------------------------------------- scrape
    async def render(self, cluster: Cluster, counts: Mapping[TaskState, int] | None) -> bytes:
        """The exposition text: the event histograms (`registry`), then the
        state families of a snapshot taken now (see the module doc)."""
        pending = await pending_by_user_reason(cluster)
        families = state_families(cluster, counts, self.clock(), pending)
        parts = [generate_latest(self.registry)]
        # A registry of this render's own: concurrent renders never share one.
        snapshot = _Snapshot()
        one = CollectorRegistry(auto_describe=False)
        one.register(snapshot)
        for family in families:
            await asyncio.sleep(0)  # a heartbeat that arrived meanwhile goes first
            snapshot.families = [family]
            parts.append(generate_latest(one))
        return b"".join(parts)
