"""Liveness: who is alive, and whether they agree with the Host.

- `register`: a runner (re)joins with what it offers and what it runs.
- `heartbeat`: a runner is alive; its list of running tasks is reconciled
  with the Host's view (lost tasks restored, tasks that should not run
  killed, tasks it forgot marked lost). Liveness is kept in memory: a beat
  writes the database only when it changes something durable (the node was
  offline, its capabilities changed) or once a minute.
- `check_liveness` / `liveness_loop`: nodes whose heartbeats stopped go
  offline and their tasks become lost (or, with a retry left, pending again:
  host/retries.py).

A runner's list of what it holds (running, starting, results in delivery)
also lifts the retry fences on that node: a task it no longer holds may be
placed there again. A listed run of an attempt the Host retried is killed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections.abc import Iterable
from typing import Any

from ..errors import Conflict, Forbidden, NotFound
from ..models import NodeCapabilities, NodeResources, TaskState
from .accounts import token_hash
from .cluster import Cluster
from .db import NodeRecord
from .telemetry import HeartbeatHistory

log = logging.getLogger(__name__)

HEARTBEAT_PERSIST_SECONDS = 60.0
"""How stale a node's heartbeat in the database may get: for a backup or an
inspection of the file; the Host itself reads liveness from memory."""


class Liveness:
    def __init__(self, cluster: Cluster, history: HeartbeatHistory | None = None):
        self.cluster = cluster
        self.history = HeartbeatHistory() if history is None else history
        """Samples of each node's heartbeat stats, for the dashboard's charts (memory only)."""
        self.persist_every = max(HEARTBEAT_PERSIST_SECONDS, cluster.config.timing.heartbeat_timeout)
        """A node's heartbeat reaches the database at most this often (unless it changes something)."""
        self._persisted: dict[str, float] = {}

    def check_node_key(self, hostname: str, node_key: str | None) -> None:
        """Refuse a heartbeat or report for `hostname` from any runner but the
        one bound to that name. Unbound names (registered before identities
        existed) are let through until their runner registers again."""
        record = self.cluster.nodes.get(hostname)
        if record is None or record.identity_hash is None:
            return
        if node_key is None or not hmac.compare_digest(token_hash(node_key), record.identity_hash):
            log.warning("refused a call for node %s from a runner that is not bound to that name", hostname)
            raise Forbidden(f"this runner is not the one bound to node {hostname}")

    async def register(
        self,
        res: NodeResources,
        reported: list[dict[str, Any]],
        finishing: Iterable[int] = (),
        *,
        node_key: str | None = None,
        order_token: str = "",
    ) -> NodeRecord:
        """(Re)register a node. The first runner to register a name binds it
        (by the hash of its node key); another identity is refused while the
        node is online, and logged."""
        cluster = self.cluster
        identity = token_hash(node_key) if node_key else None
        existing = cluster.nodes.get(res.hostname)
        if existing is not None and existing.identity_hash and existing.identity_hash != identity:
            if existing.online or identity is None:
                log.warning("refused a registration as node %s: it is bound to another runner identity", res.hostname)
                raise Conflict(
                    f"node {res.hostname} is bound to another runner; if this runner replaces it, "
                    f"stop the old one, or have an admin run 'hakuriver.admin node forget {res.hostname}'"
                )
            log.warning("node %s was offline and is now bound to a new runner identity", res.hostname)
        now = cluster.clock()
        record = await cluster.db.upsert_node(res, now, identity_hash=identity, order_token=order_token)
        self._persisted[record.hostname] = now  # stored as its last heartbeat: the next beat need not write
        cluster.nodes[record.hostname] = record
        cluster.resources[record.hostname] = record.resources
        kills = await self._reconcile(record.hostname, reported, list(finishing))
        for task_id in kills:
            cluster.spawn(cluster.forward(record.hostname, task_id, "kill"))
        cluster.kick()
        return record

    async def heartbeat(
        self,
        hostname: str,
        stats: dict[str, Any],
        reported: list[dict[str, Any]],
        finishing: list[int],
        capabilities: NodeCapabilities | None = None,
    ) -> list[int]:
        """Record a heartbeat; returns task ids the runner must kill.
        `capabilities`, when the runner sends them, replace what it said before
        (its Docker engine came up, say); None keeps them."""
        cluster = self.cluster
        now = cluster.clock()
        before = cluster.nodes.get(hostname)
        if (
            before is not None
            and before.online
            and (capabilities is None or capabilities == before.capabilities)
            and now - self._persisted.get(hostname, 0.0) < self.persist_every
        ):
            # Nothing durable changed: liveness lives in memory (the offline
            # sweep reads it there), so the beat costs no database write. A
            # restarted Host gives every node a full timeout anyway.
            record = dataclasses.replace(before, last_heartbeat=now, stats=stats)
        else:
            stored = await cluster.db.record_heartbeat(hostname, stats, now, capabilities)
            if stored is None:
                raise NotFound(f"node {hostname} is not registered", code="unknown_node")
            self._persisted[hostname] = now
            record = stored
            before = before or stored
        self.history.record(hostname, stats, now)
        came_back = not before.online
        cluster.nodes[hostname] = record
        if record.capabilities != before.capabilities:
            runs = record.capabilities.summary() if record.capabilities else "unknown"
            log.info("node %s now says it runs: %s", hostname, runs)
            cluster.resources[hostname] = record.resources
            cluster.kick()  # a task waiting for what it can now run may start
        kills = await self._reconcile(hostname, reported, finishing)
        if came_back:
            log.info("node %s is back online", hostname)
            cluster.kick()
        return kills

    async def _reconcile(self, hostname: str, reported: list[dict[str, Any]], finishing: list[int]) -> list[int]:
        """Compare what a runner says it runs with what the Host believes."""
        cluster = self.cluster
        kills: list[int] = []
        changed = False
        by_id = {int(r["task_id"]): TaskState(r["state"]) for r in reported}
        attempts = {int(r["task_id"]): int(r.get("attempt", 1)) for r in reported}
        stored = {t.id: t for t in await cluster.db.get_tasks(list(by_id))} if by_id else {}
        # A heartbeat may have been built before the latest pause or resume was
        # answered; within that window its running/paused view is stale.
        stale_before = cluster.clock() - 2 * cluster.config.timing.heartbeat_interval
        for task_id, state in by_id.items():
            task = stored.get(task_id)
            if task is None:
                log.warning("node %s runs task %s, which this Host does not know; leaving it alone", hostname, task_id)
                continue
            if task.node != hostname or attempts[task_id] != task.attempt:
                # Not ours, or an attempt the Host gave up on and retried (`--retries`).
                kills.append(task_id)
                continue
            if (
                task.state is TaskState.LOST
                or task.state is TaskState.ASSIGNING
                or (
                    task.state in (TaskState.RUNNING, TaskState.PAUSED)
                    and task.state is not state
                    and cluster.controlled_at.get(task_id, 0.0) < stale_before
                )
            ):
                if await cluster.transition(task_id, state, current=task, attempt=task.attempt, error=None) is not None:
                    changed = True
                    if task.state is TaskState.LOST:
                        log.info("task %s on %s restored from lost to %s", task_id, hostname, state)
            elif task.state.is_final:
                kills.append(task_id)
        # A holding task the runner neither runs nor is delivering a result
        # for was lost by it (its state store wiped, say). The grace covers
        # a heartbeat built just before the task started on the runner.
        grace = cluster.config.timing.heartbeat_timeout
        now = cluster.clock()
        known = set(by_id) | set(finishing)
        suspects = [h.task_id for h in cluster.ledger.holds_on(hostname) if h.task_id not in known]
        for task in await cluster.db.get_tasks(suspects) if suspects else []:
            if now - (task.assigned_at or now) < grace:
                continue
            lost = await cluster.transition(
                task.id,
                TaskState.LOST,
                current=task,
                attempt=task.attempt,
                error=f"runner {hostname} no longer knows this task",
            )
            if lost is not None:
                changed = True
        # What this runner holds now, in full: a retried task's earlier attempt
        # that it no longer holds cannot collide with a new one there.
        if cluster.fences.heard_from(hostname, known):
            changed = True
        if changed:
            await cluster.notify_changed()
            cluster.kick()
        return kills

    async def check_liveness(self) -> list[tuple[str, list[int]]]:
        """Mark nodes offline whose heartbeats stopped; their tasks become lost.

        After a Host (re)start, every node gets a full timeout to heartbeat
        before anything is marked offline: the Host being down is not the
        runners' fault.
        """
        cluster = self.cluster
        timeout = cluster.config.timing.heartbeat_timeout
        now = cluster.clock()
        if now < cluster.started_at + timeout:
            return []
        stale = [h for h, n in cluster.nodes.items() if n.online and n.last_heartbeat < now - timeout]
        if not stale:
            return []

        def still_stale(hostname: str) -> bool:
            node = cluster.nodes.get(hostname)
            return node is not None and node.online and node.last_heartbeat < now - timeout

        offline = await cluster.db.mark_nodes_offline(stale, now=now, still_stale=still_stale)
        for hostname, task_ids in offline:
            # Those with a retry left were put back to pending by the same
            # write (host/retries.py); the rest are lost.
            ended = await cluster.db.get_tasks(task_ids)
            retried = {t.id: t for t in ended if t.state is TaskState.PENDING}
            lost = [i for i in task_ids if i not in retried]
            if cluster.on_transition is not None:
                # Not through Cluster.transition: the metrics hear of these here.
                for task in ended:
                    if task.state is TaskState.LOST:
                        cluster.on_transition(None, task)
            log.warning(
                "node %s missed heartbeats for %.0fs: offline; %d task(s) lost%s",
                hostname,
                timeout,
                len(lost),
                f", {len(retried)} retried" if retried else "",
            )
            for task_id in task_ids:
                cluster.ledger.release(task_id)
            for task in retried.values():
                cluster.requeued(task, hostname)
            await cluster.settle_dependents((task_id, TaskState.LOST, None) for task_id in lost)
            record = await cluster.db.get_node(hostname)
            if record is not None:
                # The stored heartbeat may be older than the one in memory.
                seen = cluster.nodes.get(hostname)
                if seen is not None:
                    record = dataclasses.replace(record, last_heartbeat=seen.last_heartbeat, stats=seen.stats)
                cluster.nodes[hostname] = record
        if offline:
            await cluster.notify_changed()
            cluster.kick()
        return offline

    async def liveness_loop(self) -> None:
        # timing.cleanup_check_interval is the 0.3 name of this sweep's period.
        interval = self.cluster.config.timing.cleanup_check_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_liveness()
            except Exception:
                log.exception("liveness sweep failed; retrying in %.0fs", interval)
