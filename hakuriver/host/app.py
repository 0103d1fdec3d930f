"""The Host application factory.

Resources start in dependency order through `cleanup_ctx` (database, runner
client, cluster state and its loops, the environment manager) and stop in
reverse, so a failing start never leaves a half-open database behind. The
environment manager's start-up work (the default environment's tarball) runs
in the background: a Docker engine that is down or offline never delays or
fails the Host. Last come the dashboard's change feed (its event streams end
at shutdown, before the rest stops) and its files, read once, in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from ..config import Config
from ..connlimits import body_deadline_middleware, trust_runners_middleware
from ..errors import ConfigError
from ..tls import client_context
from ..webapi import MAX_BODY_BYTES, error_middleware, make_auth_middleware
from .accounts import PRINCIPAL_KEY, Accounts, host_authenticator
from .api import ROUTES
from .changes import ChangeFeed
from .cluster import Cluster
from .control import TaskControl
from .dashboard import ROUTES as DASHBOARD_ROUTES
from .dashboard import dashboard_assets, is_public
from .db import Database
from .dispatch import Dispatcher
from .environments import EnvironmentManager
from .keys import (
    ACCOUNTS,
    CHANGES,
    CLUSTER,
    CONFIG,
    CONTROL,
    DB,
    DISPATCHER,
    ENVIRONMENTS,
    LIVENESS,
    METRICS,
    REPORTS,
    RUNNERS,
    SESSIONS,
)
from .liveness import Liveness
from .metrics import HostMetrics
from .reports import Reports
from .retention import retention_loop
from .runner_client import RunnerClient
from .sessions import Sessions, authenticate_session

log = logging.getLogger(__name__)


MAX_SESSION_HOURS = 24 * 30
"""The longest dashboard login (`dashboard.session_hours`): a month."""


def check_host_config(config: Config) -> None:
    config.require("database.db_file", "paths.shared_dir")
    auth = config.auth
    if not auth.effective_admin_token() or not auth.effective_runner_token():
        raise ConfigError(
            f"auth.admin_token and auth.runner_token must be set in {config.source or 'the config'} "
            "(hakuriver.init config generates both)"
        )
    scrape = config.metrics.scrape_token
    if scrape and (
        len(scrape) < 16
        or "".join(scrape.split()) != scrape
        or scrape in (auth.effective_admin_token(), auth.effective_runner_token())
    ):
        raise ConfigError(
            "metrics.scrape_token must be at least 16 characters without whitespace, and differ from the admin "
            "and runner tokens (it is handed to a Prometheus server)"
        )
    hours = config.dashboard.session_hours
    if not (isinstance(hours, (int, float)) and math.isfinite(hours) and 0 < hours <= MAX_SESSION_HOURS):
        raise ConfigError(f"dashboard.session_hours must be more than 0 and at most {MAX_SESSION_HOURS}, not {hours!r}")
    weight = config.scheduler.fairshare_gpu_weight
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight > 0):
        raise ConfigError(f"scheduler.fairshare_gpu_weight must be a finite number greater than zero, not {weight!r}")
    db_dir = Path(config.database.db_file).expanduser().parent
    if not db_dir.is_dir():
        raise ConfigError(f"database.db_file: directory {db_dir} does not exist")
    if not Path(config.paths.shared_dir).is_dir():
        raise ConfigError(f"paths.shared_dir: {config.paths.shared_dir} is not a directory")


async def _database(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    app[DB] = await Database.open(str(Path(config.database.db_file).expanduser()))
    # Counted once here, then kept in memory (health and metrics never scan the table).
    await app[DB].load_task_counts()
    yield
    await app[DB].close()


async def _accounts(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    accounts = Accounts(config, app[DB])
    await accounts.load()
    app[ACCOUNTS] = accounts
    auth = config.auth
    if not (auth.admin_token and auth.runner_token):
        log.warning(
            "auth.token is both the admin credential and the runner secret: anyone who can submit can also "
            "pose as a runner. Split them: set auth.admin_token and auth.runner_token (hakuriver.init config "
            "makes both), put the runner token in each Runner's config, and drop auth.token"
        )
    yield


async def _runner_client(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    client = RunnerClient(config.auth.effective_runner_token(), ssl_context=client_context(config.tls))
    await client.start()
    app[RUNNERS] = client
    yield
    await client.close()


async def _cluster(app: web.Application) -> AsyncIterator[None]:
    cluster = Cluster(app[CONFIG], app[DB], app[RUNNERS])
    assigning = await cluster.load()
    accounts = app[ACCOUNTS]
    reports = Reports(cluster)
    dispatcher = Dispatcher(cluster, accounts.unix_user_of, accounts.effective_limits, reports)
    liveness = Liveness(cluster)
    app[CLUSTER], app[DISPATCHER], app[LIVENESS] = cluster, dispatcher, liveness
    app[REPORTS], app[CONTROL] = reports, TaskControl(cluster)
    dispatcher.resume(assigning)
    loops = [asyncio.create_task(dispatcher.schedule_loop()), asyncio.create_task(liveness.liveness_loop())]
    yield
    for loop in loops:
        loop.cancel()
    for loop in loops:
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    await cluster.close()


async def _metrics(app: web.Application) -> AsyncIterator[None]:
    """The Prometheus registry (`GET /metrics`) and its observers: each group
    commit, each scheduling pass, each task transition."""
    metrics = HostMetrics(clock=app[CLUSTER].clock)
    app[METRICS] = metrics
    app[DB].commit_observer = metrics.observe_commit
    app[DISPATCHER].on_pass = metrics.observe_pass
    app[CLUSTER].on_transition = metrics.observe_transition
    yield
    app[DB].commit_observer = None


async def _changes(app: web.Application) -> AsyncIterator[None]:
    """What the dashboard's event streams watch: in-memory signatures only."""
    cluster = app[CLUSTER]

    def tasks() -> tuple[int, int, int]:
        return cluster.revision, len(cluster.pending), sum(cluster.pending)

    def nodes() -> tuple[object, ...]:
        beats = tuple((n.hostname, n.online, n.last_heartbeat) for n in cluster.nodes.values())
        return beats, tuple(cluster.drains.items())

    feed = ChangeFeed({"tasks": tasks, "nodes": nodes})
    app[CHANGES] = feed
    yield
    await feed.close()


async def _stop_streams(app: web.Application) -> None:
    """on_shutdown: end the open event streams, so that stopping never waits for them."""
    if CHANGES in app:
        await app[CHANGES].close()


async def _retention(app: web.Application) -> AsyncIterator[None]:
    """The periodic purge of old final tasks (`database.retain_days`; off at 0)."""
    loop = asyncio.create_task(retention_loop(app[CONFIG], app[DB]), name="hakuriver-retention")
    yield
    loop.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await loop


async def _environments(app: web.Application) -> AsyncIterator[None]:
    manager = EnvironmentManager(app[CONFIG])
    await manager.start()
    app[ENVIRONMENTS] = manager
    yield
    await manager.close()


async def _no_sniffing(request: web.Request, response: web.StreamResponse) -> None:
    # A task's log served as octet-stream, or JSON, is never rendered as a page.
    response.headers.setdefault("X-Content-Type-Options", "nosniff")


def create_app(config: Config) -> web.Application:
    check_host_config(config)

    def authenticate(request: web.Request, token: str) -> None:
        # The accounts exist once cleanup_ctx ran; no request arrives before.
        host_authenticator(request.app[ACCOUNTS])(request, token)

    sessions = Sessions(config.dashboard.session_hours * 3600)
    dashboard = config.dashboard.enabled

    def other_credentials(request: web.Request) -> bool:
        # The dashboard's files need none; a browser session is a user's.
        if not dashboard:
            return False
        if is_public(request):
            return True
        return authenticate_session(request, sessions, request.app[ACCOUNTS])

    def is_runner(request: web.Request) -> bool:
        # The dashboard's public files are served with no principal at all.
        principal = request.get(PRINCIPAL_KEY)
        return principal is not None and principal.is_runner

    # After authentication: a Runner's address is exempt from the per-address
    # connection limit, and a body is waited for only from an authenticated client.
    app = web.Application(
        middlewares=[
            error_middleware,
            make_auth_middleware(authenticate, other=other_credentials),
            trust_runners_middleware(is_runner),
            body_deadline_middleware(config.network.request_body_timeout),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    app[SESSIONS] = sessions
    app.on_response_prepare.append(_no_sniffing)
    app.cleanup_ctx.extend([_database, _accounts, _runner_client, _cluster, _metrics, _retention, _environments])
    app.add_routes(ROUTES)
    # The dashboard's parts: live-update streams (the API's /api/events) and the pages.
    app.cleanup_ctx.append(_changes)
    app.on_shutdown.append(_stop_streams)
    if dashboard:
        app.cleanup_ctx.append(dashboard_assets)
        app.add_routes(DASHBOARD_ROUTES)
    return app
