"""Browser sessions of the dashboard: a cookie as another credential.

A lab member logs in to the dashboard with the token the API takes
(`POST /api/session` with `Authorization: Bearer <token>`); the Host answers
with a session cookie and a CSRF token. From then on the browser's calls to
the JSON API carry the cookie instead of the token, and every call that
changes something also carries the CSRF token in the `X-HakuRiver-CSRF`
header. The pages call the same API routes the CLI does, so a session may do
exactly what its user's token may: no authorisation rule is repeated here.

- The cookie is HttpOnly (page scripts never see it), SameSite=Strict (no
  other site's page makes the browser send it), Secure when the Host serves
  TLS, and holds 32 random bytes; the Host keeps only their hash.
- CSRF: every session call, reads included, needs the session's CSRF token
  in the header (a custom header no cross-site form can set, and no
  cross-site script either, since the Host answers no CORS preflight). The
  event stream, which a browser's EventSource opens without custom headers,
  takes it as `?csrf=`. So the cookie alone is worth nothing: browsers send
  cookies to every port of a host name, and a server on another port of the
  Host's machine (a user's notebook, say) that an admin browses to receives
  the cookie, but never the token, which the page keeps in its origin's
  storage (scheme, host and port). Every session call is also refused when the
  browser says another origin made it (`Origin`, `Sec-Fetch-Site`): another
  port of the same machine is the same *site*, so SameSite alone does not
  keep its pages out. A session never opens a websocket (the environment
  shell), which no CORS guards and no CSRF header can reach.
- A session keeps the hash of the token it logged in with and asks
  `Accounts.principal_of_hash` on every request: revoking that token (or
  removing the user) ends the session at once, and a changed role applies at
  once.
- Sessions live in memory only, with an expiry (`dashboard.session_hours`)
  and a cap (`MAX_SESSIONS`; the oldest goes first). A Host restart logs
  everyone out: nothing about a session is ever written to disk.
- The runner routes never take a session.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from ..errors import Forbidden, Unauthorized
from .accounts import PRINCIPAL_KEY, RUNNER_ROUTES, Accounts

SESSION_COOKIE = "hakuriver_session"
CSRF_HEADER = "X-HakuRiver-CSRF"
MAX_SESSIONS = 1000
"""Live sessions the Host keeps at most; a login beyond ends the oldest."""
MAX_SESSIONS_PER_USER = 20
"""Live sessions of one user; a login beyond ends that user's oldest (so no
user can log everyone else out by filling the cap)."""
SESSION_BYTES = 32


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class Session:
    user: str
    """Who logged in (shown; the principal itself is looked up on each request)."""
    token_hash: str
    """The hash of the token this session logged in with."""
    csrf: str
    created: float
    expires: float

    def to_json(self) -> dict[str, object]:
        return {"csrf_token": self.csrf, "created_at": self.created, "expires_at": self.expires}


SESSION_KEY = web.RequestKey("session", Session)
SESSION_ID_KEY = web.RequestKey("session_id", str)


class Sessions:
    """The live sessions, by the hash of their cookie, oldest first."""

    def __init__(self, lifetime: float, *, cap: int = MAX_SESSIONS, clock: Callable[[], float] = time.time):
        self.lifetime = lifetime
        self.cap = cap
        self.clock = clock
        self._by_key: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def create(self, user: str, token_hash: str) -> tuple[str, Session]:
        """A new session: (the cookie's value, the session)."""
        now = self.clock()
        self._purge(now)
        # One user's logins replace that user's oldest, never anyone else's.
        mine = [k for k, s in self._by_key.items() if s.user == user]
        for key in mine[: max(0, len(mine) - MAX_SESSIONS_PER_USER + 1)]:
            del self._by_key[key]
        while len(self._by_key) >= self.cap:
            del self._by_key[next(iter(self._by_key))]
        cookie = secrets.token_urlsafe(SESSION_BYTES)
        session = Session(user, token_hash, secrets.token_urlsafe(SESSION_BYTES), now, now + self.lifetime)
        self._by_key[_key(cookie)] = session
        return cookie, session

    def get(self, cookie: str) -> Session | None:
        """The live session of this cookie, or None (unknown, ended, expired)."""
        key = _key(cookie)
        session = self._by_key.get(key)
        if session is not None and session.expires <= self.clock():
            del self._by_key[key]
            return None
        return session

    def end(self, cookie: str) -> None:
        self._by_key.pop(_key(cookie), None)

    def _purge(self, now: float) -> None:
        # Dicts keep insertion order and every session lives as long, so the
        # expired ones are at the front.
        while self._by_key:
            key = next(iter(self._by_key))
            if self._by_key[key].expires > now:
                break
            del self._by_key[key]


def check_same_origin(request: web.Request) -> None:
    """Refuse a request the browser says another site made."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})", code="csrf")
    origin = request.headers.get("Origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc.lower() != request.host.lower()):
        raise Forbidden("cross-origin request refused: its Origin is not this Host", code="csrf")


EVENTS_PATH = "/api/events"
"""The one route that takes the CSRF token as a query parameter (`csrf`)."""


def check_csrf(request: web.Request, session: Session) -> None:
    presented = request.headers.get(CSRF_HEADER, "")
    if not presented and request.path == EVENTS_PATH:
        presented = request.query.get("csrf", "")
    if not presented or not hmac.compare_digest(
        presented.encode("utf-8", "surrogateescape"), session.csrf.encode("utf-8")
    ):
        raise Forbidden(f"a dashboard session's calls need its CSRF token in the {CSRF_HEADER} header", code="csrf")
    check_same_origin(request)


def authenticate_session(request: web.Request, sessions: Sessions, accounts: Accounts) -> bool:
    """The auth middleware's other credential: a request without an
    Authorization header but with a session cookie is that session's user
    (see the module doc). False (the bearer token is required) for every
    other request."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie or "Authorization" in request.headers or request.path.startswith(RUNNER_ROUTES):
        return False
    session = sessions.get(cookie)
    if session is None:
        raise Unauthorized(
            "your dashboard session has ended (expired, logged out, or the Host restarted): log in again",
            code="session_ended",
        )
    principal = accounts.principal_of_hash(session.token_hash)
    if principal is None:
        sessions.end(cookie)
        raise Unauthorized(
            "the token this dashboard session logged in with was revoked: log in again", code="session_ended"
        )
    # Every session call, reads too: "same-site" is not "same-origin" (another port
    # of this machine is the same site, and SameSite lets its pages send the cookie).
    check_same_origin(request)
    if request.headers.get("Upgrade", "").lower() == "websocket":
        # A browser's WebSocket can send no CSRF header and obeys no CORS: the
        # environment shell is for the CLI and its bearer token only.
        raise Forbidden("a dashboard session opens no websocket; use the CLI with your token", code="csrf")
    check_csrf(request, session)
    request[PRINCIPAL_KEY] = principal
    request[SESSION_KEY] = session
    request[SESSION_ID_KEY] = cookie
    return True
