"""Where a lab member's own token lives: `~/.hakuriver/token`.

The machine-wide `/etc/hakuriver/client.toml` says where the Host is and
stays the admin's: a user's token is kept apart from it, in a file of its own
(mode 0600), so that a later change of the Host's address or TLS settings
reaches everyone. A user with their own `~/.hakuriver/config.toml` keeps the
token in its `auth.token` instead. The CLIs send, first found:
`$HAKURIVER_TOKEN`, the config's `auth.token`, its `auth.admin_token` (the
Host machine's own config), this file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ConfigError
from ..safefiles import UnsafeFile, open_dir, open_regular

TOKEN_FILE = "token"  # noqa: S105 - a file name, not a secret


def hakuriver_dir() -> Path:
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".hakuriver"


def user_config_path() -> Path:
    return hakuriver_dir() / "config.toml"


def token_path() -> Path:
    return hakuriver_dir() / TOKEN_FILE


def read_personal_token() -> str:
    """The token in `~/.hakuriver/token`, or "" when there is none.

    Opened without following links, only as a regular file of this user's
    that nobody else may read (as ssh treats a private key)."""
    where = token_path()
    try:
        dir_fd = open_dir(str(where.parent.parent), [where.parent.name])
    except FileNotFoundError:
        return ""
    except UnsafeFile as exc:
        raise ConfigError(f"{where.parent}: {exc.message}") from None
    try:
        try:
            fd = open_regular(dir_fd, TOKEN_FILE, os.O_RDONLY, owner=os.getuid())
        except FileNotFoundError:
            return ""
        except UnsafeFile as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
        with os.fdopen(fd, "r", encoding="utf-8") as fh:
            if stat.S_IMODE(os.fstat(fh.fileno()).st_mode) & 0o077:
                raise ConfigError(f"{where} can be read by others: chmod 600 {where}")
            return fh.read(4096).strip()
    finally:
        os.close(dir_fd)
