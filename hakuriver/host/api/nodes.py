"""Node routes, and the service's own: health and the OpenAPI document."""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from ... import __version__
from ...errors import NotFound, ValidationError
from ...parsing import validate_node_name
from ...webapi import json_response, read_json_object, require_type
from ..accounts import principal_of, require_admin
from ..cluster import Cluster
from ..db import NodeRecord
from ..keys import CLUSTER, DB, LIVENESS


def node_json(node: NodeRecord, cluster: Cluster) -> dict[str, Any]:
    used = cluster.allocated(node.hostname)
    return {
        "hostname": node.hostname,
        "url": node.url,
        "online": node.online,
        "cores": node.cores,
        "memory": node.memory,
        "numa": [n.to_json() for n in node.numa],
        "gpus": [g.to_json() for g in node.gpus],
        "capabilities": None if node.capabilities is None else node.capabilities.to_json(),
        "registered_at": node.registered_at,
        "last_heartbeat": node.last_heartbeat,
        "stats": node.stats,
        "drained": None if node.drain is None else node.drain.to_json(),
        "active_tasks": [str(i) for i in cluster.holding_tasks(node.hostname)],
        "allocated": {
            "cores": used.cores,
            "memory": used.memory,
            "gpus": sorted(used.gpus),
            "numa": {
                str(k): {"cores": used.numa_cores.get(k, 0), "memory": used.numa_memory.get(k, 0)}
                for k in sorted(set(used.numa_cores) | set(used.numa_memory))
            },
        },
    }


async def list_nodes(request: web.Request) -> web.Response:
    cluster = request.app[CLUSTER]
    # From memory: the Host keeps every node there, with its latest heartbeat.
    nodes = [cluster.nodes[h] for h in sorted(cluster.nodes)]
    return json_response({"nodes": [node_json(n, cluster) for n in nodes]})


async def get_node(request: web.Request) -> web.Response:
    name = validate_node_name(request.match_info["hostname"])
    node = request.app[CLUSTER].nodes.get(name)
    if node is None:
        raise NotFound(f"no node {name}")
    return json_response(node_json(node, request.app[CLUSTER]))


async def forget_node(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "forget nodes")
    name = validate_node_name(request.match_info["hostname"])
    await request.app[CLUSTER].forget_node(name)
    request.app[LIVENESS].history.forget(name)
    return json_response({"forgotten": name})


MAX_DRAIN_REASON = 500
"""The longest reason an admin may give for a drain (characters)."""


def drain_reason(data: dict[str, Any]) -> str:
    """The drain's `reason`: one line of printable text (whitespace runs become
    one space), so that `client nodes` can show it as is."""
    raw = require_type(data, "reason", str, required=False, default="")
    reason = " ".join(raw.split())
    if len(reason) > MAX_DRAIN_REASON:
        raise ValidationError(f"'reason' is longer than {MAX_DRAIN_REASON} characters")
    if not reason.isprintable():
        raise ValidationError("'reason' holds a control character")
    return reason


async def drain_node(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal, "drain nodes")
    name = validate_node_name(request.match_info["hostname"])
    data = await read_json_object(request, {"reason"}, optional=True)
    cluster = request.app[CLUSTER]
    record = await cluster.drain_node(name, reason=drain_reason(data), by=principal.name)
    return json_response(node_json(record, cluster))


async def resume_node(request: web.Request) -> web.Response:
    principal = principal_of(request)
    require_admin(principal, "resume nodes")
    name = validate_node_name(request.match_info["hostname"])
    await read_json_object(request, set(), optional=True)
    cluster = request.app[CLUSTER]
    record = await cluster.resume_node(name, by=principal.name)
    return json_response(node_json(record, cluster))


async def health(request: web.Request) -> web.Response:
    db = request.app[DB]
    await db.ping()  # the database answers (SELECT 1)
    nodes = list(request.app[CLUSTER].nodes.values())
    # From memory (kept by the database's writer), not a COUNT over the table.
    counts = db.task_counts()
    if counts is None:
        counts = await db.count_tasks_by_state()
    return json_response(
        {
            "status": "ok",
            "version": __version__,
            "nodes": {"online": sum(n.online for n in nodes), "offline": sum(not n.online for n in nodes)},
            "tasks": {str(k): v for k, v in counts.items()},
        }
    )


async def openapi(request: web.Request) -> web.Response:
    text = resources.files("hakuriver.host").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return web.Response(text=text, content_type="application/yaml")
