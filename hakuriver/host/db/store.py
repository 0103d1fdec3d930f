"""The connection, its lock, migrations and the group-commit writer that
every query mixin builds on (see the package docstring for the contract)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self

import aiosqlite

from ...dbthread import in_db_thread
from ...models import TaskState
from .errors import DatabaseError, SchemaTooNew, _wrap_error
from .heldrows import HeldRows
from .schema import MIGRATIONS, SCHEMA_VERSION, _split_sql

log = logging.getLogger(__name__)


MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 256
"""Most write operations committed together in one transaction."""


@dataclass(eq=False)
class _WriteOp:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future
    atomic: bool


@dataclass(frozen=True)
class Counted:
    """What a write operation returns when it changes how many tasks are in
    each state: its caller's `value`, and `delta` (state -> change), which the
    writer applies to `Store.task_counts` once the batch has committed (never
    for an operation that failed or a batch that rolled back)."""

    value: Any
    delta: Mapping[TaskState, int]


CommitObserver = Callable[[float, int], None]
"""Told each committed batch: its seconds from BEGIN to COMMIT (fsync
included) and how many operations it held (the Host's metrics)."""


PRIVATE_MODE = 0o600
"""The database holds every task's env (secrets) and every token's hash."""


def _refuse_empty(path: str) -> None:
    """A new cluster's database file does not exist yet; an existing empty one is
    a lost file (a failed copy, a full disk), never an empty cluster to start."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_size == 0:
        try:
            wal = os.stat(path + "-wal").st_size
        except FileNotFoundError:
            wal = 0
        if wal == 0:
            raise DatabaseError(
                f"database {path!r} exists but is empty (0 bytes): it is not a cluster's database. "
                "Restore it from a backup; to start an empty cluster, delete the file"
            )


def _private_files(path: str) -> None:
    """Create the database file 0600 if it is missing, and take group and other
    access away from it and its -wal/-shm (made 0644 by earlier versions).
    SQLite creates -wal and -shm with the database file's mode."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_MODE)
    except OSError as e:
        raise DatabaseError(f"cannot open database {path!r}: {e.strerror}") from e
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        try:
            side = os.open(path + suffix, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # missing (or not ours to fix): SQLite decides
        try:
            if os.fstat(side).st_mode & 0o077:
                os.fchmod(side, PRIVATE_MODE)
        finally:
            os.close(side)


class Store:
    """The connection and its writer. Query mixins subclass it; `Database`
    combines them. Create with `await Database.open(path)`; `await close()` at shutdown."""

    def __init__(self, conn: aiosqlite.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        self._queue: collections.deque[_WriteOp] = collections.deque()
        self._writer: asyncio.Task | None = None
        self._closed = False
        self._task_counts: dict[TaskState, int] | None = None
        self._held = HeldRows()
        """The rows of tasks that hold resources, as the last write left them (`heldrows`)."""
        self.commit_observer: CommitObserver | None = None
        """Called (on the event loop) after each committed write batch."""

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open (creating if needed) and migrate the database at `path`.

        The parent directory must exist: a missing directory is far more often
        a configuration mistake than something to create silently.
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise DatabaseError(
                f"SQLite {sqlite3.sqlite_version} is too old: HakuRiver needs {'.'.join(map(str, MIN_SQLITE))} or newer"
            )
        path = os.fspath(path)
        if not path:
            raise DatabaseError("no database file configured (database.db_file)")
        if path != ":memory:":
            parent = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(parent):
                raise DatabaseError(f"cannot open database {path!r}: directory {parent!r} does not exist")
            await asyncio.to_thread(_refuse_empty, path)
            await asyncio.to_thread(_private_files, path)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open database {path!r}: {e}") from e
        db = cls(conn, path)
        try:
            await db._configure()
            await db._check_integrity()
            await db._migrate()
        except BaseException:
            await conn.close()
            raise
        return db

    async def _configure(self) -> None:
        conn = self._conn
        try:
            await conn.execute_fetchall(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            rows = list(await conn.execute_fetchall("PRAGMA journal_mode=WAL"))
            mode = rows[0][0] if rows else None
            if self.path != ":memory:" and str(mode).lower() != "wal":
                raise DatabaseError(f"cannot open database {self.path!r}: WAL journal mode unavailable (got {mode!r})")
            await conn.execute_fetchall("PRAGMA synchronous=FULL")
            await conn.execute_fetchall("PRAGMA foreign_keys=ON")
        except sqlite3.Error as e:
            if "malformed" in str(e):
                # The schema pages themselves are damaged (the first read of the
                # file reads them): the same advice as a failed integrity check.
                raise DatabaseError(f"database {self.path!r} is damaged ({e}); restore it from a backup") from e
            raise DatabaseError(f"cannot open database {self.path!r}: {e}") from e

    async def _check_integrity(self) -> None:
        """Refuse to serve (and write into) a damaged file: PostgreSQL's rule."""
        try:
            rows = list(await self._conn.execute_fetchall("PRAGMA quick_check(1)"))
        except sqlite3.Error as e:
            raise DatabaseError(f"database {self.path!r} is damaged ({e}); restore it from a backup") from e
        verdict = str(rows[0][0]) if rows else "no answer"
        if verdict != "ok":
            raise DatabaseError(
                f"database {self.path!r} failed its integrity check ({verdict}); "
                "restore it from a backup, or move it aside to start an empty cluster"
            )

    async def _user_version(self) -> int:
        rows = list(await self._conn.execute_fetchall("PRAGMA user_version"))
        return int(rows[0][0])

    async def _migrate(self) -> None:
        conn = self._conn
        try:
            current = await self._user_version()
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"database {self.path!r} has schema version {current}, newer than this HakuRiver "
                    f"understands ({SCHEMA_VERSION}); upgrade HakuRiver or use another database file"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                await conn.execute_fetchall("BEGIN IMMEDIATE")
                try:
                    # Re-read inside the write lock: another process may have
                    # migrated between our first read and BEGIN.
                    seen = await self._user_version()
                    if seen >= version:
                        if seen > SCHEMA_VERSION:
                            raise SchemaTooNew(
                                f"database {self.path!r} was upgraded to schema version {seen} while opening"
                            )
                        await conn.execute_fetchall("COMMIT")
                        continue
                    for statement in _split_sql(MIGRATIONS[version - 1]):
                        await conn.execute_fetchall(statement)
                    await conn.execute_fetchall(f"PRAGMA user_version={version}")
                    await conn.execute_fetchall("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        await conn.execute_fetchall("ROLLBACK")
                    raise
        except sqlite3.Error as e:
            raise DatabaseError(f"cannot open database {self.path!r}: {e}") from e

    async def schema_version(self) -> int:
        async with self._lock:
            return await self._user_version()

    async def close(self) -> None:
        """Commit what is queued, then close. Further calls raise DatabaseError."""
        if self._closed:
            return
        self._closed = True
        writer = self._writer
        if writer is not None and not writer.done():
            try:
                await asyncio.shield(writer)
            except Exception:  # noqa: BLE001, S110 - its callers got the error
                pass  # its callers got the error
        async with self._lock:
            await self._conn.close()

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseError("the database is closed")

    async def ping(self) -> bool:
        """Run `SELECT 1`; raises DatabaseError if the database does not answer."""
        self._check_open()
        try:
            async with self._lock:
                rows = list(await self._conn.execute_fetchall("SELECT 1"))
        except (sqlite3.Error, ValueError) as e:
            raise DatabaseError(f"database {self.path!r} does not answer: {e}") from e
        return rows[0][0] == 1

    # ----------------------------------------------------------- task counts

    async def load_task_counts(self) -> dict[TaskState, int]:
        """Count the tasks in each state once (a full scan), then keep the
        counts in memory: every write that changes a task's state reports its
        change (`Counted`), so `task_counts()` never scans the table again.
        Read under the lock, so no committed batch is counted twice or missed."""
        self._check_open()
        async with self._lock:
            rows = list(await self._conn.execute_fetchall("SELECT state, COUNT(*) FROM tasks GROUP BY state"))
            counts = {s: 0 for s in TaskState}
            for state, n in rows:
                counts[TaskState(state)] = int(n)
            self._task_counts = counts
        return dict(counts)

    def task_counts(self) -> dict[TaskState, int] | None:
        """Every state with its count (0 included), from memory; None until
        `load_task_counts` ran (only the Host loads them)."""
        return None if self._task_counts is None else dict(self._task_counts)

    def _apply_counts(self, deltas: list[Mapping[TaskState, int]]) -> None:
        counts = self._task_counts
        if counts is None:
            return
        for delta in deltas:
            for state, n in delta.items():
                counts[state] = counts.get(state, 0) + n

    # ----------------------------------------------------------------- plumbing

    async def _fetch(self, sql: str, params: Sequence[Any], factory: Callable[[Any, Sequence[Any]], Any]) -> list:
        """Run a read and build models in the database thread (a long list then
        does not hold the event loop for its whole conversion)."""
        self._check_open()
        async with self._lock:
            return await self._in_thread(_fetch_in_thread, sql, params, factory)

    async def _write(self, fn: Callable[[aiosqlite.Connection], Awaitable[Any]], *, atomic: bool = False) -> Any:
        """Queue one write operation and wait until it is committed (or failed).

        `fn` runs inside the batch transaction and may only await the
        connection. `atomic=True` wraps it in a SAVEPOINT (needed when it runs
        more than one statement).
        """
        self._check_open()
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_WriteOp(fn, fut, atomic))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name="hakuriver-db-writer")
        return await fut

    async def _write_loop(self) -> None:
        while self._queue:
            batch: list[_WriteOp] = []
            while self._queue and len(batch) < MAX_BATCH:
                op = self._queue.popleft()
                if not op.fut.done():  # a cancelled caller's op is simply not run
                    batch.append(op)
            if not batch:
                continue
            try:
                outcomes = await self._run_batch(batch)
            except BaseException as e:
                err = e if isinstance(e, Exception) else DatabaseError("database writer stopped")
                for op in batch:
                    if not op.fut.done():
                        op.fut.set_exception(err)
                while self._queue:
                    op = self._queue.popleft()
                    if not op.fut.done():
                        op.fut.set_exception(err)
                raise
            for op, ok, value in outcomes:
                if op.fut.done():
                    continue
                if ok:
                    op.fut.set_result(value)
                else:
                    op.fut.set_exception(value)

    async def _run_batch(self, batch: list[_WriteOp]) -> list[tuple[_WriteOp, bool, Any]]:
        """BEGIN, every op (each in a SAVEPOINT when atomic), COMMIT: all of it
        in the database thread, in one call (see `_InThread`). Statement by
        statement, each of a batch's dozen round trips waited for a turn of a
        busy event loop, so a commit took tens of milliseconds under load."""
        async with self._lock:
            began = time.perf_counter()
            try:
                outcomes, deltas = await self._in_thread(_run_batch_in_thread, batch)
            except Exception as e:  # noqa: BLE001 - every waiter gets the error
                err = _wrap_error(e)
                return [(op, False, err) for op in batch]
            # Still under the lock: a count read (load_task_counts) sees
            # every committed batch applied, or none of this one.
            self._apply_counts(deltas)
            self._observe_commit(time.perf_counter() - began, len(batch))
        return outcomes

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(sqlite3_connection, *args)` in the database thread and wait
        for it, even when the caller is cancelled meanwhile (`dbthread`): a
        committed batch's callers are answered."""
        return await in_db_thread(self._conn, fn, *args)

    def _observe_commit(self, seconds: float, ops: int) -> None:
        # The batch is committed: an observer's failure must not fail its callers.
        if self.commit_observer is None:
            return
        try:
            self.commit_observer(seconds, ops)
        except Exception:
            log.exception("the commit observer failed")


class _InThreadCursor:
    """An aiosqlite cursor's face on a sqlite3 cursor (see `_InThread`): what
    the ops use of one (they read rows with `execute_fetchall`)."""

    def __init__(self, cursor: sqlite3.Cursor):
        self._cursor = cursor

    async def close(self) -> None:
        self._cursor.close()


class _InThread:
    """What a write op sees of the connection while its batch runs in the
    database thread: aiosqlite's methods, done at once on the sqlite3
    connection. An op "may only await the connection" (`Store._write`), so its
    coroutine never suspends here and `_drive` runs it to the end in one go."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    async def execute_fetchall(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return self._conn.execute(sql, parameters).fetchall()

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _InThreadCursor:
        return _InThreadCursor(self._conn.execute(sql, parameters))

    async def executemany(self, sql: str, parameters: Any) -> _InThreadCursor:
        return _InThreadCursor(self._conn.executemany(sql, parameters))


def _fetch_in_thread(
    conn: sqlite3.Connection, sql: str, params: Sequence[Any], factory: Callable[[Any, Sequence[Any]], Any]
) -> list[Any]:
    """The database thread's part of `Store._fetch`: one call, not three."""
    cursor = conn.cursor()
    try:
        cursor.row_factory = factory
        return cursor.execute(sql, params).fetchall()
    finally:
        cursor.close()


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends to its end; return its value."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a database write op awaited something other than the connection")


def _run_batch_in_thread(
    conn: sqlite3.Connection, batch: list[_WriteOp]
) -> tuple[list[tuple[_WriteOp, bool, Any]], list[Mapping[TaskState, int]]]:
    """The database thread's part of `Store._run_batch`."""
    face = _InThread(conn)
    outcomes: list[tuple[_WriteOp, bool, Any]] = []
    deltas: list[Mapping[TaskState, int]] = []
    try:
        conn.execute("BEGIN IMMEDIATE")
        for op in batch:
            if op.atomic:
                conn.execute("SAVEPOINT op")
            try:
                value = _drive(op.fn(face))  # type: ignore[arg-type]  # the connection's face, see _InThread
            except Exception as e:
                if not conn.in_transaction:
                    raise  # SQLite rolled the whole transaction back
                if op.atomic:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                outcomes.append((op, False, _wrap_error(e)))
            else:
                if op.atomic:
                    conn.execute("RELEASE op")
                if isinstance(value, Counted):
                    deltas.append(value.delta)
                    value = value.value
                outcomes.append((op, True, value))
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        raise
    return outcomes, deltas
