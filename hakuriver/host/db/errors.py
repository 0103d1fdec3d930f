"""What the database raises, and how SQLite's own errors become ours."""

from __future__ import annotations

import sqlite3

from ...errors import HakuRiverError


class DatabaseError(HakuRiverError):
    """The Host database cannot be opened or used."""

    code = "database"


class SchemaTooNew(DatabaseError):
    """The file was written by a newer HakuRiver; refusing to touch it."""


def _wrap_error(e: BaseException) -> BaseException:
    if isinstance(e, HakuRiverError):
        return e
    if isinstance(e, sqlite3.IntegrityError):
        return DatabaseError(f"database constraint failed: {e}", code="conflict", status=409)
    if isinstance(e, sqlite3.Error):
        return DatabaseError(f"database error: {e}")
    return e
