"""The Host's database: the one package that owns SQL.

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
* A batch runs in the database thread in one call (`store._run_batch_in_thread`),
  and so does each read (`Store._fetch`): an operation is an `async` function
  of the connection that awaits nothing else, so there it runs to its end at
  once, with no round trip through the event loop per statement.
* State changes are guarded updates (`... WHERE id=? AND state IN (...)`), so a
  late report can never overwrite a final state; see `transition`.
* Migrations are keyed on `PRAGMA user_version`. Each migration runs in its own
  explicit transaction that re-reads `user_version` after `BEGIN IMMEDIATE`,
  so two processes opening one file cannot both apply it. A file newer than
  this code is refused with `SchemaTooNew`, never downgraded.

Needs SQLite >= 3.35 (RETURNING, UPDATE ... FROM).

Layout
------
`schema` (migrations, column lists), `rows` (records and row <-> model),
`store` (connection, migrations, the writer), `heldrows` (the rows of
tasks that hold resources, kept in memory as the last write returned them,
so a runner's report reads nothing from the file), and one query mixin per
concept: `nodes`, `tasks`, `accounts` (users, tokens, environment owners),
`accounting` (usage, retention purge). `Database` combines the mixins; SQL
lives nowhere else in HakuRiver.
"""

from __future__ import annotations

from .accounting import AccountingQueries
from .accounts import AccountQueries
from .errors import DatabaseError, SchemaTooNew
from .nodes import NodeQueries
from .rows import USAGE_GROUPS, Drain, NodeRecord, UsageRow, UserRecord, target_from_stored
from .schema import MIGRATIONS, SCHEMA_VERSION
from .store import BUSY_TIMEOUT_MS, MAX_BATCH, MIN_SQLITE, PRIVATE_MODE
from .tasks import TaskQueries

__all__ = [
    "BUSY_TIMEOUT_MS",
    "MAX_BATCH",
    "MIGRATIONS",
    "MIN_SQLITE",
    "PRIVATE_MODE",
    "SCHEMA_VERSION",
    "USAGE_GROUPS",
    "Database",
    "DatabaseError",
    "Drain",
    "NodeRecord",
    "SchemaTooNew",
    "UsageRow",
    "UserRecord",
    "target_from_stored",
]


class Database(NodeQueries, TaskQueries, AccountQueries, AccountingQueries):
    """The Host's store: every query of every concept on one connection and
    one writer. Create with `await Database.open(path)`; `await close()` at
    shutdown."""
