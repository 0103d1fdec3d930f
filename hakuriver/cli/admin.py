"""`hakuriver.admin`: what only an admin may do: users, their tokens, nodes.

hakuriver.admin user add alice --unix-user alice     # prints alice's token, once
hakuriver.admin user add bob --admin
hakuriver.admin user list
hakuriver.admin user token alice --revoke-all        # a new token; the old ones stop working
hakuriver.admin user remove alice
hakuriver.admin node forget node3                    # free a node name for a new runner
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..parsing import validate_node_name
from .common import (
    EXIT_CODES_EPILOG,
    EXIT_OK,
    CliParser,
    Connect,
    common_options,
    execute,
    format_time,
    print_json,
    table,
)

PROG = "hakuriver.admin"

ADVICE = "This token is shown only once. Give it to the user; they put it in $HAKURIVER_TOKEN or auth.token."


def build_parser() -> argparse.ArgumentParser:
    """The full parser. Pure: reads no config, environment, network or files."""
    parser = CliParser(
        prog=PROG,
        description="Manage HakuRiver users, their API tokens, and nodes. Needs an admin token "
        "(auth.admin_token on the Host machine, or a user added with --admin).",
        epilog=EXIT_CODES_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common_options()],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parents: list[Any] = [common_options(subcommand=True)]

    user = sub.add_parser("user", help="add, list and remove users; issue tokens", description="Manage users.")
    users = user.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    p = users.add_parser(
        "add",
        help="add a user and print their first token",
        description="Add a user and print their API token (shown only this once).",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME", help="the user name (a-z, 0-9, _ . -)")
    p.add_argument("--admin", action="store_true", help="make the user an admin")
    p.add_argument(
        "--unix-user",
        metavar="USER",
        help="the Unix account the user's tasks run as on every node (files they write belong to it)",
    )
    p.set_defaults(func=_cmd_user_add)

    p = users.add_parser(
        "list", help="list users", description="List users, their roles and accounts.", parents=parents
    )
    p.set_defaults(func=_cmd_user_list)

    p = users.add_parser(
        "remove",
        help="remove a user and revoke their tokens",
        description="Remove a user and revoke all their tokens. Their tasks keep their records.",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME")
    p.set_defaults(func=_cmd_user_remove)

    p = users.add_parser(
        "token",
        help="issue a new token for a user",
        description="Issue a new API token for a user and print it (shown only this once).",
        parents=parents,
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--revoke-all", action="store_true", help="revoke every other token of this user")
    p.set_defaults(func=_cmd_user_token)

    node = sub.add_parser("node", help="manage nodes", description="Manage nodes.")
    nodes = node.add_subparsers(dest="node_command", metavar="ACTION", required=True)
    p = nodes.add_parser(
        "forget",
        help="forget a node and the runner bound to its name",
        description="Forget a node and the runner identity bound to its name, so another runner may "
        "register under it (a replaced or reinstalled machine). Refused while tasks hold resources there.",
        parents=parents,
    )
    p.add_argument("name", type=validate_node_name, metavar="NAME")
    p.set_defaults(func=_cmd_node_forget)
    return parser


def _print_token(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    print(result["token"])
    print(ADVICE, file=sys.stderr)


async def _cmd_user_add(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.add_user(args.name, admin=args.admin, unix_user=args.unix_user)
    _print_token(result, args.json)
    return EXIT_OK


async def _cmd_user_list(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.list_users()
    if args.json:
        print_json(result)
    elif not result["users"]:
        print("no users yet (add one with 'hakuriver.admin user add NAME')", file=sys.stderr)
    else:
        rows = [
            (u["name"], u["role"], u["unix_user"] or "-", u["tokens"], format_time(u["created_at"]))
            for u in result["users"]
        ]
        print(table(("USER", "ROLE", "UNIX USER", "TOKENS", "CREATED"), rows))
    return EXIT_OK


async def _cmd_user_remove(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.remove_user(args.name)
    if args.json:
        print_json(result)
    else:
        print(f"removed {result['removed']}; their tokens no longer work")
    return EXIT_OK


async def _cmd_user_token(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.issue_token(args.name, revoke_all=args.revoke_all)
    _print_token(result, args.json)
    return EXIT_OK


async def _cmd_node_forget(args: argparse.Namespace, connect: Connect) -> int:
    async with connect() as host:
        result = await host.forget_node(args.name)
    if args.json:
        print_json(result)
    else:
        print(f"forgot {result['forgotten']}; the next runner to register under that name is bound to it")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    return execute(build_parser(), argv)


def run() -> None:
    sys.exit(main())
