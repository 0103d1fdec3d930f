"""`GET /api/usage` and `hakuriver.admin usage` against a real Host (in its own
thread): a history of final tasks with known start and end times is written to
the database before the Host starts; the sums come back by user and by node,
with --since, and a user sees only their own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import toml

from hakuriver.cli import admin as admin_cli
from hakuriver.host.db import Database
from tests.host.test_usage import HISTORY, T0, H

from .cluster import ThreadedCluster


def _config(tmp_path: Path, cluster: ThreadedCluster, token: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    data = {"network": {"host_port": int(cluster.url.rsplit(":", 1)[1])}, "auth": {"token": token}}
    path.write_text(toml.dumps(data))
    return path


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


async def _write_history(path: Path) -> None:
    db = await Database.open(path)
    try:
        # The running task of HISTORY would be judged by the Host at start-up
        # (its node is unknown): only final ones here.
        await db.insert_tasks([t for t in HISTORY if t.state.is_final])
    finally:
        await db.close()


@pytest.fixture
def history_cluster(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    root = tmp_path_factory.mktemp("usage")
    monkeypatch.setenv("HOME", str(root / "home"))
    c = ThreadedCluster(root)
    try:
        asyncio.run(_write_history(c.inner.db_file))
        c.start_host()
        yield c
    finally:
        c.close()


def test_usage_tables_and_json(history_cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    cluster = history_cluster
    admin = _config(tmp_path, cluster, cluster.token, "admin")

    def run(config: Path, *argv: str) -> int:
        return admin_cli.main(["--config", str(config), *argv])

    assert run(admin, "usage") == 0
    out, _ = capsys.readouterr()
    lines = [line.split() for line in out.splitlines()]
    assert lines == [
        ["USER", "TASKS", "HOURS", "CORE-HOURS", "GPU-HOURS"],
        ["bob", "2", "3.50", "24.50", "0.50"],
        ["alice", "2", "3.00", "10.00", "2.00"],
        ["TOTAL", "4", "6.50", "34.50", "2.50"],
    ]

    assert run(admin, "usage", "--by", "node", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["by"] == "node" and result["since"] is None
    assert {r["name"]: (r["tasks"], r["core_hours"], r["gpu_hours"]) for r in result["rows"]} == {
        "n1": (2, 32.0, 0.0),
        "n2": (2, 2.5, 2.5),
    }

    # --since as epoch seconds (the ISO and relative forms are parse_since's tests).
    assert run(admin, "usage", "--since", str(int(T0 + H)), "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["since"] == T0 + H
    assert {r["name"]: r["core_hours"] for r in result["rows"]} == {"alice": 6.0, "bob": 24.5}
    assert run(admin, "usage", "--since", "1d") == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("no finished tasks since ")

    # A user sees only their own; naming someone else is refused in one line.
    assert run(admin, "user", "add", "alice", "--json") == 0
    alice = _config(tmp_path, cluster, json.loads(capsys.readouterr().out)["token"], "alice")
    assert run(alice, "usage", "--by", "node", "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["user"] == "alice"
    assert {r["name"]: r["core_hours"] for r in result["rows"]} == {"n1": 8.0, "n2": 2.0}
    assert run(alice, "usage", "--user", "bob") != 0
    assert "only your own usage" in one_error_line(capsys.readouterr().err)

    # Bad input: one line, exit 2, nothing sent.
    assert run(admin, "usage", "--since", "yesterday") == 2
    err = one_error_line(capsys.readouterr().err)
    assert err.startswith("hakuriver.admin: error: argument --since: invalid date 'yesterday'"), err
    assert run(admin, "usage", "--by", "gpu") == 2
    assert "invalid choice" in one_error_line(capsys.readouterr().err)


def test_the_api_refuses_bad_query_values(history_cluster: ThreadedCluster) -> None:
    status, body = history_cluster.api("GET", "/api/usage?by=owner")
    assert status == 400 and "'by' must be one of user, node" in body["error"]["message"], body
    status, body = history_cluster.api("GET", "/api/usage?since=soon")
    assert status == 400 and "invalid date 'soon'" in body["error"]["message"], body
    status, body = history_cluster.api("GET", "/api/usage?since=2026-11-01")
    assert status == 200 and body["rows"] == [], body
    status, _ = history_cluster.api("POST", "/api/usage")
    assert status == 405
