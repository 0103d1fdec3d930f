"""The Runner application factory.

`cleanup_ctx` order: probe the node → open the state store → executors →
environment sync (tarballs → local images, before each Docker task) →
supervisor (re-adopts persisted tasks) → Host link (registration,
heartbeats, running reports and result delivery: every call to the Host).
The supervisor posts what happened (`Notices`) and the link reads it, so
neither holds the other. Shutdown runs in reverse and never stops a task:
only the runner's own coroutines and connections end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from ..config import Config
from ..connlimits import body_deadline_middleware
from ..errors import ConfigError, Unauthorized
from ..models import NodeResources
from ..webapi import MAX_BODY_BYTES, error_middleware, make_auth_middleware
from . import probe
from .api import ROUTES
from .capabilities import CapabilityWatch
from .environments import EnvironmentSync
from .executors import executor_class
from .executors.base import Executor
from .gpu import GpuProbe
from .hostlink import HostLink
from .keys import (
    CAPABILITIES,
    CONFIG,
    ENVIRONMENTS,
    EXECUTORS,
    GPU_PROBE,
    HOSTLINK,
    ORDER_TOKEN_KEY,
    RESOURCES,
    STATE,
    SUPERVISOR,
)
from .state import ORDER_TOKEN, RunnerState
from .supervisor import Notices, Supervisor

log = logging.getLogger(__name__)


def check_runner_config(config: Config) -> None:
    config.require("paths.shared_dir", "paths.local_temp_dir")
    if not config.auth.effective_runner_token():
        raise ConfigError(f"auth.runner_token must be set in {config.source or 'the config'} (the Host's runner_token)")
    for key in ("shared_dir", "local_temp_dir"):
        path = getattr(config.paths, key)
        if not Path(path).is_dir():
            raise ConfigError(f"paths.{key}: {path} is not a directory")


def state_path(config: Config) -> str:
    """The runner's state file. It holds secrets and every task's request, so
    it lives outside local_temp_dir, which tasks mount read-write."""
    base = Path(config.runner.state_dir or "~/.hakuriver/state").expanduser()
    return str(base / f"runner-{config.runner_name}.db")


def adopt_old_state(config: Config) -> None:
    """Move a state file from where HakuRiver 0.4-dev kept it (inside
    local_temp_dir) to `state_path`, so an upgrade loses no task."""
    old = Path(config.paths.local_temp_dir) / f"hakuriver-runner-{config.runner_name}.db"
    new = Path(state_path(config))
    if not old.is_file() or old.is_symlink() or new.exists():
        return
    new.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm"):
        src = old.with_name(old.name + suffix)
        if src.is_file() and not src.is_symlink():
            shutil.move(str(src), str(new.with_name(new.name + suffix)))
    log.warning("moved the runner state from %s to %s (out of the directory tasks mount)", old, new)


NODE_EXECUTORS = ("docker", "systemd")
"""The backends a runner offers, by their names in the executor registry."""


async def default_executors(config: Config, problems: dict[str, str] | None = None) -> dict[str, Executor]:
    """The backends this node offers: each of NODE_EXECUTORS, from the registry,
    where it can work at all.

    Docker always can: it stays registered even when its engine does not
    answer yet (it connects on first use, so Docker tasks work once the
    engine is up). systemd (`--container NULL`) is registered only where
    systemd is PID 1 and the root-owned task launcher is installed; elsewhere
    the supervisor refuses NULL tasks ("this runner has no systemd executor
    available"). Each registered backend's fingerprint is logged, or why it
    cannot be taken (an engine down, a missing sudoers rule or allow-list
    entry: each task then fails with that reason). `problems` receives why
    each backend left out was (the capabilities the runner reports say so)."""
    executors: dict[str, Executor] = {}
    for name in NODE_EXECUTORS:
        executor = executor_class(name).from_config(config)
        problem = await executor.unavailable()
        if problem:
            log.info("no %s executor on this node: %s", name, problem)
            if problems is not None:
                problems[name] = problem
            await executor.close()
            continue
        executors[name] = executor
        try:
            log.info("%s", (await executor.fingerprint()).summary)
        except Exception as exc:  # noqa: BLE001 - start-up report only
            log.warning("the %s executor does not answer (%s); its tasks fail until it does", name, exc)
    return executors


async def _probe(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    gpu_probe = GpuProbe()
    cores, memory, numa, gpus = await asyncio.gather(
        asyncio.to_thread(probe.detect_cores),
        asyncio.to_thread(probe.detect_memory),
        asyncio.to_thread(probe.read_numa_topology),
        asyncio.to_thread(gpu_probe.list_gpus),
    )
    app[GPU_PROBE] = gpu_probe
    app[RESOURCES] = NodeResources(
        hostname=config.runner_name,
        url=config.runner_url,
        cores=cores,
        memory=memory,
        numa=tuple(numa),
        gpus=tuple(gpus),
    )
    log.info(
        "node %s: %d cores, %d MiB, %d NUMA node(s), %d GPU(s)",
        config.runner_name,
        cores,
        memory >> 20,
        len(numa),
        len(gpus),
    )
    yield
    await asyncio.to_thread(gpu_probe.close)


async def _state(app: web.Application) -> AsyncIterator[None]:
    await asyncio.to_thread(adopt_old_state, app[CONFIG])
    app[STATE] = await RunnerState.open(state_path(app[CONFIG]))
    app[ORDER_TOKEN_KEY] = await app[STATE].secret(ORDER_TOKEN)
    yield
    await app[STATE].close()


def _executors_ctx(injected: dict[str, Executor] | None):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        problems: dict[str, str] = {}
        executors = injected if injected is not None else await default_executors(app[CONFIG], problems)
        app[EXECUTORS] = executors
        # Probed before the Host link starts, so registration already says.
        watch = CapabilityWatch(executors, problems, interval=capability_refresh_interval(app[CONFIG]))
        app[CAPABILITIES] = watch
        await watch.start()
        yield
        await watch.close()
        for ex in executors.values():
            with contextlib.suppress(Exception):
                await ex.close()

    return ctx


CAPABILITY_REFRESH_BEATS = 12
"""Heartbeats between two capability probes (a minute at the default 5 s)."""


def capability_refresh_interval(config: Config) -> float:
    """How often the runner probes what it can run again: rarely, since a
    probe spawns sudo and pings Docker; never less than 10 s."""
    return max(10.0, CAPABILITY_REFRESH_BEATS * config.timing.heartbeat_interval)


def _environments_ctx(enabled: bool):
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if not enabled:
            yield
            return
        sync = EnvironmentSync(app[CONFIG])
        app[ENVIRONMENTS] = sync
        yield
        await sync.close()

    return ctx


async def _stats(app: web.Application) -> dict[str, Any]:
    stats, gpus = await asyncio.gather(asyncio.to_thread(probe.collect_stats), asyncio.to_thread(app[GPU_PROBE].stats))
    stats["gpus"] = gpus
    return stats


async def _supervisor_and_link(app: web.Application) -> AsyncIterator[None]:
    config, res, state = app[CONFIG], app[RESOURCES], app[STATE]
    notices = Notices()
    sup = Supervisor(
        config,
        state,
        app[EXECUTORS],
        notices,
        res.numa,
        res.gpu_ids(),
        environments=app.get(ENVIRONMENTS),
        cores=res.cores,
        memory=res.memory,
    )
    link = HostLink(
        config,
        res,
        state,
        notices,
        running=sup.running_report,
        holding=sup.holding_ids,
        stats=lambda: _stats(app),
        on_kill=sup.kill,
        capabilities=lambda: app[CAPABILITIES].current,
        attempt_of=sup.attempt_of,
    )
    app[SUPERVISOR], app[HOSTLINK] = sup, link
    await sup.recover()
    await link.start()
    yield
    await link.close()
    await sup.shutdown()


def _host_orders_only(request: web.Request, token: str) -> None:
    """The runner takes orders only from the Host, which presents the order
    token this runner chose and sent it at registration. Neither a user's
    token nor the cluster's runner secret (every runner holds that) works."""
    expected = request.app[ORDER_TOKEN_KEY]
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("invalid bearer token: this runner takes orders from its Host only")


def create_app(
    config: Config, *, executors: dict[str, Executor] | None = None, sync_environments: bool | None = None
) -> web.Application:
    """The Runner app. `executors` replaces the node's real backends (tests, demos),
    keyed like them: "docker" runs environment tasks, "systemd" `--container NULL`
    ones (see `Supervisor`).
    `sync_environments`: load environment tarballs before Docker tasks (default:
    only with the real backends)."""
    check_runner_config(config)
    app = web.Application(
        middlewares=[
            error_middleware,
            make_auth_middleware(_host_orders_only),
            body_deadline_middleware(config.network.request_body_timeout),
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONFIG] = config
    sync = executors is None if sync_environments is None else sync_environments
    app.cleanup_ctx.extend([_probe, _state, _executors_ctx(executors), _environments_ctx(sync), _supervisor_and_link])
    app.add_routes(ROUTES)
    return app
