"""HostClient's user administration calls send their bodies (hakuriver.admin user add/token)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from hakuriver.client import HostClient


async def test_add_user_and_issue_token_send_json_bodies(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[str, str, Any]] = []

    async def send(
        self: HostClient,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        sent.append((method, path, body))
        return 201, {}, b'{"token": "hkr_x"}'

    monkeypatch.setattr(HostClient, "_send", send)
    async with HostClient("http://127.0.0.1:9", "t" * 20) as host:
        assert (await host.add_user("alice", unix_user="alice"))["token"] == "hkr_x"
        await host.add_user("boss", admin=True)
        await host.issue_token("alice", revoke_all=True)
    assert sent == [
        ("POST", "/api/users", {"name": "alice", "admin": False, "unix_user": "alice"}),
        ("POST", "/api/users", {"name": "boss", "admin": True}),
        ("POST", "/api/users/alice/tokens", {"revoke_all": True}),
    ]
