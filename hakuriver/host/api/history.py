"""A node's recent heartbeat stats, for the dashboard's charts (`telemetry.py`)."""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound
from ...parsing import validate_node_name
from ...webapi import json_response, query_int
from ..keys import CLUSTER, LIVENESS


async def node_history(request: web.Request) -> web.Response:
    name = validate_node_name(request.match_info["hostname"])
    cluster = request.app[CLUSTER]
    if name not in cluster.nodes:
        raise NotFound(f"no node {name}")
    since = query_int(request, "since", None)
    history = request.app[LIVENESS].history
    return json_response({"hostname": name, **history.series(name, cluster.clock(), since)})
