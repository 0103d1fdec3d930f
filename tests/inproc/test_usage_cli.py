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
from hakuriver.cli import task as task_cli
from hakuriver.cli.common import format_time
from hakuriver.host.db import Database
from tests.host.test_usage import HISTORY, T0, H

from .cluster import ThreadedCluster


def _config(tmp_path: Path, cluster: ThreadedCluster, token: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    data = {"network": {"host_port": int(cluster.url.rsplit(":", 1)[1])}, "auth": {"token": token}}
    path.write_text(toml.dumps(data))
    return path


def columns(out: str) -> list[dict[str, str]]:
    """A `table` read back by its header's column starts (cells may hold spaces);
    the first row maps each header to itself."""
    lines = out.splitlines()
    starts = [i for i, ch in enumerate(lines[0]) if ch != " " and (i == 0 or lines[0][i - 1] == " ")]
    names = lines[0].split()
    bounds = list(zip(starts, starts[1:] + [None], strict=True))
    return [{n: line[a:b].strip() for n, (a, b) in zip(names, bounds, strict=True)} for line in lines]


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


def test_history_lists_final_tasks_newest_first(history_cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    cluster = history_cluster
    admin = _config(tmp_path, cluster, cluster.token, "admin")
    # A running task is not history (yet).
    cluster.add_runner("a")
    status, running = cluster.api("POST", "/api/tasks", {"command": ["fake", "hang"]})
    assert status == 201, running
    cluster.wait_state(running["task_ids"][0], "running")

    def run(*argv: str) -> int:
        return task_cli.main(["--config", str(admin), "history", *argv])

    assert run() == 0
    out, _ = capsys.readouterr()
    rows = columns(out)
    assert list(rows[0]) == ["ID", "USER", "NODE", "CORES", "MEM", "GPUS", "START", "END", "DURATION", "STATE", "EXIT"]
    # Newest first.
    wanted = ("ID", "USER", "NODE", "CORES", "GPUS", "DURATION", "STATE", "EXIT")
    assert [tuple(r[k] for k in wanted) for r in rows[1:]] == [
        ("6", "bob", "-", "16", "-", "-", "cancelled", "-"),
        ("4", "bob", "n1", "8", "-", "3h", "timeout", "-"),
        ("3", "bob", "n2", "1", "1", "30m", "killed", "-"),
        ("2", "alice", "n2", "2", "2", "1h", "failed", "-"),
        ("1", "alice", "n1", "4", "-", "2h", "completed", "-"),
    ]
    assert rows[5]["START"] == format_time(T0) and rows[5]["END"] == format_time(T0 + 2 * H)
    assert run("--user", "alice", "--since", str(int(T0 + 5 * H)), "--json") == 0
    assert [t["task_id"] for t in json.loads(capsys.readouterr().out)["tasks"]] == ["2"]

    # Paged like list.
    assert run("--limit", "2") == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["6", "4"]
    assert "history --before 4" in err
    assert run("--limit", "2", "--before", "4") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["3", "2"]

    assert run("--since", "1d") == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("no final tasks since ")
    assert run("--since", "last week") == 2
    assert "invalid date 'last week'" in one_error_line(capsys.readouterr().err)
    assert run("--user", "Not A Name") != 0
    assert "invalid user name" in one_error_line(capsys.readouterr().err)
