"""Backups of the Host database: an online snapshot, and the offline restore.

Everything here is synchronous and touches files: the Host runs `take_snapshot`
in a worker thread (`asyncio.to_thread`), never in its event loop; `restore`
runs in `hakuriver.host --restore`, with the Host stopped.

Snapshot (`GET /api/backup`, `hakuriver.admin backup`)
-----------------------------------------------------
* A second, read-only use of the database file through SQLite's online backup
  API (`sqlite3.Connection.backup`), in steps of `STEP_PAGES` pages. The source
  connection first opens a read transaction, so every step copies from one
  WAL snapshot: the copy is the database as it was at one instant (every write
  acknowledged before the backup started is in it), and a write committed
  meanwhile does not restart the copy. In WAL mode a reader never blocks the
  Host's writer, so submissions, heartbeats and reports go on while it runs.
* The copy is a private temporary file next to the database (mode 0600, in the
  database's own directory, `.NAME.backup-*.tmp`), switched to a rollback
  journal (one self-contained file), checked with `PRAGMA integrity_check`,
  and hashed; only then is it handed out. It is removed when the answer ends.
  While in use it holds an `flock`; a copy left by a Host killed mid-backup
  holds none, and the next backup removes it (`remove_stale_snapshots`).
* The copy holds what the database holds: users' token hashes and every
  task's environment values. Whoever keeps backups keeps them private.

Restore (`hakuriver.host --restore PATH`)
-----------------------------------------
`restore` checks the backup (SQLite's header, `quick_check`, a HakuRiver schema
no newer than this code), refuses while anything has the current database
open (the Host: SQLite's own locks on the file and its -shm say so), keeps the
current database and its -wal/-shm aside, unchanged, as
`NAME.before-restore-<UTC time>` (never deleted), and installs a checked copy
of the backup atomically (rename), 0600, owned like the file it replaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import stat
import tempfile
import time
from dataclasses import dataclass
from urllib.parse import quote

from ..errors import Conflict
from .db import SCHEMA_VERSION, DatabaseError

SQLITE_HEADER = b"SQLite format 3\x00"
STEP_PAGES = 1024
"""Pages copied per backup step (4 MiB with SQLite's default page size)."""
PRIVATE_MODE = 0o600
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_READ_CHUNK = 1 << 20
BUSY_TIMEOUT_MS = 10_000


class BackupError(DatabaseError):
    """A backup could not be made, or a file is not a usable backup."""

    code = "backup"
    status = 503


class NotABackup(BackupError):
    """The file is not a HakuRiver Host database this code can use."""

    code = "invalid_backup"
    status = 400


class DatabaseInUse(BackupError, Conflict):
    """Something (the Host) has the database open."""

    code = "database_in_use"
    status = 409


# --------------------------------------------------------------------------- snapshot


def _temp_prefix(db_path: str) -> str:
    return f".{os.path.basename(db_path)}.backup-"


@dataclass
class Snapshot:
    """A checked, private copy of the database. `close()` removes it."""

    path: str
    size: int
    sha256: str
    schema_version: int
    _fd: int
    """Open on `path`, holding its flock: a live snapshot is never taken for stale."""

    def read(self, offset: int, size: int) -> bytes:
        """Up to `size` bytes of the copy from `offset` (empty at the end)."""
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = -1


def remove_stale_snapshots(db_path: str) -> list[str]:
    """Remove the copies (and their journals) that a Host killed during a backup
    left in the database's directory; never one a live backup holds. Only
    regular files named like our copies are touched, and never followed."""
    directory = os.path.dirname(os.path.abspath(db_path))
    prefix = _temp_prefix(db_path)
    removed: list[str] = []
    try:
        names = [e.name for e in os.scandir(directory) if e.name.startswith(prefix)]
    except OSError:
        return removed
    bases = {n for n in names if n.endswith(".tmp")}
    for base in sorted(bases):
        path = os.path.join(directory, base)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if not os.path.samestat(os.fstat(fd), os.lstat(path)):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a backup in progress
            for side in ("", *SIDE_SUFFIXES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path + side)
                    removed.append(path + side)
        finally:
            os.close(fd)
    # Journals whose copy is gone.
    for name in names:
        for suffix in SIDE_SUFFIXES:
            if name.endswith(".tmp" + suffix) and name[: -len(suffix)] not in bases:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed.append(os.path.join(directory, name))
    return removed


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    return conn


def _check_copy(conn: sqlite3.Connection, what: str, *, full: bool) -> int:
    """Integrity and schema of an open copy; its schema version."""
    pragma = "integrity_check(1)" if full else "quick_check(1)"
    try:
        rows = conn.execute(f"PRAGMA {pragma}").fetchall()
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        has_tasks = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='tasks'").fetchone()
    except sqlite3.DatabaseError as e:
        raise NotABackup(f"{what} is damaged ({e})") from None
    verdict = str(rows[0][0]) if rows else "no answer"
    if verdict != "ok":
        raise NotABackup(f"{what} is damaged: it failed its integrity check ({verdict})")
    if version > SCHEMA_VERSION:
        raise NotABackup(
            f"{what} has schema version {version}, newer than this HakuRiver understands ({SCHEMA_VERSION}); "
            "upgrade HakuRiver first"
        )
    if version < 1 or not has_tasks:
        raise NotABackup(f"{what} is an SQLite database, but not a HakuRiver Host's (no schema version, no tasks)")
    return version


def _sha256_fd(fd: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size, offset = 0, 0
    while chunk := os.pread(fd, _READ_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def take_snapshot(db_path: str, *, step_pages: int = STEP_PAGES) -> Snapshot:
    """A consistent, checked, private copy of the database at `db_path` while
    the Host keeps using it. Blocking: run it in a worker thread."""
    if db_path == ":memory:":
        raise Conflict("this Host keeps its database in memory (database.db_file): there is no file to back up")
    remove_stale_snapshots(db_path)
    directory = os.path.dirname(os.path.abspath(db_path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(db_path), suffix=".tmp", dir=directory)
    except OSError as e:
        raise BackupError(f"cannot make a backup copy in {directory}: {e.strerror or e}") from None
    snapshot: Snapshot | None = None
    try:
        os.fchmod(fd, PRIVATE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        src = dst = None
        try:
            src = _connect(db_path)
            dst = _connect(tmp)
            # One read transaction around every step: one snapshot for the whole copy.
            src.execute("BEGIN")
            src.execute("SELECT count(*) FROM sqlite_master").fetchone()
            src.backup(dst, pages=step_pages)
            src.execute("COMMIT")
            src.close()
            src = None
            # A self-contained file: no -wal beside it, whatever the source's mode.
            dst.execute("PRAGMA journal_mode=DELETE").fetchall()
            version = _check_copy(dst, "the backup copy", full=True)
            dst.close()
            dst = None
        except sqlite3.Error as e:
            raise BackupError(f"cannot back up {db_path}: {e}") from None
        finally:
            # Close SQLite's descriptors before ours: closing any descriptor of
            # a file drops this process's POSIX locks on it, SQLite's included.
            for conn in (src, dst):
                if conn is not None:
                    conn.close()
        os.fsync(fd)
        size, digest = _sha256_fd(fd)
        snapshot = Snapshot(path=tmp, size=size, sha256=digest, schema_version=version, _fd=fd)
        return snapshot
    except OSError as e:
        raise BackupError(f"cannot back up {db_path}: {e.strerror or e}") from None
    finally:
        if snapshot is None:
            for side in ("", *SIDE_SUFFIXES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp + side)
            os.close(fd)


# --------------------------------------------------------------------------- restore


def check_backup_file(path: str) -> int:
    """Check a backup in place (header, quick_check, schema); its schema version.
    Opens the file read-only and never writes next to it."""
    _check_header(path)
    try:
        conn = sqlite3.connect(f"file:{_uri_path(path)}?mode=ro&immutable=1", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        raise NotABackup(f"cannot open {path}: {e}") from None
    try:
        return _check_copy(conn, path, full=False)
    finally:
        conn.close()


def _uri_path(path: str) -> str:
    return quote(os.path.abspath(path))


def _check_header(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise NotABackup(f"cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotABackup(f"{path} is not a regular file")
        header = os.pread(fd, len(SQLITE_HEADER), 0)
    finally:
        os.close(fd)
    if header != SQLITE_HEADER:
        raise NotABackup(f"{path} is not an SQLite database (no SQLite header)")


@dataclass(frozen=True)
class RestoreResult:
    db_path: str
    backup_path: str
    schema_version: int
    tasks: int
    users: int
    kept_aside: str | None
    """Where the database it replaced now is (None: there was none)."""

    def summary(self) -> str:
        aside = f"; the previous database is kept as {self.kept_aside}" if self.kept_aside else ""
        return (
            f"restored {self.db_path} from {self.backup_path} (schema version {self.schema_version}, "
            f"{self.tasks} tasks, {self.users} users){aside}; start the Host now"
        )


def _copy_into(src_path: str, fd: int) -> None:
    src = os.open(src_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while chunk := os.read(src, _READ_CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
    finally:
        os.close(src)
    os.fsync(fd)


def _aside_name(db_path: str, now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = f"{db_path}.before-restore-{stamp}"
    candidate, n = base, 1
    while any(os.path.lexists(candidate + s) for s in ("", *SIDE_SUFFIXES)):
        candidate, n = f"{base}.{n}", n + 1
    return candidate


# SQLite's lock bytes (https://www.sqlite.org/lockingv3.html, walformat.html):
# every connection to a WAL database holds a read lock on the database file's
# SHARED range and on the DMS byte of its -shm for as long as it is open.
_DB_LOCK_RANGE = (0x40000000, 512)
"""PENDING, RESERVED and the SHARED range of the database file."""
_SHM_LOCK_RANGE = (120, 16)
"""The WAL-index locks and the DMS byte of the -shm file."""


def _locked(path: str, start: int, length: int) -> bool:
    """Whether some process holds a POSIX lock on that range of `path` (probed
    with a non-blocking write lock, dropped at once; the file is not changed)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start, os.SEEK_SET)
        except OSError:
            return True
        fcntl.lockf(fd, fcntl.LOCK_UN, length, start, os.SEEK_SET)
        return False
    finally:
        os.close(fd)


def refuse_if_in_use(db_path: str) -> None:
    """Raise `DatabaseInUse` if any process (the Host) has the database open.

    The check is made once: the Host must stay stopped until the restore is done."""
    if _locked(db_path, *_DB_LOCK_RANGE) or _locked(db_path + "-shm", *_SHM_LOCK_RANGE):
        raise DatabaseInUse(
            f"{db_path} is in use (the Host is running on it?): stop it first (systemctl stop hakuriver-host)"
        )


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(db_path: str, backup_path: str, *, now: float | None = None) -> RestoreResult:
    """Install the backup at `backup_path` as the database at `db_path` (offline)."""
    db_path = os.path.abspath(db_path)
    directory = os.path.dirname(db_path)
    if not os.path.isdir(directory):
        raise BackupError(f"cannot restore into {db_path}: directory {directory} does not exist")
    _check_header(backup_path)
    try:
        if os.path.exists(db_path) and os.path.samefile(db_path, backup_path):
            raise NotABackup(f"{backup_path} is the database itself")
        ref = os.stat(db_path) if os.path.exists(db_path) else os.stat(directory)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(db_path)}.restore-", suffix=".tmp", dir=directory)
    except OSError as e:
        raise BackupError(f"cannot restore {db_path}: {e.strerror or e}") from None
    installed = False
    try:
        os.fchmod(fd, PRIVATE_MODE)
        _copy_into(backup_path, fd)
        # Check the copy we install, not the file the caller named (it could change after).
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE").fetchall()
                version = _check_copy(conn, backup_path, full=False)
                tasks = int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
                users = int(conn.execute("SELECT count(*) FROM users").fetchone()[0]) if version >= 2 else 0
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise NotABackup(f"{backup_path} is damaged ({e})") from None
        if os.geteuid() == 0 and (ref.st_uid, ref.st_gid) != (0, 0):
            os.fchown(fd, ref.st_uid, ref.st_gid)
        refuse_if_in_use(db_path)
        aside = None
        if any(os.path.lexists(db_path + s) for s in ("", *SIDE_SUFFIXES)):
            # As they are, -wal and all: together they are the whole database
            # (a damaged one is kept exactly as it was found).
            aside = _aside_name(db_path, time.time() if now is None else now)
            for suffix in ("", *SIDE_SUFFIXES):
                with contextlib.suppress(FileNotFoundError):
                    os.rename(db_path + suffix, aside + suffix)
        os.replace(tmp, db_path)
        installed = True
        _fsync_dir(directory)
        return RestoreResult(db_path, os.path.abspath(backup_path), version, tasks, users, aside)
    except OSError as e:
        raise BackupError(f"cannot restore {db_path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
        if not installed:
            for side in ("", *SIDE_SUFFIXES):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp + side)


__all__ = [
    "BackupError",
    "DatabaseInUse",
    "NotABackup",
    "RestoreResult",
    "Snapshot",
    "check_backup_file",
    "remove_stale_snapshots",
    "restore",
    "take_snapshot",
]
