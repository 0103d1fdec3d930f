"""`hakuriver.client login`: a lab member keeps the token an admin gave them.

The one step between "here is your token" and `hakuriver.task submit`. The
Host's address comes from the config the lookup finds, normally the
machine-wide `/etc/hakuriver/client.toml` the Ansible roles write (it holds no
secret). The token is read without echo (or from a file or stdin, for
scripts), checked against that Host (`/api/whoami`) so that a mistyped token is
never stored, and kept where `credentials` says: in the user's own
`~/.hakuriver/config.toml` when that is the config in use (only `auth.token`
changes), else in `~/.hakuriver/token` (dir 0700, file 0600), leaving the
address to the machine-wide file.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import Any

import toml

from ..errors import ConfigError, HakuRiverError
from .common import EXIT_OK, Connect, print_json
from .credentials import token_path, user_config_path


def add_login_parser(sub: Any, parents: list[Any]) -> None:
    p = sub.add_parser(
        "login",
        help="keep your API token in ~/.hakuriver (checked with the Host first)",
        description="Keep the API token your admin gave you (hakuriver.admin user add/token): in "
        "~/.hakuriver/token (mode 0600), or in auth.token of your own ~/.hakuriver/config.toml when that is "
        "the config in use. The Host is the one the config names (normally /etc/hakuriver/client.toml); the "
        "token is checked with it first, and a wrong one is not stored.",
        parents=parents,
    )
    p.add_argument(
        "--token-file", metavar="FILE", help="read the token from FILE ('-': standard input) instead of asking for it"
    )
    p.set_defaults(func=cmd_login)


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
    own = user_config_path()
    if Path(config.source).resolve() == own.resolve():
        # Their own config: keep every other setting, replace the token.
        try:
            data = toml.loads(own.read_text(encoding="utf-8"))
        except (OSError, toml.TomlDecodeError) as exc:
            raise ConfigError(f"cannot read {own}: {exc}") from None
        data["auth"] = {**data.get("auth", {}), "token": token}
        write_private_file(own, toml.dumps(data), overwrite=True)
        target = own
    else:
        target = token_path()
        write_private_file(target, token + "\n", overwrite=True)
    name = str(me.get("name", "?"))
    if args.json:
        print_json({"user": name, "host": config.host_url, "config": str(target)})
    else:
        print(f"logged in as {name} on {config.host_url}; your token is in {target} (mode 0600)")
    return EXIT_OK
