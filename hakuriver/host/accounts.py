"""Who is calling: users, their tokens, runners, and what each may do.

Principals
----------
- **Users** have a name, a role (`admin` or `user`) and an optional Unix
  account (`unix_user`, resolved to uid/gid on each node). They present API
  tokens: random (`secrets`), shown once, stored only as a sha256 hash,
  revocable. A token is high-entropy, so a plain hash is enough: no one
  guesses a preimage, and the lookup is a dict probe that reveals nothing
  about how close a wrong token was.
- **The first admin** is the config's `auth.admin_token` (user
  `auth.admin_user`), so a fresh Host can be used and can create users at
  once. It is checked with `hmac.compare_digest`, never stored.
- **Runners** present the cluster secret `auth.runner_token`, accepted on
  `/api/runner/*` only; user tokens are never accepted there, and the runner
  secret is never accepted anywhere else. Which node a runner is, is then
  proved by its node key (see `liveness`).
- **A metrics scraper** (Prometheus) presents `metrics.scrape_token`,
  accepted on `/metrics` only; an admin's token is accepted there too.

The Host is the only writer of users and tokens, so `Accounts` keeps every
token hash in memory: authenticating a request costs no database read.

Limits
------
Each user may have their own per-user limits (`max_cores`, `max_gpus`,
`max_running`); a limit they do not set is the config's `[limits]` default.
0 means unlimited, in the config and per user (an admin can exempt one user
from a default). The config's admin (`auth.admin_user`, no database row) and
tasks without an owner are never limited. `effective_limits` is what the
scheduler applies.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from aiohttp import web

from ..config import Config
from ..errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationError
from ..webapi import Authenticate
from .db import Database, UserRecord
from .scheduler import LIMIT_NAMES, UNLIMITED, UserLimits

log = logging.getLogger(__name__)

ADMIN = "admin"
USER = "user"
RUNNER = "runner"
SCRAPER = "scraper"
ROLES = (ADMIN, USER)

TOKEN_PREFIX = "hkr_"  # noqa: S105 - a prefix, not a secret
"""User tokens start with this, so a leaked one is recognisable in a scan."""
TOKEN_BYTES = 32

_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,63}\Z")
_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?\Z")


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    name: str
    role: str
    """`admin`, `user`, or `runner` (a node's service, not a person)."""
    unix_user: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_runner(self) -> bool:
        return self.role == RUNNER

    @property
    def is_scraper(self) -> bool:
        return self.role == SCRAPER


RUNNER_PRINCIPAL = Principal(name="runner", role=RUNNER)
RUNNER_ROUTES = "/api/runner/"
SCRAPER_PRINCIPAL = Principal(name="metrics", role=SCRAPER)
METRICS_ROUTE = "/metrics"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def validate_user_name(name: object) -> str:
    if not isinstance(name, str) or not _USER_NAME.match(name):
        raise ValidationError(
            f"invalid user name {name!r}: 1-64 characters of a-z, 0-9, '_', '.', '-', starting with a letter or '_'"
        )
    return name


def validate_unix_user(name: object) -> str:
    if not isinstance(name, str) or not _UNIX_NAME.match(name):
        raise ValidationError(f"invalid Unix account name {name!r}")
    return name


class Accounts:
    """Users and tokens: the database is the truth, memory the index."""

    def __init__(self, config: Config, db: Database, *, clock: Callable[[], float] = time.time):
        self.db = db
        self.clock = clock
        auth = config.auth
        self._admin_token = auth.effective_admin_token().encode("utf-8")
        self._runner_token = auth.effective_runner_token().encode("utf-8")
        self._scrape_token = config.metrics.scrape_token.encode("utf-8")
        self._admin_hash = token_hash(auth.effective_admin_token()) if self._admin_token else ""
        self._admin_name = validate_user_name(auth.admin_user)
        lim = config.limits
        self._default_limits = UserLimits(lim.default_max_cores, lim.default_max_gpus, lim.default_max_running)
        self._by_hash: dict[str, str] = {}
        self._users: dict[str, UserRecord] = {}

    async def load(self) -> None:
        self._users = {u.name: u for u in await self.db.list_users()}
        self._by_hash = dict(await self.db.token_owners())

    # ------------------------------------------------------------- identify
    def authenticate(self, token: str) -> Principal | None:
        """The principal a bearer token stands for, or None."""
        raw = token.encode("utf-8", "surrogateescape")
        if self._runner_token and hmac.compare_digest(raw, self._runner_token):
            # With one 0.4-dev token for everything, the runner secret is also
            # the admin's: which one applies is decided by the route.
            if self._runner_token == self._admin_token:
                return Principal(self._admin_name, ADMIN)
            return RUNNER_PRINCIPAL
        if self._admin_token and hmac.compare_digest(raw, self._admin_token):
            return Principal(self._admin_name, ADMIN)
        if self._scrape_token and hmac.compare_digest(raw, self._scrape_token):
            return SCRAPER_PRINCIPAL
        name = self._by_hash.get(token_hash(token))
        user = self._users.get(name) if name else None
        if user is None:
            return None
        return Principal(user.name, user.role, user.unix_user)

    def principal_of_hash(self, hashed: str) -> Principal | None:
        """The user whose token has hash `hashed` (`token_hash`), as that user
        is now; None once the token is revoked or its user removed. A browser
        session keeps only its login token's hash and asks this on every
        request, so revoking the token ends the session. The runner secret
        never stands for anyone here."""
        if self._admin_hash and hmac.compare_digest(hashed, self._admin_hash):
            return Principal(self._admin_name, ADMIN)
        name = self._by_hash.get(hashed)
        user = self._users.get(name) if name else None
        return None if user is None else Principal(user.name, user.role, user.unix_user)

    def is_runner_token(self, token: str) -> bool:
        return bool(self._runner_token) and hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), self._runner_token
        )

    def unix_user_of(self, name: str | None) -> str | None:
        """The Unix account of user `name` now (None: none, or no such user)."""
        if name is None:
            return None
        user = self._users.get(name)
        return user.unix_user if user else None

    def effective_limits(self, name: str | None) -> UserLimits:
        """The limits that apply to `name`'s tasks now: their own setting where
        they have one, else the config's default (see the module doc)."""
        if name is None or name == self._admin_name:
            return UNLIMITED
        user = self._users.get(name)
        own = user.own_limits() if user is not None else {}
        d = self._default_limits
        return UserLimits(
            **{k: (v if (v := own.get(k)) is not None else getattr(d, k)) for k in LIMIT_NAMES},
        )

    # --------------------------------------------------------------- manage
    def list_users(self) -> list[UserRecord]:
        return sorted(self._users.values(), key=lambda u: u.name)

    async def add_user(
        self,
        name: str,
        *,
        admin: bool,
        unix_user: str | None,
        limits: Mapping[str, int | None] | None = None,
    ) -> tuple[UserRecord, str]:
        validate_user_name(name)
        if name == self._admin_name:
            raise Conflict(f"{name!r} is the config's admin (auth.admin_user); choose another name")
        if unix_user is not None:
            validate_unix_user(unix_user)
        own = validate_limits(limits or {})
        token = new_token()
        record = await self.db.add_user(
            name, ADMIN if admin else USER, unix_user, token_hash(token), self.clock(), limits=own
        )
        if record is None:
            raise Conflict(f"user {name!r} already exists")
        self._users[name] = record
        self._by_hash[token_hash(token)] = name
        log.info("user %s added (%s%s)", name, record.role, f", unix user {unix_user}" if unix_user else "")
        return record, token

    async def remove_user(self, name: str) -> None:
        if not await self.db.remove_user(validate_user_name(name)):
            raise NotFound(f"no user {name!r}")
        self._users.pop(name, None)
        self._by_hash = {h: u for h, u in self._by_hash.items() if u != name}
        log.info("user %s removed; their tokens are revoked", name)

    async def issue_token(self, name: str, *, revoke_others: bool) -> str:
        validate_user_name(name)
        token = new_token()
        if not await self.db.add_token(name, token_hash(token), self.clock(), revoke_others=revoke_others):
            raise NotFound(f"no user {name!r}")
        if revoke_others:
            self._by_hash = {h: u for h, u in self._by_hash.items() if u != name}
        self._by_hash[token_hash(token)] = name
        count = sum(1 for u in self._by_hash.values() if u == name)
        self._users[name] = replace(self._users[name], tokens=count)
        log.info("new token for user %s%s", name, "; the others are revoked" if revoke_others else "")
        return token

    async def set_limits(self, name: str, changes: Mapping[str, int | None]) -> UserRecord:
        """Change some of a user's own limits (`LIMIT_NAMES`); None clears one
        to the config's default. The others keep their setting."""
        validate_user_name(name)
        changes = validate_limits(changes)
        user = self._users.get(name)
        if user is None:
            if name == self._admin_name:
                raise Conflict(f"{name!r} is the config's admin (auth.admin_user), who is never limited")
            raise NotFound(f"no user {name!r}")
        own = {**user.own_limits(), **changes}
        updated = replace(user, max_cores=own["max_cores"], max_gpus=own["max_gpus"], max_running=own["max_running"])
        if not await self.db.set_user_limits(name, updated.own_limits()):
            raise NotFound(f"no user {name!r}")
        self._users[name] = updated
        log.info("limits of user %s: %s", name, ", ".join(f"{k}={v}" for k, v in updated.own_limits().items()))
        return updated


def validate_limits(limits: Mapping[str, object]) -> dict[str, int | None]:
    """`{"max_cores": 8, "max_gpus": None}`: known names only, each a
    non-negative integer (0: unlimited) or None (the config's default)."""
    out: dict[str, int | None] = {}
    for key, value in limits.items():
        if key not in LIMIT_NAMES:
            raise ValidationError(f"unknown limit {key!r}; limits are: {', '.join(LIMIT_NAMES)}")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValidationError(
                f"limit {key!r} must be a whole number >= 0 (0: unlimited) or null (the default), not {value!r}"
            )
        if value is not None and value > MAX_LIMIT:
            raise ValidationError(f"limit {key!r} must be at most {MAX_LIMIT}")
        out[key] = value
    return out


MAX_LIMIT = 1 << 31
"""Keeps a limit in SQLite's and every client's integer range."""


PRINCIPAL_KEY = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """Who made `request` (the auth middleware recorded it)."""
    return request[PRINCIPAL_KEY]


def host_authenticator(accounts: Accounts) -> Authenticate:
    """The Host's rule: user tokens everywhere but `/api/runner/`, the
    runner secret there only, and the scrape token on `/metrics` only."""

    def authenticate(request: web.Request, token: str) -> None:
        principal = accounts.authenticate(token)
        if principal is None:
            raise Unauthorized("invalid bearer token")
        if request.path.startswith(RUNNER_ROUTES):
            if not accounts.is_runner_token(token):
                raise Forbidden("the /api/runner/ routes are for Runners: they present auth.runner_token")
            principal = RUNNER_PRINCIPAL
        elif principal.is_runner:
            raise Forbidden("the runner secret is accepted on /api/runner/ only; use a user token")
        elif principal.is_scraper and request.path != METRICS_ROUTE:
            raise Forbidden("the metrics scrape token is accepted on /metrics only; use a user token")
        request[PRINCIPAL_KEY] = principal

    return authenticate


def require_admin(principal: Principal, what: str) -> None:
    if not principal.is_admin:
        raise Forbidden(f"only an admin may {what}")


def require_owner_or_admin(principal: Principal, owner: str | None, what: str) -> None:
    if principal.is_admin or (owner is not None and owner == principal.name):
        return
    whose = f"{owner}'s" if owner else "a pre-users"
    raise Forbidden(f"you may {what} only your own; this is {whose} (ask an admin)")
