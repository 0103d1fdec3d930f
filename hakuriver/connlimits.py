"""Connection limits: what a service's HTTP server allows each client.

Anyone who can reach a service's port can open connections without a token,
so the server bounds what they cost (issue 15, audit M1):

- **Time to send a request.** `keepalive_timeout`: a connection that is idle
  (nothing sent yet, half a request's headers, or between two requests of a
  keep-alive connection) is closed after that many seconds. aiohttp starts
  that clock when the connection opens and again after each answer, so it
  also bounds the time a client has to send a request's headers: a
  slow-loris client trickling header bytes is closed like an idle one. With
  TLS the handshake is bounded by the same time.
- **Time to send a body.** `body_deadline_middleware`: an ordinary request's
  body (at most `webapi.MAX_BODY_BYTES`) must arrive within
  `request_body_timeout` seconds, or the answer is 408 and the connection
  closes. Routes that stream their body (`streams_body`: an environment
  upload) read it themselves, and bound the silence between two parts with
  the same timeout.
- **How many connections.** `ConnectionLimiter`: at most
  `max_connections_per_address` from one client address and
  `max_connections` in all. A connection beyond them is closed as soon as it
  is accepted (no HTTP answer, no traceback); the refusals are logged, and
  the service's log collapses repeats (`logrepeats`).

The Host must never refuse its own Runners (their heartbeats keep their
nodes online). Runners are not known by address in the config (a node's
address may be a name, or NAT-ed), so an address is **trusted** once a
request from it authenticated with the runner secret (`trust`); a trusted
address is exempt from the per-address limit, and the last
`RUNNER_RESERVE` share of `max_connections` is kept for trusted addresses.
A flood from elsewhere therefore cannot lock a Runner out, while a task on
a Runner's node (which shares its address) can still not take more than
`max_connections` in all. A Runner connects before it was ever trusted
(its first registration); that connection is counted like anyone's, and the
per-address default (256) is far above what one node opens.

The limits sit in a small protocol wrapper around aiohttp's protocol factory
(`GuardedSite`), because aiohttp offers no per-address count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .errors import HakuRiverError

log = logging.getLogger(__name__)

RUNNER_RESERVE = 1 / 16
"""Share of `max_connections` only trusted (Runner) addresses may use."""
TRUST_SECONDS = 3600.0
"""An address stays trusted this long after its last runner-authenticated request."""
FD_RESERVE = 128
"""Descriptors kept free for everything but client connections (database, logs, runners)."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The server's limits (from `[network]`; see the config reference)."""

    keepalive_timeout: float = 20.0
    request_body_timeout: float = 60.0
    max_connections: int = 4096
    max_connections_per_address: int = 256

    @classmethod
    def from_config(cls, config: Any) -> ConnectionLimits:
        net = config.network
        return cls(
            keepalive_timeout=net.keepalive_timeout,
            request_body_timeout=net.request_body_timeout,
            max_connections=net.max_connections,
            max_connections_per_address=net.max_connections_per_address,
        )


class ConnectionLimiter:
    """Counts open connections by client address and decides who may open one.

    Single-threaded: used from the event loop only.
    """

    def __init__(self, limits: ConnectionLimits, *, clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.total = 0
        self.refused = 0
        self.by_address: Counter[str] = Counter()
        self._trusted: dict[str, float] = {}
        self._clock = clock

    def trust(self, address: str | None) -> None:
        """`address` just authenticated as a Runner: exempt it for `TRUST_SECONDS`."""
        if address:
            self._trusted[address] = self._clock() + TRUST_SECONDS

    def is_trusted(self, address: str) -> bool:
        until = self._trusted.get(address)
        if until is None:
            return False
        if until < self._clock():
            del self._trusted[address]
            return False
        return True

    def admit(self, address: str) -> bool:
        """Count a new connection from `address`, or refuse it (False)."""
        limits = self.limits
        trusted = self.is_trusted(address)
        reserve = max(1, int(limits.max_connections * RUNNER_RESERVE))
        ceiling = limits.max_connections if trusted else limits.max_connections - reserve
        if self.total >= ceiling:
            why = "the service holds the most connections it allows (network.max_connections)"
        elif not trusted and self.by_address[address] >= limits.max_connections_per_address:
            why = "that address holds the most connections it may (network.max_connections_per_address)"
        else:
            self.total += 1
            self.by_address[address] += 1
            return True
        self.refused += 1
        log.warning("refused a connection from %s: %s", address or "an unknown address", why)
        return False

    def release(self, address: str) -> None:
        self.total -= 1
        left = self.by_address[address] - 1
        if left > 0:
            self.by_address[address] = left
        else:
            del self.by_address[address]


CONNECTION_LIMITER = web.AppKey("connection_limiter", ConnectionLimiter)
"""Set on an app served with limits; its middleware trusts Runners through it."""


class _GuardedProtocol(asyncio.Protocol):
    """One connection: admitted (then everything goes to aiohttp's protocol)
    or aborted at once (a refused connection costs no HTTP work)."""

    def __init__(self, limiter: ConnectionLimiter, factory: Callable[[], asyncio.Protocol]):
        self._limiter = limiter
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else ""
        if not self._limiter.admit(address):
            assert isinstance(transport, asyncio.WriteTransport)
            transport.abort()
            return
        self._address = address
        self._inner = self._factory()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._limiter.release(self._address)
            inner, self._inner = self._inner, None
            inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class GuardedSite(web.BaseSite):
    """A TCP site whose connections pass `limiter` first (else like `web.TCPSite`)."""

    __slots__ = ("_host", "_port", "_limiter", "_handshake_timeout")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        limiter: ConnectionLimiter,
        *,
        ssl_context: Any = None,
        backlog: int = 1024,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._host, self._port, self._limiter = host, port, limiter
        self._handshake_timeout = limiter.limits.keepalive_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        limiter = self._limiter
        extra: dict[str, Any] = {}
        if self._ssl_context is not None:
            extra = {"ssl": self._ssl_context, "ssl_handshake_timeout": self._handshake_timeout}
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _GuardedProtocol(limiter, server),
            self._host,
            self._port,
            backlog=self._backlog,
            **extra,
        )


def streams_body(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Mark a route handler that reads its (large) body itself, as a stream:
    `body_deadline_middleware` leaves its body alone."""
    _STREAMING.add(handler)
    return handler


_STREAMING: set[Any] = set()


class RequestTimeout(HakuRiverError):
    """A client took too long to send a request's body (408); the connection closes."""

    status = 408
    code = "request_timeout"


def body_deadline_middleware(timeout: float) -> Any:
    """Read each request's body (bounded by the app's `client_max_size`) within
    `timeout` seconds before the handler runs; 408 otherwise. Place it after
    authentication, so no body of an unauthenticated request is ever waited for."""

    @web.middleware
    async def body_deadline(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.body_exists and request.match_info.handler not in _STREAMING:
            try:
                # asyncio.timeout, not wait_for: no extra task per request.
                async with asyncio.timeout(timeout):
                    await request.read()
            except TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
        return await handler(request)

    return body_deadline


def trust_runners_middleware(is_runner: Callable[[web.Request], bool]) -> Any:
    """After authentication: a request `is_runner` accepted makes its address
    trusted by the app's `ConnectionLimiter` (if it is served with one)."""

    @web.middleware
    async def trust_runners(request: web.Request, handler: Any) -> web.StreamResponse:
        limiter = request.app.get(CONNECTION_LIMITER)
        if limiter is not None and is_runner(request):
            limiter.trust(request.remote)
        return await handler(request)

    return trust_runners


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards its hard limit (at
    least `wanted` + `FD_RESERVE` if the hard limit allows); the soft limit now.
    systemd's default soft limit (1,024) is far below what a flood needs."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        target = min(target, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return soft if soft != resource.RLIM_INFINITY else wanted + FD_RESERVE


def fit_to_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """`limits` with `max_connections` lowered to what the descriptor limit
    allows (after trying to raise it), so a flood meets our refusal rather than
    EMFILE (whose accept() errors used to fill the log)."""
    soft = raise_fd_limit(limits.max_connections)
    room = soft - FD_RESERVE
    if room >= limits.max_connections:
        return limits
    room = max(room, 16)
    log.warning(
        "network.max_connections lowered from %d to %d: the open-file limit is %d (raise LimitNOFILE)",
        limits.max_connections,
        room,
        soft,
    )
    return ConnectionLimits(
        keepalive_timeout=limits.keepalive_timeout,
        request_body_timeout=limits.request_body_timeout,
        max_connections=room,
        max_connections_per_address=min(limits.max_connections_per_address, room),
    )
