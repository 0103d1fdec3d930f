"""`hakuriver.client login`: a lab member keeps the token an admin gave them.

The one step between "here is your token" and `hakuriver.task submit`. The
Host's address comes from the config the lookup finds, normally the
machine-wide `/etc/hakuriver/client.toml` the Ansible roles write (it holds no
secret). The token is read without echo (or from a file or stdin, for
scripts), checked against the Host (`/api/whoami`) so that a mistyped token is
never stored, and written to `~/.hakuriver/config.toml` (dir 0700, file 0600)
together with the base config's settings. An existing personal config keeps
its other settings; only `auth.token` changes.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path
from typing import Any

import toml

from ..errors import ConfigError, HakuRiverError
from .common import EXIT_OK, Connect, print_json


def add_login_parser(sub: Any, parents: list[Any]) -> None:
    p = sub.add_parser(
        "login",
        help="store your API token in ~/.hakuriver/config.toml (checked with the Host first)",
        description="Store the API token your admin gave you (hakuriver.admin user add/token) in "
        "~/.hakuriver/config.toml, with the Host's address from the config the lookup finds (normally "
        "/etc/hakuriver/client.toml). The token is checked with the Host first; a wrong one is not stored.",
        parents=parents,
    )
    p.add_argument(
        "--token-file", metavar="FILE", help="read the token from FILE ('-': standard input) instead of asking for it"
    )
    p.set_defaults(func=cmd_login)


def user_config_path() -> Path:
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".hakuriver" / "config.toml"


def read_token(token_file: str | None) -> str:
    if token_file == "-":  # noqa: S105 - '-' names standard input, not a secret
        text = sys.stdin.readline()
    elif token_file:
        try:
            text = Path(token_file).expanduser().read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {token_file}: {exc.strerror or exc}") from None
    elif sys.stdin.isatty():
        text = getpass.getpass("HakuRiver token: ")
    else:
        text = sys.stdin.readline()
    token = text.strip()
    if not token:
        raise ConfigError("no token given: paste the token your admin gave you (hakuriver.admin user add/token)")
    if len(token.split()) != 1:
        raise ConfigError("a token has no whitespace inside; check what you pasted")
    return token


def merged_config(base: dict[str, Any], token: str) -> dict[str, Any]:
    """`base` with `auth.token` set and no other secret kept: a machine's admin
    or runner credential never lands in a user's file."""
    data = {section: dict(values) for section, values in base.items() if isinstance(values, dict)}
    data["auth"] = {"token": token}
    return data


async def cmd_login(args: argparse.Namespace, connect: Connect) -> int:
    from ..client import HostClient
    from ..config import load_config
    from ..deploy.configfile import write_private_file
    from ..tls import client_context

    config = load_config(args.config, client=True)
    if config.source is None:
        raise ConfigError(
            "no config with the Host's address (/etc/hakuriver/client.toml is missing): ask your admin for it, "
            "or run 'hakuriver.init config --client --host-address HOST'"
        )
    token = read_token(args.token_file)
    try:
        async with HostClient(config.host_url, token, ssl_context=client_context(config.tls)) as host:
            me = await host.whoami()
    except HakuRiverError as exc:
        if exc.status == 401:
            raise ConfigError(
                f"the Host at {config.host_url} does not know this token ({exc.message}); nothing was stored"
            ) from None
        raise
    target = user_config_path()
    try:
        base = toml.loads(Path(config.source).read_text(encoding="utf-8"))
    except (OSError, toml.TomlDecodeError) as exc:
        raise ConfigError(f"cannot read {config.source}: {exc}") from None
    if Path(config.source).resolve() != target.resolve() and target.exists():
        # Keep the user's own settings; the config that gave the address
        # only supplies what their file lacks.
        try:
            own = toml.loads(target.read_text(encoding="utf-8"))
        except (OSError, toml.TomlDecodeError) as exc:
            raise ConfigError(f"cannot read {target}: {exc}") from None
        base = {**base, **own}
    write_private_file(target, toml.dumps(merged_config(base, token)), overwrite=True)
    name = str(me.get("name", "?"))
    if args.json:
        print_json({"user": name, "host": config.host_url, "config": str(target)})
    else:
        print(f"logged in as {name} on {config.host_url}; your token is in {target} (mode 0600)")
    return EXIT_OK
