"""The schema: the migrations, keyed on `PRAGMA user_version`, and the
column lists every query of the package selects."""

from __future__ import annotations

import sqlite3

from ...models import (
    FINAL_STATES,
    HOLDING_STATES,
)
from .errors import DatabaseError

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
    # 11: retries (`--retries`, `--retry-on-exit`; host/retries.py). A task's
    # allowed retries and its current attempt (1-based) on its row, and one
    # row per earlier attempt that ended and was retried: where it ran and how
    # it ended. The task's own row keeps its current (or last) attempt.
    """
    ALTER TABLE tasks ADD COLUMN retries INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN retry_on_exit INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1;
    CREATE TABLE task_attempts (
        task_id     INTEGER NOT NULL REFERENCES tasks(id),
        attempt     INTEGER NOT NULL,
        node        TEXT,
        started_at  REAL,
        finished_at REAL,
        state       TEXT NOT NULL,
        exit_code   INTEGER,
        error       TEXT,
        PRIMARY KEY (task_id, attempt)
    ) WITHOUT ROWID;
    CREATE INDEX task_attempts_finished ON task_attempts(finished_at);
    """,
    # 12: a task's priority (`--priority`, policy.PRIORITY_MIN..PRIORITY_MAX,
    # higher first; 0 for every task from before priorities). The fair-share
    # rebuild at Host start reads final tasks by finished_at (migration 9).
    """
    ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
    """,
)
"""Migration N (1-based) is MIGRATIONS[N-1]. Append only; never edit a released one."""

SCHEMA_VERSION = len(MIGRATIONS)

_TASK_COLUMNS = (
    "id, batch_id, state, command_json, cores, memory, container, env_json, mounts_json, "
    "privileged, target, gpu_count, node, numa, gpus_json, submitted_at, assigned_at, "
    "started_at, finished_at, exit_code, error, owner, output_error, time_limit, "
    "array_index, array_max_running, retries, retry_on_exit, attempt, priority"
)
_NODE_COLUMNS = (
    "hostname, url, cores, memory, numa_json, gpus_json, online, registered_at, last_heartbeat, stats_json, "
    "identity_hash, order_token, capabilities_json, drained_at, drained_by, drained_reason"
)
_HOLDING_SQL = ",".join(f"'{s}'" for s in sorted(HOLDING_STATES))
_ATTEMPT_COLUMNS = "attempt, node, started_at, finished_at, state, exit_code, error"
_FINAL_SQL = ",".join(f"'{s}'" for s in sorted(FINAL_STATES))


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
