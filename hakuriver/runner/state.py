"""The runner's own durable memory: which tasks it runs, and results not yet delivered.

A small SQLite file in `local_temp_dir`. The task supervisor writes a task's
executor handle here *before* it reports the task running to the Host, and
moves the task to the outbox when it ends; the outbox entry is deleted only
when the Host acknowledges the result. After a restart the runner reloads
`active()` (and recovers each handle) and re-sends `outbox()`.

One connection, one asyncio.Lock, short `BEGIN IMMEDIATE` transactions; WAL
with `synchronous=FULL` so a committed row survives a power cut. Migrations
are keyed on `PRAGMA user_version`. The ids in the outbox are also kept in
memory (`in_outbox`, `outbox_ids`), in step with the table: only this
object writes it.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import aiosqlite

from ..dbthread import in_db_thread
from ..errors import HakuRiverError
from ..jsoncodec import dumps_text
from ..models import ExitResult, TaskState
from .executors.base import Handle

# Each script runs as one transaction and ends by setting its version.
MIGRATIONS: tuple[str, ...] = (
    """
    BEGIN;
    CREATE TABLE tasks (
        task_id        INTEGER PRIMARY KEY,
        handle         TEXT    NOT NULL,
        task           TEXT    NOT NULL,
        kill_requested INTEGER NOT NULL DEFAULT 0,
        paused         INTEGER NOT NULL DEFAULT 0,
        saved_at       REAL    NOT NULL
    );
    CREATE TABLE outbox (
        task_id     INTEGER PRIMARY KEY,
        state       TEXT    NOT NULL,
        exit_code   INTEGER,
        error       TEXT,
        finished_at REAL    NOT NULL,
        handle      TEXT,
        task        TEXT
    );
    PRAGMA user_version = 1;
    COMMIT;
    """,
    # 2: the runner's identity: the node key that proves to the Host which
    # node this is, and the order token the Host must present to it.
    """
    BEGIN;
    CREATE TABLE identity (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    PRAGMA user_version = 2;
    COMMIT;
    """,
    # 3: why a result's output files are incomplete (ExitResult.output_error).
    """
    BEGIN;
    ALTER TABLE outbox ADD COLUMN output_error TEXT;
    PRAGMA user_version = 3;
    COMMIT;
    """,
)

NODE_KEY = "node_key"
ORDER_TOKEN = "order_token"  # noqa: S105 - the secret's name in the store


@dataclass(frozen=True)
class ActiveTask:
    handle: Handle
    task: dict[str, Any]
    """The Host's run request, as received."""
    kill_requested: bool
    paused: bool

    @property
    def task_id(self) -> int:
        return self.handle.task_id


@dataclass(frozen=True)
class OutboxEntry:
    task_id: int
    result: ExitResult
    finished_at: float
    handle: Handle | None
    task: dict[str, Any] | None

    @property
    def attempt(self) -> int:
        """Which run of the task this result is about (the run request's `attempt`; 1 when not said)."""
        return _attempt_of(self.task)


_ATTEMPT_SQL = "COALESCE(json_extract(task, '$.attempt'), 1)"
"""The attempt of an outbox row, from the run request it keeps (`RunRequest.attempt`)."""


def _attempt_of(task: dict[str, Any] | None) -> int:
    value = (task or {}).get("attempt", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


class RunnerState:
    """Use `await RunnerState.open(path)`; `await close()` when done."""

    def __init__(self, db: aiosqlite.Connection, path: str, outbox_ids: Iterable[tuple[int, int]] = ()):
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path
        self._outbox_ids: dict[int, int] = dict(outbox_ids)
        """Task id -> the attempt its result in the outbox is about."""

    @classmethod
    async def open(cls, path: str) -> RunnerState:
        """Open (or create) the store. It holds the runner's secrets and every
        task's request, so the file is created 0600 in a 0700 directory.

        Like the Host's database, a store that cannot be trusted is refused
        with one `StateError` line, before anything runs: an existing empty
        file (a lost copy, a full disk), a file that is not SQLite, and one
        that fails `PRAGMA quick_check`. A runner that started afresh instead
        would forget its tasks and results and its node key."""
        await asyncio.to_thread(_refuse_empty, path)
        await asyncio.to_thread(_private_file, path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as e:
            raise StateError(f"cannot open runner state {path}: {e}") from None
        try:
            try:
                await db.execute("PRAGMA busy_timeout=5000")
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=FULL")
                await _check_integrity(db, path)
                await _migrate(db)
                async with db.execute(f"SELECT task_id, {_ATTEMPT_SQL} FROM outbox") as cur:
                    outbox_ids = [(int(r[0]), int(r[1])) for r in await cur.fetchall()]
            except sqlite3.DatabaseError as e:
                raise StateError(f"runner state {path} is damaged or not a database ({e}); {_ADVICE}") from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path, outbox_ids)

    async def close(self) -> None:
        async with self._lock:
            await self._db.close()

    async def _write(
        self, *statements: tuple[str, tuple[Any, ...]], on_commit: Callable[[], object] | None = None
    ) -> int:
        """Run statements in one IMMEDIATE transaction; return the last rowcount.

        The transaction goes to the database thread whole (`dbthread`): a
        cancellation never leaves it half done, and it is raised only once the
        transaction has ended. `on_commit` keeps the in-memory copy of the
        outbox in step: it runs once the transaction has committed, even when
        the caller was cancelled meanwhile."""
        async with self._lock:
            then = None if on_commit is None else (lambda _rowcount: on_commit())
            return await in_db_thread(self._db, _write_in_thread, statements, then=then)

    async def _read(self, sql: str, params: tuple[Any, ...] = ()) -> list[aiosqlite.Row]:
        async with self._lock:
            async with self._db.execute(sql, params) as cur:
                return list(await cur.fetchall())

    # -- identity -------------------------------------------------------
    async def secret(self, name: str) -> str:
        """The runner's persistent secret `name`, made on first use."""
        rows = await self._read("SELECT value FROM identity WHERE name = ?", (name,))
        if rows:
            return str(rows[0][0])
        value = secrets.token_urlsafe(32)
        await self._write(("INSERT OR IGNORE INTO identity (name, value) VALUES (?, ?)", (name, value)))
        rows = await self._read("SELECT value FROM identity WHERE name = ?", (name,))
        return str(rows[0][0])

    # -- active tasks ---------------------------------------------------
    async def save_task(self, handle: Handle, task: dict[str, Any]) -> None:
        """Remember a started task (or update its handle). Flags are kept on update."""
        await self._write(
            (
                "INSERT INTO tasks (task_id, handle, task, saved_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(task_id) DO UPDATE SET handle = excluded.handle, task = excluded.task",
                (handle.task_id, dumps_text(handle.to_json()), dumps_text(task), time.time()),
            )
        )

    async def active(self) -> list[ActiveTask]:
        rows = await self._read("SELECT handle, task, kill_requested, paused FROM tasks ORDER BY task_id")
        return [_active(r) for r in rows]

    async def get(self, task_id: int) -> ActiveTask | None:
        rows = await self._read("SELECT handle, task, kill_requested, paused FROM tasks WHERE task_id = ?", (task_id,))
        return _active(rows[0]) if rows else None

    async def set_flags(self, task_id: int, *, kill_requested: bool | None = None, paused: bool | None = None) -> bool:
        """Update the flags given; False when the task is not active."""
        sets, params = [], []
        if kill_requested is not None:
            sets.append("kill_requested = ?")
            params.append(int(kill_requested))
        if paused is not None:
            sets.append("paused = ?")
            params.append(int(paused))
        if not sets:
            return await self.get(task_id) is not None
        n = await self._write((f"UPDATE tasks SET {', '.join(sets)} WHERE task_id = ?", (*params, task_id)))
        return n > 0

    # -- results --------------------------------------------------------
    async def record_result(self, task_id: int, result: ExitResult, finished_at: float, *, attempt: int = 1) -> None:
        """Move a task from active to the outbox, atomically. A result recorded
        twice keeps the first (the first observation of an end is the real one).
        `attempt`: the run it is about (`RunRequest.attempt`)."""
        await self._write(
            (
                "INSERT OR IGNORE INTO outbox"
                " (task_id, state, exit_code, error, finished_at, handle, task, output_error) "
                "SELECT ?, ?, ?, ?, ?, t.handle, t.task, ? FROM (SELECT 1) "
                "LEFT JOIN tasks t ON t.task_id = ?",
                (
                    task_id,
                    str(result.state),
                    result.exit_code,
                    result.error,
                    finished_at,
                    result.output_error,
                    task_id,
                ),
            ),
            ("DELETE FROM tasks WHERE task_id = ?", (task_id,)),
            on_commit=lambda: self._outbox_ids.setdefault(task_id, attempt),
        )

    def in_outbox(self, task_id: int) -> bool:
        """Whether a result of this task waits in the outbox (no query)."""
        return task_id in self._outbox_ids

    def outbox_attempt(self, task_id: int) -> int | None:
        """The attempt of the task's result waiting in the outbox; None when none waits."""
        return self._outbox_ids.get(task_id)

    def outbox_ids(self) -> list[int]:
        """The ids of the results in the outbox, in id order (no query)."""
        return sorted(self._outbox_ids)

    async def outbox(self) -> list[OutboxEntry]:
        rows = await self._read(
            "SELECT task_id, state, exit_code, error, finished_at, handle, task, output_error"
            " FROM outbox ORDER BY finished_at, task_id"
        )
        return [
            OutboxEntry(
                task_id=int(r[0]),
                result=ExitResult(state=TaskState(r[1]), exit_code=r[2], error=r[3], output_error=r[7]),
                finished_at=float(r[4]),
                handle=Handle.from_json(json.loads(r[5])) if r[5] else None,
                task=json.loads(r[6]) if r[6] else None,
            )
            for r in rows
        ]

    async def acknowledge(self, task_id: int, *, attempt: int | None = None) -> None:
        """The Host has the result: forget it. With `attempt`, only the result
        of that attempt (a slow delivery of an earlier run must not drop the
        result of a newer one, `--retries`)."""
        if attempt is None:
            await self._write(
                ("DELETE FROM outbox WHERE task_id = ?", (task_id,)),
                on_commit=lambda: self._outbox_ids.pop(task_id, None),
            )
            return
        await self._write(
            (f"DELETE FROM outbox WHERE task_id = ? AND {_ATTEMPT_SQL} = ?", (task_id, attempt)),
            on_commit=lambda: self._forget_delivered([(task_id, attempt)]),
        )

    async def acknowledge_many(self, delivered: Iterable[tuple[int, int]]) -> None:
        """The Host has these results, as (task id, attempt): forget them, in
        one transaction (a batch of reports, `HostLink`). Like `acknowledge`
        with `attempt`, each only for that attempt."""
        pairs = list(delivered)
        if not pairs:
            return
        sql = f"DELETE FROM outbox WHERE task_id = ? AND {_ATTEMPT_SQL} = ?"
        await self._write(
            *((sql, (task_id, attempt)) for task_id, attempt in pairs),
            on_commit=lambda: self._forget_delivered(pairs),
        )

    def _forget_delivered(self, pairs: Iterable[tuple[int, int]]) -> None:
        for task_id, attempt in pairs:
            if self._outbox_ids.get(task_id) == attempt:
                del self._outbox_ids[task_id]


def _write_in_thread(conn: sqlite3.Connection, statements: tuple[tuple[str, tuple[Any, ...]], ...]) -> int:
    """The database thread's part of `RunnerState._write`."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        rowcount = 0
        for sql, params in statements:
            rowcount = conn.execute(sql, params).rowcount
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # some errors (a full disk) roll it back themselves
            conn.execute("ROLLBACK")
        raise
    return rowcount


class StateError(HakuRiverError):
    """The runner's state store cannot be opened or trusted."""

    code = "runner_state"


_ADVICE = (
    "restore it from a backup, or move it aside to start as a new runner "
    "(it held this node's key: the Host may then need 'hakuriver.admin node forget NAME')"
)


def _refuse_empty(path: str) -> None:
    """A new runner's state file does not exist yet; an existing empty one is a
    lost file, never a new runner to start (that would forget its tasks)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StateError(f"cannot open runner state {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode) and st.st_size == 0:
        try:
            wal = os.lstat(path + "-wal").st_size
        except OSError:
            wal = 0
        if wal == 0:
            raise StateError(f"runner state {path} exists but is empty (0 bytes); {_ADVICE}")


async def _check_integrity(db: aiosqlite.Connection, path: str) -> None:
    async with db.execute("PRAGMA quick_check(1)") as cur:
        rows = list(await cur.fetchall())
    verdict = str(rows[0][0]) if rows else "no answer"
    if verdict != "ok":
        raise StateError(f"runner state {path} failed its integrity check ({verdict}); {_ADVICE}")


def _private_file(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateError(f"cannot open runner state {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"runner state {path} is not a regular file")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)  # a store from before 0.4 was created 0644
    finally:
        os.close(fd)


def _active(row: Any) -> ActiveTask:
    return ActiveTask(
        handle=Handle.from_json(json.loads(row[0])),
        task=json.loads(row[1]),
        kill_requested=bool(row[2]),
        paused=bool(row[3]),
    )


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > len(MIGRATIONS):
        raise StateError(
            f"runner state file is at schema version {version}, newer than this HakuRiver ({len(MIGRATIONS)})"
        )
    for script in MIGRATIONS[version:]:
        await db.executescript(script)
