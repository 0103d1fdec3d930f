"""Accounting: what final tasks used, in core-hours and GPU-hours; and the
fair share's decayed recent usage that orders the queue."""

from __future__ import annotations

import time

from aiohttp import web

from ...errors import Forbidden, ValidationError
from ...parsing import parse_since
from ...webapi import json_response
from ..accounts import principal_of, validate_user_name
from ..db import USAGE_GROUPS
from ..keys import CLUSTER, DB


async def usage(request: web.Request) -> web.Response:
    """`GET /api/usage?since=&by=user|node&user=`: sums over final tasks
    (`Database.usage`). An admin sees everyone's; any other user sees only
    their own tasks (by user: their one row; by node: where their tasks ran)
    and is refused (403) when `user` names someone else."""
    by = request.query.get("by") or "user"
    if by not in USAGE_GROUPS:
        raise ValidationError(f"query parameter 'by' must be one of {', '.join(USAGE_GROUPS)}, not {by!r}")
    raw_since = request.query.get("since") or None
    since = None if raw_since is None else parse_since(raw_since, time.time())
    user = request.query.get("user") or None
    if user is not None:
        validate_user_name(user)
    principal = principal_of(request)
    if not principal.is_admin:
        if user is not None and user != principal.name:
            raise Forbidden(f"you may see only your own usage, not {user}'s (ask an admin)")
        user = principal.name
    rows = await request.app[DB].usage(by=by, since=since, owner=user)
    total = {
        "tasks": sum(r.tasks for r in rows),
        "core_hours": round(sum(r.core_hours for r in rows), 6),
        "gpu_hours": round(sum(r.gpu_hours for r in rows), 6),
        "hours": round(sum(r.hours for r in rows), 6),
    }
    return json_response({"by": by, "since": since, "user": user, "rows": [r.to_json() for r in rows], "total": total})


async def fairshare(request: web.Request) -> web.Response:
    """`GET /api/fairshare`: each user's decayed recent usage (core-hour
    equivalents: cores + gpu_weight x GPUs, halved every half-life), lightest
    first, as the queue orders equal priorities. An admin sees every user;
    any other user only their own row."""
    cluster = request.app[CLUSTER]
    fs = cluster.fairshare
    usage = fs.snapshot(cluster.clock())
    principal = principal_of(request)
    if not principal.is_admin:
        usage = {principal.name: usage.get(principal.name, 0.0)} if fs.enabled else {}
    rows = [
        {"name": name, "usage_core_hours": round(value / 3600, 6)}
        for name, value in sorted(usage.items(), key=lambda kv: (kv[1], kv[0] or ""))
    ]
    return json_response({"enabled": fs.enabled, "half_life": fs.half_life, "gpu_weight": fs.gpu_weight, "users": rows})
