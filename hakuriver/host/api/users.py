"""User routes: who am I, and the admin's user management (limits included)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import ValidationError
from ...webapi import json_response, read_json_object, require_type
from ..accounts import Accounts, principal_of, require_admin, validate_user_name
from ..db import UserRecord
from ..keys import ACCOUNTS, CLUSTER
from ..scheduler import UserLimits


def limits_json(limits: UserLimits) -> dict[str, int | None]:
    """Effective limits for people and programs: null means unlimited."""
    return {k: (v or None) for k, v in vars(limits).items()}


def user_json(user: UserRecord, accounts: Accounts) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "unix_user": user.unix_user,
        "created_at": user.created_at,
        "tokens": user.tokens,
        "limits": user.own_limits(),
        "effective_limits": limits_json(accounts.effective_limits(user.name)),
    }


async def whoami(request: web.Request) -> web.Response:
    p = principal_of(request)
    usage = request.app[CLUSTER].ledger.owner_usage(p.name)
    return json_response(
        {
            "name": p.name,
            "role": p.role,
            "unix_user": p.unix_user,
            "effective_limits": limits_json(request.app[ACCOUNTS].effective_limits(p.name)),
            "usage": {"cores": usage.cores, "gpus": usage.gpus, "running": usage.running},
        }
    )


async def list_users(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "list users")
    accounts = request.app[ACCOUNTS]
    return json_response({"users": [user_json(u, accounts) for u in accounts.list_users()]})


async def add_user(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "add users")
    data = await read_json_object(request, {"name", "admin", "unix_user", "limits"})
    name = validate_user_name(require_type(data, "name", str))
    admin = require_type(data, "admin", bool, required=False, default=False)
    unix_user = require_type(data, "unix_user", str, required=False)
    if unix_user == "":
        raise ValidationError("'unix_user' must name an account, or be left out")
    limits = require_type(data, "limits", dict, required=False, default={})
    accounts = request.app[ACCOUNTS]
    user, token = await accounts.add_user(name, admin=admin, unix_user=unix_user, limits=limits)
    return json_response({"user": user_json(user, accounts), "token": token}, status=201)


async def update_user(request: web.Request) -> web.Response:
    """PATCH: change some of a user's own limits; null clears one to the default."""
    require_admin(principal_of(request), "change users' limits")
    name = validate_user_name(request.match_info["name"])
    data = await read_json_object(request, {"limits"})
    limits = require_type(data, "limits", dict)
    accounts = request.app[ACCOUNTS]
    user = await accounts.set_limits(name, limits)
    # A raised limit may let waiting tasks start now.
    request.app[CLUSTER].kick()
    return json_response({"user": user_json(user, accounts)})


async def remove_user(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "remove users")
    name = validate_user_name(request.match_info["name"])
    await request.app[ACCOUNTS].remove_user(name)
    return json_response({"removed": name})


async def issue_token(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "issue tokens")
    name = validate_user_name(request.match_info["name"])
    data = await read_json_object(request, {"revoke_all"}, optional=True)
    revoke = require_type(data, "revoke_all", bool, required=False, default=False)
    token = await request.app[ACCOUNTS].issue_token(name, revoke_others=revoke)
    return json_response({"user": name, "token": token, "revoked_others": revoke}, status=201)
