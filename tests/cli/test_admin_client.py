"""HostClient's user calls (what hakuriver.admin and the Ansible roles use) against a
real Host app on loopback: add, list, issue a token, remove."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp import web

from hakuriver.client import ApiError, HostClient
from hakuriver.config import config_from_dict
from hakuriver.host.app import create_app

ADMIN_TOKEN = "admin-token-for-the-admin-client-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_user_calls_reach_a_real_host(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    port = _free_port()
    config = config_from_dict(
        {
            "network": {"host_port": port},
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "database": {"db_file": str(tmp_path / "host.db")},
            "auth": {"admin_token": ADMIN_TOKEN, "runner_token": "runner-secret-for-the-test"},
        }
    )
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with HostClient(f"http://127.0.0.1:{port}", ADMIN_TOKEN) as host:
            added = await host.add_user("alice", unix_user="alice")
            assert added["user"]["name"] == "alice" and added["user"]["unix_user"] == "alice"
            boss = await host.add_user("boss", admin=True)
            assert boss["user"]["role"] == "admin"
            issued = await host.issue_token("alice")
            assert issued["token"] != added["token"] and issued["revoked_others"] is False
            listing = await host.list_users()
            assert [(u["name"], u["tokens"]) for u in listing["users"]] == [("alice", 2), ("boss", 1)]
            assert (await host.issue_token("alice", revoke_all=True))["revoked_others"] is True
            assert (await host.remove_user("alice"))["removed"] == "alice"
            with pytest.raises(ApiError) as gone:
                await host.issue_token("alice")
            assert gone.value.status == 404
        async with HostClient(f"http://127.0.0.1:{port}", issued["token"]) as host:
            with pytest.raises(ApiError) as refused:
                await host.list_users()
            assert refused.value.status == 401, "a removed user's token no longer works"
    finally:
        await runner.cleanup()
