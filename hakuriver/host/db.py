"""The Host's database: the one module that owns SQL.

Contract
--------
* One aiosqlite connection (one worker thread) and one `asyncio.Lock`. Every
  read and every write transaction holds the lock, so two coroutines can
  never interleave statements inside one transaction, and nothing but the
  database is awaited while it is held.
* Writes are **group-committed**. Each write method queues an operation; a
  single writer task takes everything queued (up to `MAX_BATCH` operations),
  runs it inside one short `BEGIN IMMEDIATE ... COMMIT` and only then resolves
  the callers' awaits. Under load, many submissions, heartbeats and state
  reports share one fsync; when idle, an operation commits on its own at once.
  A caller's await returns only after its change is durable
  (WAL + `synchronous=FULL`). An operation that fails (e.g. a duplicate id) is
  rolled back on its own (statement-level atomicity, or a SAVEPOINT for
  multi-statement operations) and does not fail its batch-mates.
* State changes are guarded updates (`... WHERE id=? AND state IN (...)`), so a
  late report can never overwrite a final state; see `transition`.
* Migrations are keyed on `PRAGMA user_version`. Each migration runs in its own
  explicit transaction that re-reads `user_version` after `BEGIN IMMEDIATE`,
  so two processes opening one file cannot both apply it. A file newer than
  this code is refused with `SchemaTooNew`, never downgraded.

Needs SQLite >= 3.35 (RETURNING, UPDATE ... FROM).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

from ..errors import HakuRiverError, ValidationError
from ..models import (
    FINAL_STATES,
    HOLDING_STATES,
    GpuInfo,
    Mount,
    NodeCapabilities,
    NodeResources,
    NumaNode,
    Target,
    Task,
    TaskState,
    predecessors,
)
from ..parsing import parse_target

log = logging.getLogger(__name__)

MIN_SQLITE = (3, 35, 0)
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 256
"""Most write operations committed together in one transaction."""
_CHUNK = 500
"""Most rows per statement where a statement takes rows as parameters."""


class DatabaseError(HakuRiverError):
    """The Host database cannot be opened or used."""

    code = "database"


class SchemaTooNew(DatabaseError):
    """The file was written by a newer HakuRiver; refusing to touch it."""


# --------------------------------------------------------------------------- schema

MIGRATIONS: tuple[str, ...] = (
    # 1: nodes and tasks.
    """
    CREATE TABLE nodes (
        hostname       TEXT PRIMARY KEY,
        url            TEXT NOT NULL,
        cores          INTEGER NOT NULL,
        memory         INTEGER NOT NULL,
        numa_json      TEXT NOT NULL DEFAULT '[]',
        gpus_json      TEXT NOT NULL DEFAULT '[]',
        online         INTEGER NOT NULL DEFAULT 1,
        registered_at  REAL NOT NULL,
        last_heartbeat REAL NOT NULL,
        stats_json     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX nodes_online_heartbeat ON nodes(online, last_heartbeat);

    CREATE TABLE tasks (
        id           INTEGER PRIMARY KEY,
        batch_id     INTEGER NOT NULL,
        state        TEXT NOT NULL,
        command_json TEXT NOT NULL,
        cores        INTEGER NOT NULL,
        memory       INTEGER,
        container    TEXT,
        env_json     TEXT NOT NULL DEFAULT '{}',
        mounts_json  TEXT NOT NULL DEFAULT '[]',
        privileged   INTEGER NOT NULL DEFAULT 0,
        target       TEXT,
        gpu_count    INTEGER NOT NULL DEFAULT 0,
        node         TEXT,
        numa         INTEGER,
        gpus_json    TEXT NOT NULL DEFAULT '[]',
        submitted_at REAL NOT NULL,
        assigned_at  REAL,
        started_at   REAL,
        finished_at  REAL,
        exit_code    INTEGER,
        error        TEXT,
        updated_at   REAL NOT NULL
    );
    CREATE INDEX tasks_state ON tasks(state, id);
    CREATE INDEX tasks_node ON tasks(node, id);
    CREATE INDEX tasks_submitted ON tasks(submitted_at, id);
    CREATE INDEX tasks_batch ON tasks(batch_id, id);
    """,
    # 2: the trust model. Users and their token hashes; who submitted each
    # task (NULL for tasks from before users: only admins control those);
    # each node bound to the runner identity that registered it, and the
    # credential the Host presents to that runner; environment owners.
    """
    CREATE TABLE users (
        name       TEXT PRIMARY KEY,
        role       TEXT NOT NULL CHECK (role IN ('admin', 'user')),
        unix_user  TEXT,
        created_at REAL NOT NULL
    );
    CREATE TABLE tokens (
        hash       TEXT PRIMARY KEY,
        user       TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
        created_at REAL NOT NULL
    );
    CREATE INDEX tokens_user ON tokens(user);
    ALTER TABLE tasks ADD COLUMN owner TEXT;
    CREATE INDEX tasks_owner ON tasks(owner, id);
    ALTER TABLE nodes ADD COLUMN identity_hash TEXT;
    ALTER TABLE nodes ADD COLUMN order_token TEXT NOT NULL DEFAULT '';
    CREATE TABLE environment_owners (
        name       TEXT PRIMARY KEY,
        owner      TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    """,
    # 3: what each node's runner says it can run (models.NodeCapabilities as
    # JSON); NULL for a runner that never said, which may run anything.
    """
    ALTER TABLE nodes ADD COLUMN capabilities_json TEXT;
    """,
    # 4: why a task's output files are incomplete (a runner's report says:
    # ENOSPC, EIO, the shared dir gone); NULL when they are complete or the
    # task never ran.
    """
    ALTER TABLE tasks ADD COLUMN output_error TEXT;
    """,
    # 5: a node drained by an admin (`hakuriver.admin node drain`): no new task
    # is placed there. drained_at NULL means not drained; registration never
    # touches these columns, so a re-registering runner stays drained.
    """
    ALTER TABLE nodes ADD COLUMN drained_at REAL;
    ALTER TABLE nodes ADD COLUMN drained_by TEXT;
    ALTER TABLE nodes ADD COLUMN drained_reason TEXT;
    """,
    # 6: a task's time limit in seconds (`--time`); NULL for none.
    """
    ALTER TABLE tasks ADD COLUMN time_limit INTEGER;
    """,
    # 7: task dependencies (`--after`, `--after-any`; host/dependencies.py).
    # One row per (task, task it waits for); `kind` says whether the other
    # task must complete or only end. Both ways indexed: a task's own list
    # (the primary key), and who waits on a task (when it ends).
    """
    CREATE TABLE task_dependencies (
        task_id    INTEGER NOT NULL REFERENCES tasks(id),
        depends_on INTEGER NOT NULL REFERENCES tasks(id),
        kind       TEXT NOT NULL CHECK (kind IN ('after', 'after_any')),
        PRIMARY KEY (task_id, depends_on)
    ) WITHOUT ROWID;
    CREATE INDEX task_dependencies_on ON task_dependencies(depends_on, task_id);
    """,
    # 8: per-user limits (scheduler.UserLimits); NULL: the config's default
    # ([limits]), 0: unlimited for this user.
    """
    ALTER TABLE users ADD COLUMN max_cores INTEGER;
    ALTER TABLE users ADD COLUMN max_gpus INTEGER;
    ALTER TABLE users ADD COLUMN max_running INTEGER;
    """,
    # 9: accounting (`GET /api/usage`) sums final tasks that finished since a
    # time; the index keeps that a range scan on a long history.
    """
    CREATE INDEX tasks_finished ON tasks(finished_at);
    """,
    # 10: task arrays (`--array`): a task's index in its batch's array (NULL:
    # not an array task) and the batch's `%N` (0: no limit), kept on every
    # task of the batch so the scheduler needs no other table.
    """
    ALTER TABLE tasks ADD COLUMN array_index INTEGER;
    ALTER TABLE tasks ADD COLUMN array_max_running INTEGER NOT NULL DEFAULT 0;
    """,
)
"""Migration N (1-based) is MIGRATIONS[N-1]. Append only; never edit a released one."""

SCHEMA_VERSION = len(MIGRATIONS)

_TASK_COLUMNS = (
    "id, batch_id, state, command_json, cores, memory, container, env_json, mounts_json, "
    "privileged, target, gpu_count, node, numa, gpus_json, submitted_at, assigned_at, "
    "started_at, finished_at, exit_code, error, owner, output_error, time_limit, "
    "array_index, array_max_running"
)
_NODE_COLUMNS = (
    "hostname, url, cores, memory, numa_json, gpus_json, online, registered_at, last_heartbeat, stats_json, "
    "identity_hash, order_token, capabilities_json, drained_at, drained_by, drained_reason"
)
_HOLDING_SQL = ",".join(f"'{s}'" for s in sorted(HOLDING_STATES))
_FINAL_SQL = ",".join(f"'{s}'" for s in sorted(FINAL_STATES))

USAGE_GROUPS = ("user", "node")
"""What `Database.usage` can sum by: the task's owner or its node."""


@dataclass(frozen=True)
class UsageRow:
    """The resources one owner (or node) used: `name` is None for tasks from
    before users (by user) or that never had a node (by node)."""

    name: str | None
    tasks: int
    core_hours: float
    gpu_hours: float
    hours: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tasks": self.tasks,
            "core_hours": round(self.core_hours, 6),
            "gpu_hours": round(self.gpu_hours, 6),
            "hours": round(self.hours, 6),
        }


def _split_sql(script: str) -> list[str]:
    """Split a migration script into complete statements (one per `;` line end)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            statements.append(buf.strip())
            buf = ""
    if buf.strip():
        raise DatabaseError(f"incomplete SQL statement in migration: {buf.strip()[:80]!r}")
    return statements


# --------------------------------------------------------------------------- row <-> model


def _dumps(value: Any) -> str:
    # ensure_ascii (the default) keeps lone surrogates (surrogateescape'd
    # argv bytes) representable: SQLite stores UTF-8 and would refuse them raw.
    return json.dumps(value, separators=(",", ":"))


def _mounts_json(mounts: Iterable[Mount]) -> str:
    return _dumps([[m.host_path, m.container_path, bool(m.read_only)] for m in mounts])


@functools.lru_cache(maxsize=4096)
def target_from_stored(text: str | None) -> Target | None:
    """The typed target of a stored row. Targets are validated at submit, so
    one that no longer parses means a damaged row: it becomes a target that
    names no node (node names never hold ':'), so it waits, never misplaced."""
    if text is None:
        return None
    try:
        return parse_target(text)
    except ValidationError:
        log.error("stored target %r does not parse; the task can never be placed", text)
        return Target(node=text)


def _task_from_row(_cursor: Any, row: Sequence[Any]) -> Task:
    """Row factory for `_TASK_COLUMNS` (runs in the database thread for lists)."""
    return Task(
        id=row[0],
        batch_id=row[1],
        state=TaskState(row[2]),
        command=json.loads(row[3]),
        cores=row[4],
        memory=row[5],
        container=row[6],
        env=json.loads(row[7]),
        mounts=[Mount(h, c, bool(ro)) for h, c, ro in json.loads(row[8])],
        privileged=bool(row[9]),
        target=target_from_stored(row[10]),
        gpu_count=row[11],
        node=row[12],
        numa=row[13],
        gpus=json.loads(row[14]),
        submitted_at=row[15],
        assigned_at=row[16],
        started_at=row[17],
        finished_at=row[18],
        exit_code=row[19],
        error=row[20],
        owner=row[21],
        output_error=row[22],
        time_limit=row[23],
        array_index=row[24],
        array_max_running=row[25] or 0,
    )


def _task_params(task: Task, now: float) -> tuple[Any, ...]:
    return (
        int(task.id),
        int(task.batch_id),
        str(TaskState(task.state)),
        _dumps(list(task.command)),
        int(task.cores),
        None if task.memory is None else int(task.memory),
        task.container,
        _dumps(dict(task.env)),
        _mounts_json(task.mounts),
        1 if task.privileged else 0,
        None if task.target is None else str(task.target),
        int(task.gpu_count),
        task.node,
        None if task.numa is None else int(task.numa),
        _dumps([int(g) for g in task.gpus]),
        float(task.submitted_at),
        task.assigned_at,
        task.started_at,
        task.finished_at,
        task.exit_code,
        task.error,
        task.owner,
        task.output_error,
        None if task.time_limit is None else int(task.time_limit),
        None if task.array_index is None else int(task.array_index),
        int(task.array_max_running or 0),
        now,
    )


@dataclass(frozen=True)
class Drain:
    """An admin's drain of a node: when, by whom, why (`reason` may be empty)."""

    at: float
    by: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "by": self.by, "at": self.at}


@dataclass(frozen=True)
class NodeRecord:
    """A registered node as the Host stores it."""

    hostname: str
    url: str
    cores: int
    memory: int
    numa: tuple[NumaNode, ...]
    gpus: tuple[GpuInfo, ...]
    online: bool
    registered_at: float
    last_heartbeat: float
    stats: dict[str, Any] = field(default_factory=dict)
    identity_hash: str | None = None
    """sha256 of the key of the runner this name is bound to (None: unbound)."""
    order_token: str = ""
    """What the Host presents to this runner; the runner chose it. Never shown."""
    capabilities: NodeCapabilities | None = None
    """What its runner last said it can run; None if it never said."""
    drain: Drain | None = None
    """Set while an admin has drained the node: no new task is placed there."""

    @property
    def resources(self) -> NodeResources:
        return NodeResources(
            hostname=self.hostname,
            url=self.url,
            cores=self.cores,
            memory=self.memory,
            numa=self.numa,
            gpus=self.gpus,
            capabilities=self.capabilities,
        )


def _node_from_row(_cursor: Any, row: Sequence[Any]) -> NodeRecord:
    return NodeRecord(
        hostname=row[0],
        url=row[1],
        cores=row[2],
        memory=row[3],
        numa=tuple(NumaNode.from_json(n) for n in json.loads(row[4])),
        gpus=tuple(GpuInfo.from_json(g) for g in json.loads(row[5])),
        online=bool(row[6]),
        registered_at=row[7],
        last_heartbeat=row[8],
        stats=json.loads(row[9]),
        identity_hash=row[10],
        order_token=row[11],
        capabilities=_capabilities_from_text(row[12]),
        drain=None if row[13] is None else Drain(at=row[13], by=row[14] or "", reason=row[15] or ""),
    )


def _capabilities_from_text(text: str | None) -> NodeCapabilities | None:
    if text is None:
        return None
    try:
        return NodeCapabilities.from_json(json.loads(text))
    except ValueError:
        # Written by a newer Host (a kind this one does not know): unknown, so
        # nothing is refused on it; the runner's next heartbeat says again.
        log.warning("ignoring unreadable node capabilities %r", text[:200])
        return None


def _capabilities_text(caps: NodeCapabilities | None) -> str | None:
    return None if caps is None else _dumps(caps.to_json())


_TRANSITION_FIELDS = frozenset(
    {"node", "numa", "gpus", "assigned_at", "started_at", "finished_at", "exit_code", "error", "output_error"}
)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --------------------------------------------------------------------------- the database


@dataclass(eq=False)
class _WriteOp:
    fn: Callable[[aiosqlite.Connection], Awaitable[Any]]
    fut: asyncio.Future
    atomic: bool


@dataclass(frozen=True)
class UserRecord:
    name: str
    role: str
    """`admin` or `user`."""
    unix_user: str | None
    created_at: float
    tokens: int = 0
    """How many live tokens the user has."""
    max_cores: int | None = None
    """The user's own limits (`scheduler.LIMIT_NAMES`); None: the config's
    default applies, 0: unlimited."""
    max_gpus: int | None = None
    max_running: int | None = None

    def own_limits(self) -> dict[str, int | None]:
        return {"max_cores": self.max_cores, "max_gpus": self.max_gpus, "max_running": self.max_running}


def _user_from_row(_cursor: Any, row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        name=row[0],
        role=row[1],
        unix_user=row[2],
        created_at=row[3],
        tokens=row[4],
        max_cores=row[5],
        max_gpus=row[6],
        max_running=row[7],
    )


_LIMIT_COLUMNS = ("max_cores", "max_gpus", "max_running")
"""The users columns of per-user limits (the names of `scheduler.LIMIT_NAMES`)."""


class _Accounts:
    """SQL for users, token hashes, environment owners and node forgetting
    (mixed into `Database`; the policy is in `host/accounts.py`)."""

    _fetch: Callable[..., Awaitable[list]]
    _write: Callable[..., Awaitable[Any]]

    async def list_users(self) -> list[UserRecord]:
        return await self._fetch(
            """SELECT u.name, u.role, u.unix_user, u.created_at, COUNT(t.hash),
                      u.max_cores, u.max_gpus, u.max_running
               FROM users u LEFT JOIN tokens t ON t.user = u.name GROUP BY u.name ORDER BY u.name""",
            (),
            _user_from_row,
        )

    async def token_owners(self) -> list[tuple[str, str]]:
        """Every (token hash, user name): the Host keeps them in memory."""
        return await self._fetch("SELECT hash, user FROM tokens", (), lambda _c, row: (row[0], row[1]))

    async def add_user(
        self,
        name: str,
        role: str,
        unix_user: str | None,
        token_hash: str,
        now: float,
        limits: Mapping[str, int | None] | None = None,
    ) -> UserRecord | None:
        """Create a user with its first token (and its own `limits`, by
        `UserRecord` field name); None if the name is taken."""
        own = {k: (limits or {}).get(k) for k in _LIMIT_COLUMNS}

        async def op(conn: aiosqlite.Connection) -> UserRecord | None:
            rows = list(
                await conn.execute_fetchall(
                    "INSERT INTO users (name, role, unix_user, created_at, max_cores, max_gpus, max_running) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO NOTHING RETURNING name",
                    (name, role, unix_user, now, *own.values()),
                )
            )
            if not rows:
                return None
            await conn.execute_fetchall(
                "INSERT INTO tokens (hash, user, created_at) VALUES (?, ?, ?)", (token_hash, name, now)
            )
            return UserRecord(name, role, unix_user, now, 1, **own)

        return await self._write(op, atomic=True)

    async def set_user_limits(self, name: str, limits: Mapping[str, int | None]) -> bool:
        """Store a user's own limits (every `UserRecord` limit field; None: the
        default). False if there is no such user."""
        values = tuple(limits.get(k) for k in _LIMIT_COLUMNS)

        async def op(conn: aiosqlite.Connection) -> bool:
            rows = await conn.execute_fetchall(
                "UPDATE users SET max_cores=?, max_gpus=?, max_running=? WHERE name=? RETURNING name",
                (*values, name),
            )
            return bool(list(rows))

        return await self._write(op)

    async def remove_user(self, name: str) -> bool:
        async def op(conn: aiosqlite.Connection) -> bool:
            await conn.execute_fetchall("DELETE FROM tokens WHERE user=?", (name,))
            rows = list(await conn.execute_fetchall("DELETE FROM users WHERE name=? RETURNING name", (name,)))
            return bool(rows)

        return await self._write(op, atomic=True)

    async def add_token(self, name: str, token_hash: str, now: float, *, revoke_others: bool) -> bool:
        """Give a user a new token (and, with `revoke_others`, only that one)."""

        async def op(conn: aiosqlite.Connection) -> bool:
            if not list(await conn.execute_fetchall("SELECT 1 FROM users WHERE name=?", (name,))):
                return False
            if revoke_others:
                await conn.execute_fetchall("DELETE FROM tokens WHERE user=?", (name,))
            await conn.execute_fetchall(
                "INSERT INTO tokens (hash, user, created_at) VALUES (?, ?, ?)", (token_hash, name, now)
            )
            return True

        return await self._write(op, atomic=True)

    async def environment_owner(self, name: str) -> str | None:
        rows = await self._fetch("SELECT owner FROM environment_owners WHERE name=?", (name,), lambda _c, row: row[0])
        return rows[0] if rows else None

    async def set_environment_owner(self, name: str, owner: str | None, now: float) -> None:
        """Record who owns environment `name`; None forgets it."""

        async def op(conn: aiosqlite.Connection) -> None:
            if owner is None:
                await conn.execute_fetchall("DELETE FROM environment_owners WHERE name=?", (name,))
            else:
                await conn.execute_fetchall(
                    "INSERT INTO environment_owners (name, owner, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET owner=excluded.owner, updated_at=excluded.updated_at",
                    (name, owner, now),
                )

        await self._write(op)

    async def forget_node(self, hostname: str) -> bool:
        """Remove a node and its identity binding; its tasks keep their records."""

        async def op(conn: aiosqlite.Connection) -> bool:
            rows = list(
                await conn.execute_fetchall("DELETE FROM nodes WHERE hostname=? RETURNING hostname", (hostname,))
            )
            return bool(rows)

        return await self._write(op)


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


class Database(_Accounts):
    """The Host's store. Create with `await Database.open(path)`; `await close()` at shutdown."""

    def __init__(self, conn: aiosqlite.Connection, path: str):
        self._conn = conn
        self.path = path
        self._lock = asyncio.Lock()
        self._queue: collections.deque[_WriteOp] = collections.deque()
        self._writer: asyncio.Task | None = None
        self._closed = False

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Database:
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

    # ----------------------------------------------------------------- plumbing

    async def _fetch(self, sql: str, params: Sequence[Any], factory: Callable[[Any, Sequence[Any]], Any]) -> list:
        """Run a read and build models in the database thread (a long list then
        does not hold the event loop for its whole conversion)."""
        self._check_open()
        async with self._lock:
            cursor = await self._conn.execute(sql, params)
            try:
                cursor.row_factory = factory  # type: ignore[assignment]  # typeshed allows only type
                return list(await cursor.fetchall())
            finally:
                await cursor.close()

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
        conn = self._conn
        outcomes: list[tuple[_WriteOp, bool, Any]] = []
        async with self._lock:
            try:
                await conn.execute_fetchall("BEGIN IMMEDIATE")
                for op in batch:
                    if op.atomic:
                        await conn.execute_fetchall("SAVEPOINT op")
                    try:
                        value = await op.fn(conn)
                    except Exception as e:
                        if not conn.in_transaction:
                            raise  # SQLite rolled the whole transaction back
                        if op.atomic:
                            await conn.execute_fetchall("ROLLBACK TO op")
                            await conn.execute_fetchall("RELEASE op")
                        outcomes.append((op, False, _wrap_error(e)))
                    else:
                        if op.atomic:
                            await conn.execute_fetchall("RELEASE op")
                        outcomes.append((op, True, value))
                await conn.execute_fetchall("COMMIT")
            except Exception as e:  # noqa: BLE001 - every waiter gets the error
                await self._rollback_quietly()
                err = _wrap_error(e)
                return [(op, False, err) for op in batch]
            except BaseException:
                await self._rollback_quietly()
                raise
        return outcomes

    async def _rollback_quietly(self) -> None:
        try:
            if self._conn.in_transaction:
                await self._conn.execute_fetchall("ROLLBACK")
        except (sqlite3.Error, ValueError):
            pass

    # ----------------------------------------------------------------- nodes

    async def upsert_node(
        self, res: NodeResources, now: float, *, identity_hash: str | None = None, order_token: str = ""
    ) -> NodeRecord:
        """Register (or re-register) a node: it is online with a fresh heartbeat,
        bound to `identity_hash` (the caller checked the binding)."""
        params = (
            res.hostname,
            res.url,
            int(res.cores),
            int(res.memory),
            _dumps([n.to_json() for n in res.numa]),
            _dumps([g.to_json() for g in res.gpus]),
            now,
            now,
            identity_hash,
            order_token,
            _capabilities_text(res.capabilities),
        )

        async def op(conn: aiosqlite.Connection) -> NodeRecord:
            rows = await conn.execute_fetchall(
                f"""INSERT INTO nodes (hostname, url, cores, memory, numa_json, gpus_json, online,
                                       registered_at, last_heartbeat, stats_json, identity_hash, order_token,
                                       capabilities_json)
                    VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, '{{}}', ?, ?, ?)
                    ON CONFLICT(hostname) DO UPDATE SET
                        url=excluded.url, cores=excluded.cores, memory=excluded.memory,
                        numa_json=excluded.numa_json, gpus_json=excluded.gpus_json, online=1,
                        registered_at=excluded.registered_at, last_heartbeat=excluded.last_heartbeat,
                        identity_hash=excluded.identity_hash, order_token=excluded.order_token,
                        capabilities_json=excluded.capabilities_json
                    RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return _node_from_row(None, list(rows)[0])

        return await self._write(op)

    async def record_heartbeat(
        self, hostname: str, stats: dict[str, Any], now: float, capabilities: NodeCapabilities | None = None
    ) -> NodeRecord | None:
        """Store a heartbeat (the node is online again); None if the node is unknown.
        `capabilities` replaces the stored ones; None keeps them (a heartbeat
        that does not say leaves what registration said)."""
        params = (now, _dumps(stats), _capabilities_text(capabilities), hostname)

        async def op(conn: aiosqlite.Connection) -> NodeRecord | None:
            rows = await conn.execute_fetchall(
                f"""UPDATE nodes SET last_heartbeat=?, stats_json=?, online=1,
                        capabilities_json=COALESCE(?, capabilities_json)
                    WHERE hostname=? RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return next((_node_from_row(None, r) for r in rows), None)

        return await self._write(op)

    async def set_node_drain(self, hostname: str, drain: Drain | None) -> NodeRecord | None:
        """Drain a node (`drain` replaces any earlier one) or undo it (None).
        None if the node is unknown."""
        params = (
            None if drain is None else drain.at,
            None if drain is None else drain.by,
            None if drain is None else drain.reason,
            hostname,
        )

        async def op(conn: aiosqlite.Connection) -> NodeRecord | None:
            rows = await conn.execute_fetchall(
                f"""UPDATE nodes SET drained_at=?, drained_by=?, drained_reason=?
                    WHERE hostname=? RETURNING {_NODE_COLUMNS}""",
                params,
            )
            return next((_node_from_row(None, r) for r in rows), None)

        return await self._write(op)

    async def get_node(self, hostname: str) -> NodeRecord | None:
        rows = await self._fetch(f"SELECT {_NODE_COLUMNS} FROM nodes WHERE hostname=?", (hostname,), _node_from_row)
        return rows[0] if rows else None

    async def list_nodes(self, *, online: bool | None = None) -> list[NodeRecord]:
        """All nodes by hostname; `online=True/False` filters."""
        if online is None:
            return await self._fetch(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY hostname", (), _node_from_row)
        return await self._fetch(
            f"SELECT {_NODE_COLUMNS} FROM nodes WHERE online=? ORDER BY hostname", (1 if online else 0,), _node_from_row
        )

    async def mark_nodes_offline(self, stale_before: float, now: float | None = None) -> list[tuple[str, list[int]]]:
        """Nodes online with `last_heartbeat < stale_before` go offline, and their
        assigning/running/paused tasks become `lost` — all in one transaction.

        Returns `[(hostname, [lost task ids...]), ...]` for the nodes that went
        offline by this call (sorted by hostname, ids ascending).
        """
        when = time.time() if now is None else now

        async def op(conn: aiosqlite.Connection) -> list[tuple[str, list[int]]]:
            rows = await conn.execute_fetchall(
                "UPDATE nodes SET online=0 WHERE online=1 AND last_heartbeat < ? RETURNING hostname",
                (stale_before,),
            )
            hosts = sorted(r[0] for r in rows)
            lost: dict[str, list[int]] = {h: [] for h in hosts}
            for chunk in _chunks(hosts):
                marks = ",".join("?" * len(chunk))
                rows = await conn.execute_fetchall(
                    f"""UPDATE tasks SET state='lost', finished_at=?, updated_at=?,
                               error='node ' || node || ' stopped heartbeating'
                        WHERE node IN ({marks}) AND state IN ({_HOLDING_SQL})
                        RETURNING id, node""",
                    (when, when, *chunk),
                )
                for task_id, node in rows:
                    lost[node].append(task_id)
            return [(h, sorted(lost[h])) for h in hosts]

        return await self._write(op, atomic=True)

    # ----------------------------------------------------------------- tasks: writes

    async def insert_tasks(self, tasks: Sequence[Task], now: float | None = None) -> None:
        """Insert new tasks, all or none (a duplicate id fails the whole call),
        with their dependencies (`Task.after`, `Task.after_any`) in the same
        transaction: a task is never stored without what it waits for."""
        if not tasks:
            return
        when = time.time() if now is None else now
        rows = [_task_params(t, when) for t in tasks]
        deps = [(t.id, int(d), "after") for t in tasks for d in t.after]
        deps += [(t.id, int(d), "after_any") for t in tasks for d in t.after_any if d not in t.after]

        async def op(conn: aiosqlite.Connection) -> None:
            cursor = await conn.executemany(
                f"INSERT INTO tasks ({_TASK_COLUMNS}, updated_at) VALUES ({','.join('?' * 27)})", rows
            )
            await cursor.close()
            if deps:
                cursor = await conn.executemany(
                    "INSERT INTO task_dependencies (task_id, depends_on, kind) VALUES (?, ?, ?)", deps
                )
                await cursor.close()

        await self._write(op, atomic=len(rows) > 1 or bool(deps))

    async def transition(
        self,
        task_id: int,
        new_state: TaskState,
        *,
        now: float,
        allowed_from: frozenset[TaskState] | None = None,
        **fields: Any,
    ) -> Task | None:
        """Move a task to `new_state` if it is in one of `allowed_from`
        (default: every state `models.TRANSITIONS` allows into `new_state`).

        Returns the updated task, or None if the task does not exist or the guard
        failed (e.g. a late `completed` after `killed`: the stored state stays).

        `fields` may set node, numa, gpus, assigned_at, started_at, finished_at,
        exit_code, error, output_error. Unless given: entering ASSIGNING sets assigned_at=now;
        entering RUNNING or PAUSED sets started_at=now if it was unset; entering
        a final state sets finished_at=now; entering a non-final state clears
        finished_at and output_error; leaving LOST clears the "stopped
        heartbeating" error.
        """
        new_state = TaskState(new_state)
        unknown = set(fields) - _TRANSITION_FIELDS
        if unknown:
            raise TypeError(f"transition() got unexpected fields: {', '.join(sorted(unknown))}")
        allowed = predecessors(new_state) if allowed_from is None else frozenset(TaskState(s) for s in allowed_from)
        if not allowed:
            return None

        sets: list[str] = ["state=?", "updated_at=?"]
        params: list[Any] = [str(new_state), now]
        for name in ("node", "numa", "exit_code"):
            if name in fields:
                sets.append(f"{name}=?")
                params.append(fields[name])
        if "gpus" in fields:
            sets.append("gpus_json=?")
            params.append(_dumps([int(g) for g in (fields["gpus"] or ())]))
        if "assigned_at" in fields:
            sets.append("assigned_at=?")
            params.append(fields["assigned_at"])
        elif new_state == TaskState.ASSIGNING:
            sets.append("assigned_at=?")
            params.append(now)
        if "started_at" in fields:
            sets.append("started_at=?")
            params.append(fields["started_at"])
        elif new_state in (TaskState.RUNNING, TaskState.PAUSED):
            sets.append("started_at=COALESCE(started_at, ?)")
            params.append(now)
        if "finished_at" in fields:
            sets.append("finished_at=?")
            params.append(fields["finished_at"])
        elif new_state in FINAL_STATES:
            sets.append("finished_at=?")
            params.append(now)
        else:
            sets.append("finished_at=NULL")
        if "output_error" in fields:
            sets.append("output_error=?")
            params.append(fields["output_error"])
        elif new_state not in FINAL_STATES:
            sets.append("output_error=NULL")
        if "error" in fields:
            sets.append("error=?")
            params.append(fields["error"])
        else:
            sets.append("error=CASE WHEN state='lost' THEN NULL ELSE error END")
        params.append(int(task_id))
        params.extend(str(s) for s in sorted(allowed))
        sql = (
            f"UPDATE tasks SET {', '.join(sets)} WHERE id=? AND state IN ({','.join('?' * len(allowed))}) "
            f"RETURNING {_TASK_COLUMNS}"
        )

        async def op(conn: aiosqlite.Connection) -> Task | None:
            rows = list(await conn.execute_fetchall(sql, params))
            return _task_from_row(None, rows[0]) if rows else None

        return await self._write(op)

    async def assign_many(
        self, placements: Iterable[tuple[int, str, int | None, Sequence[int]]], now: float
    ) -> list[int]:
        """pending -> assigning for many tasks in one transaction, each guarded.

        `placements` are `(task_id, node, numa, gpus)` (scheduler.Placement is
        one). Returns the ids actually moved, in the order given; a task that is
        no longer pending (killed meanwhile) is skipped.
        """
        seen: set[int] = set()
        rows: list[tuple[int, str, int | None, str]] = []
        for task_id, node, numa, gpus in placements:
            if task_id in seen:
                continue
            seen.add(task_id)
            rows.append((int(task_id), node, None if numa is None else int(numa), _dumps([int(g) for g in gpus])))
        if not rows:
            return []

        async def op(conn: aiosqlite.Connection) -> list[int]:
            moved: set[int] = set()
            for chunk in _chunks(rows, 250):
                values = ",".join(["(?,?,?,?)"] * len(chunk))
                params: list[Any] = [now, now]
                for row in chunk:
                    params.extend(row)
                result = await conn.execute_fetchall(
                    f"""UPDATE tasks SET state='assigning', node=v.column2, numa=v.column3, gpus_json=v.column4,
                               assigned_at=?, updated_at=?, finished_at=NULL
                        FROM (VALUES {values}) AS v
                        WHERE tasks.id = v.column1 AND tasks.state = 'pending'
                        RETURNING id""",
                    params,
                )
                moved.update(r[0] for r in result)
            return [r[0] for r in rows if r[0] in moved]

        return await self._write(op, atomic=True)

    # ----------------------------------------------------------------- tasks: reads

    async def get_task(self, task_id: int) -> Task | None:
        rows = await self._fetch(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id=?", (int(task_id),), _task_from_row)
        return rows[0] if rows else None

    async def get_tasks(self, ids: Iterable[int]) -> list[Task]:
        """The tasks with these ids, in the order asked; unknown ids are left out."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, Task] = {}
        for chunk in _chunks(wanted):
            for task in await self._fetch(
                f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
                _task_from_row,
            ):
                found[task.id] = task
        return [found[i] for i in wanted if i in found]

    async def list_tasks(
        self,
        states: Iterable[TaskState] | None = None,
        node: str | None = None,
        limit: int = 100,
        before_id: int | None = None,
        *,
        batch_id: int | None = None,
        owner: str | None = None,
        finished_since: float | None = None,
    ) -> list[Task]:
        """Newest first. Page with `before_id=<last id of the previous page>`.
        With `finished_since`, only tasks that finished at or after it."""
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = sorted({str(TaskState(s)) for s in states})
            if not wanted:
                return []
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if node is not None:
            where.append("node=?")
            params.append(node)
        if batch_id is not None:
            where.append("batch_id=?")
            params.append(int(batch_id))
        if owner is not None:
            where.append("owner=?")
            params.append(owner)
        if finished_since is not None:
            where.append("finished_at>=?")
            params.append(float(finished_since))
        if before_id is not None:
            where.append("id<?")
            params.append(int(before_id))
        limit = max(0, int(limit))
        params.append(limit)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks {clause}ORDER BY id DESC LIMIT ?", params, _task_from_row
        )

    async def usage(self, *, by: str = "user", since: float | None = None, owner: str | None = None) -> list[UsageRow]:
        """What final tasks used, summed by owner or by node, largest
        core-hours first: a task's hours are (finished - started) / 3600, its
        core-hours cores x hours, its GPU-hours its GPUs (the ids it held, or
        `gpu_count` if it holds none yet recorded) x hours. Only tasks that
        both started and finished count (one cancelled while pending used
        nothing). With `since`, only tasks that finished at or after it count,
        and only their time after it: a month's usage holds the part of a long
        task that ran in that month. With `owner`, only that user's tasks."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"usage by {by!r}")
        column = "owner" if by == "user" else "node"
        start = "started_at" if since is None else "MAX(started_at, ?)"
        params: list[Any] = [] if since is None else [float(since)]
        where = [f"state IN ({_FINAL_SQL})", "started_at IS NOT NULL", "finished_at IS NOT NULL"]
        if since is not None:
            where.append("finished_at >= ?")
            params.append(float(since))
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        # One aggregate over the rows; a clock step back (finished before
        # started) counts as no time, never as negative hours.
        sql = (
            f"SELECT {column}, COUNT(*), SUM(cores * h), SUM(g * h), SUM(h) FROM ("
            f" SELECT {column}, cores, MAX(json_array_length(gpus_json), gpu_count) AS g,"
            f" MAX(finished_at - {start}, 0) / 3600.0 AS h"
            f" FROM tasks WHERE {' AND '.join(where)})"
            f" GROUP BY {column} ORDER BY 3 DESC, 1"
        )
        return await self._fetch(
            sql, params, lambda _c, r: UsageRow(r[0], int(r[1]), float(r[2] or 0), float(r[3] or 0), float(r[4] or 0))
        )

    async def purge_final_tasks(self, finished_before: float, *, limit: int = 1000) -> list[int]:
        """Delete up to `limit` final tasks that finished before
        `finished_before`, oldest first, and their dependency rows; return
        their ids. Never a task that is not final, and never one that a task
        which is not final depends on (its waiter still reads it)."""

        async def op(conn: aiosqlite.Connection) -> list[int]:
            rows = await conn.execute_fetchall(
                f"""SELECT id FROM tasks
                    WHERE state IN ({_FINAL_SQL}) AND finished_at IS NOT NULL AND finished_at < ?
                      AND id NOT IN (
                        SELECT d.depends_on FROM task_dependencies d JOIN tasks w ON w.id = d.task_id
                        WHERE w.state NOT IN ({_FINAL_SQL}))
                    ORDER BY finished_at LIMIT ?""",
                (float(finished_before), max(0, int(limit))),
            )
            ids = [int(r[0]) for r in rows]
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                await conn.execute(
                    f"DELETE FROM task_dependencies WHERE task_id IN ({marks}) OR depends_on IN ({marks})",
                    (*chunk, *chunk),
                )
                # The state guard again: nothing that is not final goes, whatever happened since.
                await conn.execute(f"DELETE FROM tasks WHERE id IN ({marks}) AND state IN ({_FINAL_SQL})", tuple(chunk))
            return ids

        return await self._write(op, atomic=True)

    async def count_tasks_by_state(self) -> dict[TaskState, int]:
        """Every state with its count (0 included)."""
        rows = await self._fetch("SELECT state, COUNT(*) FROM tasks GROUP BY state", (), lambda _c, r: (r[0], r[1]))
        counts = {s: 0 for s in TaskState}
        for state, n in rows:
            counts[TaskState(state)] = n
        return counts

    async def load_pending(self) -> list[Task]:
        """Pending tasks, oldest (lowest id) first."""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state='pending' ORDER BY id", (), _task_from_row
        )

    async def dependencies_of(self, ids: Iterable[int]) -> dict[int, list[tuple[int, str]]]:
        """Each task's dependencies as (depends_on, kind), by depends_on;
        tasks without any are left out."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, list[tuple[int, str]]] = {}
        for chunk in _chunks(wanted):
            rows = await self._fetch(
                f"SELECT task_id, depends_on, kind FROM task_dependencies "
                f"WHERE task_id IN ({','.join('?' * len(chunk))}) ORDER BY task_id, depends_on",
                tuple(chunk),
                lambda _c, r: (r[0], r[1], r[2]),
            )
            for task_id, dep, kind in rows:
                found.setdefault(task_id, []).append((dep, kind))
        return found

    async def load_waiting_dependencies(self) -> list[tuple[int, int, str]]:
        """(task_id, depends_on, kind) of every pending task's dependencies:
        what `DependencyIndex` is rebuilt from at start."""
        return await self._fetch(
            "SELECT d.task_id, d.depends_on, d.kind FROM tasks t JOIN task_dependencies d ON d.task_id = t.id "
            "WHERE t.state='pending' ORDER BY d.task_id, d.depends_on",
            (),
            lambda _c, r: (r[0], r[1], r[2]),
        )

    async def task_states(self, ids: Iterable[int]) -> dict[int, TaskState]:
        """The state of each of these tasks that exists."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, TaskState] = {}
        for chunk in _chunks(wanted):
            rows = await self._fetch(
                f"SELECT id, state FROM tasks WHERE id IN ({','.join('?' * len(chunk))})",
                tuple(chunk),
                lambda _c, r: (r[0], r[1]),
            )
            found.update((task_id, TaskState(state)) for task_id, state in rows)
        return found

    async def load_holding(self) -> list[Task]:
        """Tasks that hold resources (assigning, running, paused), by id."""
        return await self._fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE state IN ({_HOLDING_SQL}) ORDER BY id", (), _task_from_row
        )


def _wrap_error(e: BaseException) -> BaseException:
    if isinstance(e, HakuRiverError):
        return e
    if isinstance(e, sqlite3.IntegrityError):
        return DatabaseError(f"database constraint failed: {e}", code="conflict", status=409)
    if isinstance(e, sqlite3.Error):
        return DatabaseError(f"database error: {e}")
    return e
