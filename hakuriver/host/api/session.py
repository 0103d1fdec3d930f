"""The dashboard's login: `POST /api/session` (with a user's bearer token)
makes a browser session, `GET` shows it, `DELETE` ends it (see `sessions.py`)."""

from __future__ import annotations

from aiohttp import web

from ...errors import NotFound
from ...webapi import bearer_token, json_response, read_json_object
from ..accounts import Principal, principal_of, token_hash
from ..keys import CONFIG, SESSIONS
from ..sessions import SESSION_COOKIE, SESSION_ID_KEY, SESSION_KEY, Session, check_same_origin


def _view(principal: Principal, session: Session) -> dict[str, object]:
    return {"user": principal.name, "role": principal.role, **session.to_json()}


async def login(request: web.Request) -> web.Response:
    """Only a bearer token logs in (the auth middleware checked it): a
    cross-site form can send no Authorization header, so no other site can
    log a browser in as someone else."""
    await read_json_object(request, set(), optional=True)
    if not request.app[CONFIG].dashboard.enabled:
        raise NotFound("the dashboard is off on this Host (dashboard.enabled): there is nothing to log in to")
    check_same_origin(request)
    principal = principal_of(request)
    sessions = request.app[SESSIONS]
    cookie, session = sessions.create(principal.name, token_hash(bearer_token(request)))
    response = json_response(_view(principal, session), status=201)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(sessions.lifetime),
        path="/",
        httponly=True,
        secure=request.app[CONFIG].tls.enabled,
        samesite="Strict",
    )
    response.headers["Cache-Control"] = "no-store"
    return response


async def show(request: web.Request) -> web.Response:
    session = request.get(SESSION_KEY)
    if session is None:
        raise NotFound("this request carries no dashboard session (it was authenticated with a bearer token)")
    response = json_response(_view(principal_of(request), session))
    response.headers["Cache-Control"] = "no-store"
    return response


async def logout(request: web.Request) -> web.Response:
    """End this request's session (the auth middleware checked its CSRF token)."""
    cookie = request.get(SESSION_ID_KEY)
    if cookie is not None:
        request.app[SESSIONS].end(cookie)
    response = json_response({"ended": cookie is not None})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response
