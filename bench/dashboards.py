"""Simulated dashboard pages for the benchmark: what open browsers cost a Host.

Each viewer logs in as a browser does (`POST /api/session` with the token; the
cookie from then on), opens the event stream (`GET /api/events`) and, on every
event, fetches what the Cluster and Queue pages fetch: `GET /api/nodes` and
the first page (25) of the pending, running and recent tables. That is the
most an open page asks of the Host (the Host sends at most one event per
second per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

import aiohttp

PAGE_FETCHES = (
    "/api/nodes",
    "/api/tasks?state=pending&limit=25",
    "/api/tasks?state=assigning,running,paused&limit=25",
    "/api/tasks?state=completed,failed,killed,killed_oom,lost,timeout,cancelled&limit=25",
)


class Dashboards:
    """`async with Dashboards(url, token, 5) as d:` keeps 5 pages open meanwhile."""

    def __init__(self, url: str, token: str, viewers: int):
        self.url = url
        self.token = token
        self.viewers = viewers
        self.events = 0
        self.fetches = 0
        self.errors = 0
        self.fetch_seconds: list[float] = []
        self._sessions: list[aiohttp.ClientSession] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Dashboards:
        try:
            for _ in range(self.viewers):
                login = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
                self._sessions.append(login)
                async with login.post(
                    self.url + "/api/session", headers={"Authorization": f"Bearer {self.token}"}
                ) as r:
                    if r.status != 201:
                        raise RuntimeError(f"dashboard login failed: {r.status} {await r.text()}")
                    csrf = (await r.json())["csrf_token"]
                # As the page does: every call with the session's CSRF token.
                session = aiohttp.ClientSession(cookie_jar=login.cookie_jar, headers={"X-HakuRiver-CSRF": csrf})
                self._sessions.append(session)
                self._tasks.append(asyncio.create_task(self._view(session)))
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _view(self, session: aiohttp.ClientSession) -> None:
        while True:
            try:
                async with session.get(self.url + "/api/events", timeout=aiohttp.ClientTimeout(total=None)) as stream:
                    async for line in stream.content:
                        if line.startswith(b"data: "):
                            self.events += 1
                            await self._fetch(session)
            except (aiohttp.ClientError, OSError):
                self.errors += 1
                await asyncio.sleep(1)  # as an EventSource retries

    async def _fetch(self, session: aiohttp.ClientSession) -> None:
        for path in PAGE_FETCHES:
            start = time.perf_counter()
            try:
                async with session.get(self.url + path) as r:
                    await r.read()
                    if r.status != 200:
                        self.errors += 1
            except (aiohttp.ClientError, OSError):
                self.errors += 1
            self.fetches += 1
            self.fetch_seconds.append(time.perf_counter() - start)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for session in self._sessions:
            await session.close()
        self._tasks, self._sessions = [], []
