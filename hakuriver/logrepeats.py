"""Repeated log records collapsed into one line with a count.

A flood (refused connections, a client retrying a bad request a thousand
times, `accept()` failing while descriptors run out) must not write one
line, or one traceback, per event: that fills the disk and buries the one
line that matters. `CollapseRepeats` is the services' root handler; it
passes each record on to the real handlers (stderr, the log file) unless an
identical one passed less than `window` seconds ago. Identical means: the
same logger, level, message template (the `%s` arguments may differ: one
line per peer address would still be a flood) and exception type. Only
warnings and errors are collapsed: an INFO line records an event (a task
started, an environment version loaded), and the tenth such event in a
minute is as much worth its line as the first.

The first record of a kind passes as it is, traceback included. Those that
follow within the window are counted, not written; when the window has
passed (noticed on the next record of any kind, or when logging shuts down
and flushes), one line says `... (repeated N times in the last S s)`,
without a traceback. The next record of that kind then passes again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WINDOW = 60.0
"""Seconds during which repeats of a record are counted instead of written."""

Key = tuple[str, int, str, str]

COLLAPSED_FROM = logging.WARNING
"""The lowest level whose repeats are collapsed; below it every record is written."""


@dataclass
class _Burst:
    record: logging.LogRecord
    started: float
    repeats: int = 0


class CollapseRepeats(logging.Handler):
    """A handler that forwards records to `targets`, collapsing repeats (see the module)."""

    def __init__(
        self,
        targets: Sequence[logging.Handler],
        *,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__()
        self.targets = list(targets)
        self.window = window
        self._clock = clock
        self._bursts: dict[Key, _Burst] = {}

    @staticmethod
    def key(record: logging.LogRecord) -> Key:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        return (record.name, record.levelno, str(record.msg), exc)

    def emit(self, record: logging.LogRecord) -> None:
        now = self._clock()
        self._close_bursts(lambda burst: now - burst.started >= self.window)
        if record.levelno < COLLAPSED_FROM:
            self._forward(record)
            return
        key = self.key(record)
        burst = self._bursts.get(key)
        if burst is not None:
            burst.repeats += 1
            return
        self._bursts[key] = _Burst(record, now)
        self._forward(record)

    def flush(self) -> None:
        """Write the counts of every open burst (at shutdown: none is lost)."""
        self.acquire()
        try:
            self._close_bursts(lambda burst: True)
        finally:
            self.release()
        for target in self.targets:
            try:
                target.flush()
            except (OSError, ValueError):  # a stream closed under us (at exit): nothing more to say
                pass

    def close(self) -> None:
        self.flush()
        for target in self.targets:
            target.close()
        super().close()

    def _close_bursts(self, done: Callable[[_Burst], bool]) -> None:
        for key in [k for k, b in self._bursts.items() if done(b)]:
            burst = self._bursts.pop(key)
            if burst.repeats:
                self._forward(self._summary(burst))

    def _summary(self, burst: _Burst) -> logging.LogRecord:
        first = burst.record
        seconds = max(self._clock() - burst.started, 0.0)
        message = f"{first.getMessage()} (repeated {burst.repeats} times in the last {seconds:.0f} s)"
        return logging.LogRecord(first.name, first.levelno, first.pathname, first.lineno, message, None, None)

    def _forward(self, record: logging.LogRecord) -> None:
        for target in self.targets:
            if record.levelno >= target.level:
                target.handle(record)
