"""Runner-facing routes: registration, heartbeats and task reports (one, or a batch)."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from ...errors import HakuRiverError, ValidationError
from ...ids import parse_id
from ...models import GpuInfo, NodeCapabilities, NodeResources, NumaNode, RunnerReport, Task, TaskState
from ...parsing import validate_node_name
from ...runrequest import MAX_ATTEMPT
from ...webapi import (
    MAX_BATCH_ITEMS,
    NODE_KEY_HEADER,
    error_body,
    json_response,
    read_json_object,
    require_type,
)
from ..keys import CONFIG, LIVENESS, REPORTS
from ..reports import RUNNER_REPORTABLE
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
BATCH_FIELDS = {"hostname", "reports"}
BATCH_REPORT_FIELDS = REPORT_FIELDS - {"hostname"} | {"task_id"}
"""One item of a batch of reports: the single report's fields, and which task (the runner is the batch's)."""
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


def _report(data: dict[str, Any], task_id: int) -> RunnerReport:
    """A report's fields (the single route's body, or one item of a batch) as a `RunnerReport`."""
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
    return RunnerReport(task_id, state, exit_code, error, output_error, _attempt(data))


async def runner_report(request: web.Request) -> web.Response:
    task_id = task_id_of(request)
    data = await read_json_object(request, REPORT_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    report = _report(data, task_id)
    request.app[LIVENESS].check_node_key(hostname, _node_key(request))
    task = await request.app[REPORTS].apply_report(
        hostname,
        task_id,
        report.state,
        exit_code=report.exit_code,
        error=report.error,
        output_error=report.output_error,
        attempt=report.attempt,
    )
    return json_response({"task_id": str(task.id), "state": str(task.state)})


def _batch_item(index: int, item: Any) -> RunnerReport:
    """Item `index` of a batch of reports: the single report's fields and its
    `task_id`; a ValidationError names the item."""
    try:
        if not isinstance(item, dict):
            raise ValidationError("a report is a JSON object")
        unknown = sorted(set(item) - BATCH_REPORT_FIELDS)
        if unknown:
            raise ValidationError(
                f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(BATCH_REPORT_FIELDS))})"
            )
        if "task_id" not in item:
            raise ValidationError("field 'task_id' is required")
        report = _report(item, parse_id(item["task_id"]))
        if report.state not in RUNNER_REPORTABLE:
            raise ValidationError(f"runners cannot report state {report.state}")
        return report
    except ValidationError as exc:
        raise ValidationError(f"reports[{index}]: {exc.message}") from None


async def runner_reports(request: web.Request) -> web.Response:
    """Every state change a runner has ready, in one request (`POST /api/runner/reports`).

    All or nothing for what is malformed: one bad item is a 400 naming its
    index, and nothing is applied. Otherwise the items are applied in order
    (`Reports.apply_reports`) and each gets its outcome, in order: the state
    stored, or the refusal the single route would answer (404, 409)."""
    data = await read_json_object(request, BATCH_FIELDS)
    hostname = validate_node_name(require_type(data, "hostname", str))
    items = require_type(data, "reports", list)
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise ValidationError(f"'reports' must hold 1 to {MAX_BATCH_ITEMS} reports, not {len(items)}")
    reports = [_batch_item(index, item) for index, item in enumerate(items)]
    request.app[LIVENESS].check_node_key(hostname, _node_key(request))
    outcomes = await request.app[REPORTS].apply_reports(hostname, reports)
    return json_response(
        {"results": [_outcome(report, outcome) for report, outcome in zip(reports, outcomes, strict=True)]}
    )


def _outcome(report: RunnerReport, outcome: Task | HakuRiverError) -> dict[str, Any]:
    if isinstance(outcome, HakuRiverError):
        return {"task_id": str(report.task_id), "status": outcome.status, **error_body(outcome.code, outcome.message)}
    return {"task_id": str(outcome.id), "status": 200, "state": str(outcome.state)}
