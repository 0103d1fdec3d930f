"""User routes: who am I, and the admin's user management."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ...errors import ValidationError
from ...webapi import json_response, read_json_object, require_type
from ..accounts import principal_of, require_admin, validate_user_name
from ..db import UserRecord
from ..keys import ACCOUNTS


def user_json(user: UserRecord) -> dict[str, Any]:
    return {
        "name": user.name,
        "role": user.role,
        "unix_user": user.unix_user,
        "created_at": user.created_at,
        "tokens": user.tokens,
    }


async def whoami(request: web.Request) -> web.Response:
    p = principal_of(request)
    return json_response({"name": p.name, "role": p.role, "unix_user": p.unix_user})


async def list_users(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "list users")
    return json_response({"users": [user_json(u) for u in request.app[ACCOUNTS].list_users()]})


async def add_user(request: web.Request) -> web.Response:
    require_admin(principal_of(request), "add users")
    data = await read_json_object(request, {"name", "admin", "unix_user"})
    name = validate_user_name(require_type(data, "name", str))
    admin = require_type(data, "admin", bool, required=False, default=False)
    unix_user = require_type(data, "unix_user", str, required=False)
    if unix_user == "":
        raise ValidationError("'unix_user' must name an account, or be left out")
    user, token = await request.app[ACCOUNTS].add_user(name, admin=admin, unix_user=unix_user)
    return json_response({"user": user_json(user), "token": token}, status=201)


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
