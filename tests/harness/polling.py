"""Deadline-based waiting. Use these instead of sleeps as synchronisation."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class PollTimeout(AssertionError):
    """Raised when a condition did not become true before the deadline."""


def _describe(last_value: Any, last_exc: BaseException | None) -> str:
    if last_exc is not None:
        return f"last error: {type(last_exc).__name__}: {last_exc}"
    return f"last value: {last_value!r}"


def poll(
    fn: Callable[[], T],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Call ``fn`` until it returns something truthy; return that value.

    ``fn`` is always called at least once, and once more at the deadline. Exceptions of the
    types in ``ignore`` count as "not yet" (the last one is reported on timeout); any other
    exception propagates at once. On timeout raises :class:`PollTimeout` naming ``what``,
    the elapsed time, the last value or error and, if given, the text ``on_timeout()`` returns
    (use it to attach diagnostics such as logs).
    """
    start = time.monotonic()
    deadline = start + timeout
    last_value: Any = None
    last_exc: BaseException | None = None
    while True:
        final = time.monotonic() >= deadline
        try:
            last_value = fn()
            last_exc = None
            if last_value:
                return last_value
        except ignore as exc:
            last_exc = exc
        if final:
            break
        remaining = deadline - time.monotonic()
        time.sleep(max(0.0, min(interval, remaining)))
    msg = f"timed out after {time.monotonic() - start:.1f}s (limit {timeout}s) waiting for {what}; " + _describe(
        last_value, last_exc
    )
    if on_timeout is not None:
        try:
            msg += "\n" + on_timeout()
        except Exception as exc:  # diagnostics must not hide the timeout
            msg += f"\n(diagnostics failed: {exc!r})"
    raise PollTimeout(msg) from last_exc


async def apoll(
    fn: Callable[[], T | Awaitable[T]],
    timeout: float,
    interval: float = 0.2,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Async :func:`poll`: ``fn`` may be a plain or an async callable."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    deadline = start + timeout
    last_value: Any = None
    last_exc: BaseException | None = None
    while True:
        final = loop.time() >= deadline
        try:
            value = fn()
            if inspect.isawaitable(value):
                value = await value
            last_value = value
            last_exc = None
            if last_value:
                return last_value
        except ignore as exc:
            last_exc = exc
        if final:
            break
        await asyncio.sleep(max(0.0, min(interval, deadline - loop.time())))
    msg = f"timed out after {loop.time() - start:.1f}s (limit {timeout}s) waiting for {what}; " + _describe(
        last_value, last_exc
    )
    if on_timeout is not None:
        try:
            msg += "\n" + on_timeout()
        except Exception as exc:
            msg += f"\n(diagnostics failed: {exc!r})"
    raise PollTimeout(msg) from last_exc
