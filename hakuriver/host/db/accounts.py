"""SQL for users, their token hashes and environment owners (the policy
is in `host/accounts.py`)."""

from __future__ import annotations

from collections.abc import Mapping

import aiosqlite

from .rows import _LIMIT_COLUMNS, UserRecord, _user_from_row
from .store import Store


class AccountQueries(Store):
    """Users, token hashes and environment owners (mixed into `Database`)."""

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
