"""A whole piece of database work, run in aiosqlite's thread in one call.

aiosqlite hands each statement to its connection's thread on its own. A
transaction awaited statement by statement can be cut by a cancellation
between two of them (a service stopping, a request dropped): the thread goes
on with what it was given, so a `COMMIT` may land after the caller gave up,
or a `BEGIN` may stay open under the next caller's statements, and a
`ROLLBACK` sent on a cancellation then fails with "no transaction is active",
which replaces the cancellation itself (seen: a Runner's heartbeat loop that
swallowed its own stop and never ended).

`in_db_thread` runs one function on the `sqlite3` connection in the
database thread, so a transaction is never split, and waits for it even when
its caller is cancelled: what it did is done either way, so its caller learns
the outcome first and the cancellation goes on afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import aiosqlite

T = TypeVar("T")


async def in_db_thread(
    conn: aiosqlite.Connection, fn: Callable[..., T], *args: Any, then: Callable[[T], object] | None = None
) -> T:
    """`fn(sqlite3_connection, *args)` in `conn`'s thread; its result, or what it raised.

    Cancelled meanwhile, it still waits for `fn` to end, then raises
    `CancelledError`. `then(result)` runs on the event loop once `fn` has
    returned, cancelled or not: the caller's upkeep of what `fn` wrote (an
    in-memory copy of a table) goes there, not after the await.
    """
    # aiosqlite runs every call in its one thread through `_execute`; its
    # public methods are single statements, and a transaction needs several.
    call = asyncio.ensure_future(conn._execute(fn, conn._conn, *args))
    try:
        result = await asyncio.shield(call)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await call
        if then is not None and call.done() and not call.cancelled() and call.exception() is None:
            then(call.result())
        raise
    if then is not None:
        then(result)
    return result
