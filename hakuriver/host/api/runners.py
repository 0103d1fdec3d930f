"""Runner-facing routes: registration, heartbeats and task reports."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ...errors import ValidationError
from ...ids import parse_id
from ...models import GpuInfo, NodeCapabilities, NodeResources, NumaNode, TaskState
from ...parsing import validate_node_name
from ...runrequest import MAX_ATTEMPT
from ...webapi import NODE_KEY_HEADER, json_response, read_json_object, require_type
from ..keys import CLUSTER, CONFIG, LIVENESS
from .tasks import task_id_of

log = logging.getLogger(__name__)

REGISTER_FIELDS = {
    "hostname",
    "url",
    "cores",
    "memory",
    "numa",
    "gpus",
    "tasks",
    "finishing",
    "node_key",
    "order_token",
    "capabilities",
}
MAX_CORES = 1 << 20
MAX_MEMORY = 1 << 62


def _secret(data: dict[str, Any], name: str) -> str | None:
    value = require_type(data, name, str, required=False)
    if value is not None and not (16 <= len(value) <= 256 and value.isascii() and value.isprintable()):
        raise ValidationError(f"'{name}' must be 16 to 256 printable ASCII characters")
    return value


def _node_key(request: web.Request) -> str | None:
    return request.headers.get(NODE_KEY_HEADER) or None


HEARTBEAT_FIELDS = {"hostname", "stats", "tasks", "finishing", "capabilities"}
REPORT_FIELDS = {"hostname", "state", "exit_code", "error", "output_error", "attempt"}
MAX_REPORT_TEXT = 4096
"""Characters of a report's `output_error` the Host keeps (the rest is cut)."""


def _capabilities(data: dict[str, Any]) -> NodeCapabilities | None:
    """The runner's `capabilities`, or None when it sent none (a runner from
    before them: it may run anything) or a record this Host cannot read.
    Never a refusal: a heartbeat turned away for this field would take a
    healthy node offline, so the record is dropped with a warning instead."""
    raw = data.get("capabilities")
    if raw is None:
        return None
    try:
        return NodeCapabilities.from_json(raw)
    except ValueError as exc:
        log.warning("runner %r sent a malformed 'capabilities' (ignored): %s", data.get("hostname"), exc)
        return None


def _reported_tasks(data: dict[str, Any]) -> list[dict[str, Any]]:
    items = require_type(data, "tasks", list, required=False, default=[])
    out = []
    for item in items:
        # `attempt` (a retried task's run, `--retries`) is sent only when it is not 1.
        if not isinstance(item, dict) or not {"task_id", "state"} <= set(item) <= {"task_id", "state", "attempt"}:
            raise ValidationError('each entry of \'tasks\' must be {"task_id": ..., "state": ...[, "attempt": N]}')
        state = item["state"]
        if state not in (TaskState.RUNNING, TaskState.PAUSED):
            raise ValidationError(f"a reported task must be running or paused, not {state!r}")
        out.append({"task_id": parse_id(item["task_id"]), "state": state, "attempt": _attempt(item)})
    return out


def _attempt(data: dict[str, Any]) -> int:
    """A report's `attempt` (1 when absent: a runner from before retries, or a first run)."""
    value = data.get("attempt", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ATTEMPT:
        raise ValidationError(f"'attempt' must be a whole number from 1 to {MAX_ATTEMPT}")
    return value


async def runner_register(request: web.Request) -> web.Response:
    data = await read_json_object(request, REGISTER_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    url = require_type(data, "url", str)
    if not url.startswith(("http://", "https://")):
        raise ValidationError("'url' must be an http(s) URL")
    if request.app[CONFIG].tls.enabled and not url.startswith("https://"):
        # The Host would send its order token, and tasks' environments, in the clear.
        raise ValidationError(
            f"this Host speaks HTTPS, so runners must too: {url} is plain HTTP; set tls.enabled in the runner's config"
        )
    cores = require_type(data, "cores", int)
    memory = require_type(data, "memory", int)
    if not (1 <= cores <= MAX_CORES and 1 <= memory <= MAX_MEMORY):
        raise ValidationError(f"'cores' must be 1 to {MAX_CORES} and 'memory' 1 to {MAX_MEMORY}")
    try:
        numa = tuple(NumaNode.from_json(n) for n in require_type(data, "numa", list, required=False, default=[]))
        gpus = tuple(GpuInfo.from_json(g) for g in require_type(data, "gpus", list, required=False, default=[]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValidationError(f"malformed 'numa' or 'gpus': {exc}") from None
    res = NodeResources(
        hostname=hostname,
        url=url,
        cores=cores,
        memory=memory,
        numa=numa,
        gpus=gpus,
        capabilities=_capabilities(data),
    )
    finishing = [parse_id(i) for i in require_type(data, "finishing", list, required=False, default=[])]
    record = await request.app[LIVENESS].register(
        res,
        _reported_tasks(data),
        finishing,
        node_key=_secret(data, "node_key"),
        order_token=_secret(data, "order_token") or "",
    )
    config = request.app[CONFIG]
    return json_response({"hostname": record.hostname, "heartbeat_interval": config.timing.heartbeat_interval})


async def runner_heartbeat(request: web.Request) -> web.Response:
    data = await read_json_object(request, HEARTBEAT_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    stats = require_type(data, "stats", dict, required=False, default={})
    finishing = [parse_id(i) for i in require_type(data, "finishing", list, required=False, default=[])]
    capabilities = _capabilities(data)
    request.app[LIVENESS].check_node_key(hostname, _node_key(request))
    kills = await request.app[LIVENESS].heartbeat(hostname, stats, _reported_tasks(data), finishing, capabilities)
    return json_response({"kill": [str(k) for k in kills]})


async def runner_report(request: web.Request) -> web.Response:
    task_id = task_id_of(request)
    data = await read_json_object(request, REPORT_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    try:
        state = TaskState(require_type(data, "state", str))
    except ValueError:
        raise ValidationError(f"unknown state {data.get('state')!r}") from None
    exit_code = require_type(data, "exit_code", int, required=False)
    error = require_type(data, "error", str, required=False)
    output_error = require_type(data, "output_error", str, required=False)
    if output_error is not None and not state.is_final:
        raise ValidationError("'output_error' comes only with a final state")
    if output_error is not None and len(output_error) > MAX_REPORT_TEXT:
        output_error = output_error[: MAX_REPORT_TEXT - 3] + "..."
    if exit_code is not None and not -(1 << 31) <= exit_code < (1 << 31):
        raise ValidationError("'exit_code' must fit in 32 bits")
    request.app[LIVENESS].check_node_key(hostname, _node_key(request))
    task = await request.app[CLUSTER].apply_report(
        hostname, task_id, state, exit_code=exit_code, error=error, output_error=output_error, attempt=_attempt(data)
    )
    return json_response({"task_id": str(task.id), "state": str(task.state)})
