"""`hakuriver.admin node drain/resume` and `hakuriver.client nodes` against the real
Host and Runner apps (in a thread of their own): output, --wait, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hakuriver.cli import admin as admin_cli
from hakuriver.cli import client as client_cli

from .cluster import ThreadedCluster


def write_config(path: Path, cluster: ThreadedCluster, token: str) -> str:
    port = cluster.url.rsplit(":", 1)[1]
    path.write_text(f'[network]\nhost_reachable_address = "127.0.0.1"\nhost_port = {port}\n[auth]\ntoken = "{token}"\n')
    return str(path)


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(autouse=True)
def _isolated_env(cli_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin_cli, "DRAIN_POLL_SECONDS", 0.05)


def test_drain_wait_resume_and_nodes(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    n1 = cluster.add_runner("n1", hold_end=True)
    cluster.add_runner("n2")
    config = write_config(tmp_path / "admin.toml", cluster, cluster.token)

    def admin(*argv: str) -> int:
        return admin_cli.main(["--config", config, *argv])

    [task_id] = cluster.submit(["fake", "exit", "0"], targets=["n1"])
    cluster.wait_state(task_id, "running")

    assert admin("node", "drain", "n1", "--reason", "kernel upgrade") == 0
    out, err = capsys.readouterr()
    assert out == "drained n1 (kernel upgrade): no new tasks go there; 1 task(s) still run there\n", out

    # --wait gives up after --timeout with 124 and one line; the node stays drained.
    assert admin("node", "drain", "n1", "--reason", "kernel upgrade", "--wait", "--timeout", "0.3") == 124
    out, err = capsys.readouterr()
    assert err.splitlines()[0] == f"waiting for 1 task(s) on n1: {task_id}"
    assert err.splitlines()[-1] == (
        f"hakuriver.admin: error: 1 task(s) still run on n1 after 0.3 s (e.g. {task_id}); it stays drained"
    )

    assert client_cli.main(["--config", config, "nodes"]) == 0
    out, _ = capsys.readouterr()
    nodes_table, _, notes = out.partition("\n\n")
    rows = {line.split()[0]: line for line in nodes_table.splitlines()}
    assert "online, drained" in rows["n1"] and "drained" not in rows["n2"]
    [note] = notes.splitlines()
    assert re.fullmatch(r"n1 drained \d+s ago by admin: kernel upgrade", note), note
    assert client_cli.main(["--config", config, "nodes", "--json"]) == 0
    listed = {n["hostname"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    assert listed["n1"]["drained"]["reason"] == "kernel upgrade" and listed["n2"]["drained"] is None
    assert client_cli.main(["--config", config, "health", "n1"]) == 0
    assert re.search(r"^drained +\d+s ago by admin: kernel upgrade$", capsys.readouterr().out, re.M)

    # The task ends: --wait returns 0 (the rolling upgrade's step before upgrading).
    cluster._loop.call_soon_threadsafe(n1.docker.release_end, task_id)
    assert admin("node", "drain", "n1", "--wait", "--json") == 0
    node = json.loads(capsys.readouterr().out)
    assert node["active_tasks"] == [] and node["drained"]["reason"] == ""
    assert cluster.task(task_id)["state"] == "completed"
    assert admin("node", "drain", "n1", "--wait") == 0  # idle already: returns at once
    assert capsys.readouterr().out == "drained n1 (no reason given): no new tasks go there; no task runs there\n"

    assert admin("node", "resume", "n1") == 0
    assert capsys.readouterr().out == "resumed n1: tasks are placed there again\n"
    assert client_cli.main(["--config", config, "nodes"]) == 0
    assert "drained" not in capsys.readouterr().out


def test_drain_errors_are_one_line(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    cluster.add_runner("n1")
    admin_config = write_config(tmp_path / "admin.toml", cluster, cluster.token)
    status, body = cluster.api("POST", "/api/users", {"name": "alice"})
    assert status == 201, body
    user_config = write_config(tmp_path / "alice.toml", cluster, body["token"])

    for verb, what in (("drain", "drain nodes"), ("resume", "resume nodes")):
        assert admin_cli.main(["--config", user_config, "node", verb, "n1"]) == 1
        assert one_error_line(capsys.readouterr().err) == f"hakuriver.admin: error: only an admin may {what}"
        assert admin_cli.main(["--config", admin_config, "node", verb, "nope"]) == 1
        assert one_error_line(capsys.readouterr().err) == "hakuriver.admin: error: no node nope"

    assert admin_cli.main(["--config", admin_config, "node", "drain", "n1", "--timeout", "5"]) == 2
    assert one_error_line(capsys.readouterr().err) == "hakuriver.admin: error: --timeout goes with --wait"
    assert admin_cli.main(["--config", admin_config, "node", "drain", "bad name!"]) == 2
    assert one_error_line(capsys.readouterr().err).startswith("hakuriver.admin: error: argument NAME:")
    assert admin_cli.main(["--config", admin_config, "node", "drain", "n1", "--reason", "x" * 600]) == 1
    assert "longer than 500 characters" in one_error_line(capsys.readouterr().err)
    assert cluster.node("n1")["drained"] is None  # type: ignore[index]
