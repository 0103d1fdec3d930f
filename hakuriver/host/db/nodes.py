"""SQL for nodes: registration, heartbeats, drain, and going offline."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import aiosqlite

from ...models import (
    NodeCapabilities,
    NodeResources,
    TaskState,
)
from .rows import Drain, NodeRecord, _capabilities_text, _chunks, _dumps, _node_from_row
from .schema import _ATTEMPT_COLUMNS, _HOLDING_SQL, _NODE_COLUMNS
from .store import Counted, Store
from .tasks import REQUEUE_SETS


class NodeQueries(Store):
    """Nodes (mixed into `Database`)."""

    async def upsert_node(
        self, res: NodeResources, now: float, *, identity_hash: str | None = None, order_token: str = ""
    ) -> NodeRecord:
        """Register (or re-register) a node: it is online with a fresh heartbeat,
        bound to `identity_hash` (the caller checked the binding)."""
        params = (
            res.hostname,
            res.url,
            int(res.cores),
            int(res.memory),
            _dumps([n.to_json() for n in res.numa]),
            _dumps([g.to_json() for g in res.gpus]),
            now,
            now,
            identity_hash,
            order_token,
            _capabilities_text(res.capabilities),
        )

        async def op(conn: aiosqlite.Connection) -> NodeRecord:
            rows = await conn.execute_fetchall(
                f"""INSERT INTO nodes (hostname, url, cores, memory, numa_json, gpus_json, online,
                                       registered_at, last_heartbeat, stats_json, identity_hash, order_token,
                                       capabilities_json)
                    VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, '{{}}', ?, ?, ?)
                    ON CONFLICT(hostname) DO UPDATE SET
                        url=excluded.url, cores=excluded.cores, memory=excluded.memory,
                        numa_json=excluded.numa_json, gpus_json=excluded.gpus_json, online=1,
                        registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat,
                        identity_hash=excluded.identity_hash, order_token=excluded.order_token,
                        capabilities_json=excluded.capabilities_json
                    RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return _node_from_row(None, list(rows)[0])

        return await self._write(op)

    async def record_heartbeat(
        self, hostname: str, stats: dict[str, Any], now: float, capabilities: NodeCapabilities | None = None
    ) -> NodeRecord | None:
        """Store a heartbeat (the node is online again); None if the node is unknown.
        `capabilities` replaces the stored ones; None keeps them (a heartbeat
        that does not say leaves what registration said)."""
        params = (now, _dumps(stats), _capabilities_text(capabilities), hostname)

        async def op(conn: aiosqlite.Connection) -> NodeRecord | None:
            rows = await conn.execute_fetchall(
                f"""UPDATE nodes SET last_heartbeat=?, stats_json=?, online=1,
                        capabilities_json=COALESCE(?, capabilities_json)
                    WHERE hostname=? RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return next((_node_from_row(None, r) for r in rows), None)

        return await self._write(op)

    async def set_node_drain(self, hostname: str, drain: Drain | None) -> NodeRecord | None:
        """Drain a node (`drain` replaces any earlier one) or undo it (None).
        None if the node is unknown."""
        params = (
            None if drain is None else drain.at,
            None if drain is None else drain.by,
            None if drain is None else drain.reason,
            hostname,
        )

        async def op(conn: aiosqlite.Connection) -> NodeRecord | None:
            rows = await conn.execute_fetchall(
                f"""UPDATE nodes SET drained_at=?, drained_by=?, drained_reason=?
                    WHERE hostname=? RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return next((_node_from_row(None, r) for r in rows), None)

        return await self._write(op)

    async def get_node(self, hostname: str) -> NodeRecord | None:
        rows = await self._fetch(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE hostname=?", (hostname,), _node_from_row)
        return rows[0] if rows else None

    async def list_nodes(self, *, online: bool | None = None) -> list[NodeRecord]:
        """All nodes by hostname; `online=True/False` filters."""
        if online is None:
            return await self._fetch(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY hostname", (), _node_from_row)
        return await self._fetch(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE online=? ORDER BY hostname", (1 if online else 0,), _node_from_row
        )

    async def mark_nodes_offline(
        self,
        hostnames: Sequence[str],
        now: float | None = None,
        *,
        still_stale: Callable[[str], bool] | None = None,
    ) -> list[tuple[str, list[int]]]:
        """The nodes of `hostnames` that are online and that `still_stale`
        confirms when the write runs (the Host keeps heartbeats in memory and
        names the stale nodes itself) go offline, and their
        assigning/running/paused tasks become `lost` — all in one transaction.
        A task with a retry left (`--retries`, host/retries.py) is retried
        instead, in the same transaction: its attempt is recorded `lost` in
        `task_attempts` and it is `pending` again with the next attempt number.

        Returns `[(hostname, [task ids...]), ...]` for the nodes that went
        offline by this call (sorted by hostname, ids ascending): every task
        that stopped holding resources there, lost or retried (the caller
        reads which).
        """
        when = time.time() if now is None else now
        named = sorted(set(hostnames))

        async def op(conn: aiosqlite.Connection) -> Counted:
            delta: dict[TaskState, int] = {}
            hosts: list[str] = []
            # Asked again as the write runs: a beat that came while it
            # waited for the writer keeps its node online.
            fresh = [h for h in named if still_stale is None or still_stale(h)]
            for chunk in _chunks(fresh):
                rows = await conn.execute_fetchall(
                    f"UPDATE nodes SET online=0 WHERE online=1 AND hostname IN ({','.join('?' * len(chunk))}) "
                    "RETURNING hostname",
                    tuple(chunk),
                )
                hosts.extend(r[0] for r in rows)
            hosts.sort()
            lost: dict[str, list[int]] = {h: [] for h in hosts}
            for chunk in _chunks(hosts):
                marks = ",".join("?" * len(chunk))
                # What they leave, for the in-memory counts (RETURNING sees the new rows only).
                for state, n in await conn.execute_fetchall(
                    f"SELECT state, COUNT(*) FROM tasks WHERE node IN ({marks}) AND state IN ({_HOLDING_SQL}) "
                    "GROUP BY state",
                    tuple(chunk),
                ):
                    delta[TaskState(state)] = delta.get(TaskState(state), 0) - n
                retried = list(
                    await conn.execute_fetchall(
                        f"""INSERT INTO task_attempts (task_id, {_ATTEMPT_COLUMNS})
                            SELECT id, attempt, node, started_at, ?, 'lost', NULL,
                                   'node ' || node || ' stopped heartbeating'
                            FROM tasks WHERE node IN ({marks}) AND state IN ({_HOLDING_SQL}) AND attempt <= retries
                            RETURNING task_id, node""",
                        (when, *chunk),
                    )
                )
                if retried:
                    delta[TaskState.PENDING] = delta.get(TaskState.PENDING, 0) + len(retried)
                    for task_id, node in retried:
                        lost[node].append(task_id)
                    for ids in _chunks([r[0] for r in retried]):
                        await conn.execute(
                            f"UPDATE tasks SET {REQUEUE_SETS}, updated_at=? WHERE id IN ({','.join('?' * len(ids))})",
                            (when, *ids),
                        )
                rows = await conn.execute_fetchall(
                    f"""UPDATE tasks SET state='lost', finished_at=?, updated_at=?,
                               error='node ' || node || ' stopped heartbeating'
                        WHERE node IN ({marks}) AND state IN ({_HOLDING_SQL})
                        RETURNING id, node""",
                    (when, when, *chunk),
                )
                for task_id, node in rows:
                    lost[node].append(task_id)
                    delta[TaskState.LOST] = delta.get(TaskState.LOST, 0) + 1
            return Counted([(h, sorted(lost[h])) for h in hosts], delta)

        # Which tasks it ends or requeues is known only as it runs.
        self._held.forget_all()
        return await self._write(op, atomic=True)

    async def forget_node(self, hostname: str) -> bool:
        """Remove a node and its identity binding; its tasks keep their records."""

        async def op(conn: aiosqlite.Connection) -> bool:
            rows = list(
                await conn.execute_fetchall("DELETE FROM nodes WHERE hostname=? RETURNING hostname", (hostname,))
            )
            return bool(rows)

        return await self._write(op)
