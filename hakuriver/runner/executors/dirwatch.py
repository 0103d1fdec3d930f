"""Wake a waiter when a file lands in a directory (Linux inotify, `inotify_simple`).

The systemd executor learns that a task ended from the status file the
launcher's ExecStopPost hook renames into its state dir. Polling that dir
costs a round of stat() calls per interval and, on average, half an interval
of latency on every task's end; an inotify watch on the dir costs nothing
while nothing happens and wakes the executor as the rename lands.

Contract: `DirWatch.start(path, on_change)` registers the inotify fd with the
running event loop (no thread, no blocking read: the fd is non-blocking and
read only when the loop says it is readable) and calls `on_change()` once per
batch of events. It returns False, leaving nothing behind, where inotify is
not available (not Linux, the per-user watch limit reached, the dir missing):
the caller then keeps polling. `close()` is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class DirWatch:
    def __init__(self) -> None:
        self._inotify: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.path: str | None = None

    @property
    def active(self) -> bool:
        return self._inotify is not None

    def start(self, path: str, on_change: Callable[[], None]) -> bool:
        """Watch `path` for files created, written or renamed into it."""
        if self._inotify is not None:
            return True
        try:
            from inotify_simple import INotify, flags
        except ImportError:  # an install without it still works, by polling
            return False
        try:
            inotify = INotify(nonblocking=True)
        except OSError as exc:
            log.info("no inotify (%s); watching task ends by polling", exc.strerror)
            return False
        try:
            inotify.add_watch(path, flags.MOVED_TO | flags.CLOSE_WRITE)
            loop = asyncio.get_running_loop()
            loop.add_reader(inotify.fileno(), self._readable, inotify, on_change)
        except (OSError, NotImplementedError) as exc:
            inotify.close()
            log.info("cannot watch %s (%s); watching task ends by polling", path, getattr(exc, "strerror", exc))
            return False
        self._inotify, self._loop, self.path = inotify, loop, path
        return True

    @staticmethod
    def _readable(inotify: Any, on_change: Callable[[], None]) -> None:
        try:
            events = inotify.read(timeout=0)
        except OSError:
            events = [None]  # something happened; let the waiter look
        if events:
            on_change()

    def close(self) -> None:
        inotify, self._inotify = self._inotify, None
        if inotify is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(inotify.fileno())
        inotify.close()
        self._loop = None
