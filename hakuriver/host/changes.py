"""What changed, for the dashboard's live updates (`GET /api/events`).

One loop looks, once per `period`, at cheap signatures of what the Host holds
in memory (its task revision and pending queue, its nodes' heartbeats and
states); when one changed, its topic's revision goes up and every listener
wakes. The pages then fetch what they show through the JSON API, as the user
they are logged in as. So an open page is woken at most once per period,
however busy the cluster, and the loop itself never touches the database,
never takes the cluster lock, and runs only while someone listens: an open
dashboard costs a heartbeat nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from typing import Any

from ..errors import HakuRiverError

log = logging.getLogger(__name__)

CHANGE_PERIOD = 1.0
"""Seconds between two looks (and so between two updates of one page), at least."""
MAX_LISTENERS = 256
"""Event streams open at once; one more is refused (503)."""
MAX_LISTENERS_PER_USER = 32
"""Event streams one user may hold at once (pages in several tabs and browsers)."""

Signature = Callable[[], Hashable]


class TooManyListeners(HakuRiverError):
    status = 503
    code = "too_many_streams"


class Listener:
    def __init__(self, feed: ChangeFeed):
        self._feed = feed
        self.seen = dict(feed.revisions)

    async def next(self, timeout: float) -> dict[str, int] | None:
        """The revisions once one differs from what this listener saw last
        (None when `timeout` passed first, or the feed closed)."""
        feed = self._feed
        if feed.revisions == self.seen and not feed.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(feed._wake.wait(), timeout)
        if feed.revisions == self.seen or feed.closed:
            return None
        self.seen = dict(feed.revisions)
        return self.seen


class ChangeFeed:
    """Topics (name -> signature) and their revisions (see the module doc)."""

    def __init__(self, topics: Mapping[str, Signature], *, period: float = CHANGE_PERIOD, cap: int = MAX_LISTENERS):
        self.topics = dict(topics)
        self.period = period
        self.cap = cap
        self.revisions = dict.fromkeys(self.topics, 0)
        self.closed = False
        self._signatures: dict[str, Hashable] = {}
        self._listeners = 0
        self._by_user: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @property
    def listeners(self) -> int:
        return self._listeners

    def look(self) -> bool:
        """Compare each topic's signature with the last; True when one changed."""
        changed = False
        for name, signature in self.topics.items():
            try:
                now: Hashable = signature()
            except Exception:  # a signature must never end the loop
                log.exception("change signature %s failed", name)
                continue
            if self._signatures.get(name, now) != now:
                self.revisions[name] += 1
                changed = True
            self._signatures[name] = now
        if changed:
            self._wake.set()
            self._wake = asyncio.Event()
        return changed

    async def _run(self) -> None:
        while self._listeners and not self.closed:
            self.look()
            await asyncio.sleep(self.period)
        self._loop = None

    @contextlib.asynccontextmanager
    async def listen(self, who: str = "") -> AsyncIterator[Listener]:
        """A stream's listener; `who` (its user) may hold at most
        MAX_LISTENERS_PER_USER of them, so one user cannot take them all."""
        if self.closed:
            raise TooManyListeners("the Host is stopping")
        if self._listeners >= self.cap:
            raise TooManyListeners(f"too many live dashboards ({self.cap} event streams are open); try again later")
        if self._by_user.get(who, 0) >= MAX_LISTENERS_PER_USER:
            raise TooManyListeners(
                f"you have {MAX_LISTENERS_PER_USER} live dashboard pages open already; close one and try again"
            )
        if self._loop is None:
            self.look()  # the baseline, before the first listener's first wait
        self._listeners += 1
        self._by_user[who] = self._by_user.get(who, 0) + 1
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="hakuriver-changes")
        try:
            yield Listener(self)
        finally:
            self._listeners -= 1
            self._by_user[who] -= 1
            if not self._by_user[who]:
                del self._by_user[who]

    def snapshot(self) -> dict[str, Any]:
        return dict(self.revisions)

    async def close(self) -> None:
        """Wake and end every listener (the Host is stopping)."""
        self.closed = True
        self._wake.set()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
