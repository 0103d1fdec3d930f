"""`hakuriver.admin user add/set/list` with limits and `hakuriver.task list --state
pending` / `status` against a real Host (in its own thread), through the CLIs' main()."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import toml

from hakuriver.cli import admin as admin_cli
from hakuriver.cli import task as task_cli
from tests.harness.polling import poll

from .cluster import ThreadedCluster


def _config(tmp_path: Path, cluster: ThreadedCluster, token: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    data = {"network": {"host_port": int(cluster.url.rsplit(":", 1)[1])}, "auth": {"token": token}}
    path.write_text(toml.dumps(data))
    return path


pytestmark = pytest.mark.usefixtures("cli_env")


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_user_limits_and_the_pending_table(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    admin = _config(tmp_path, cluster, cluster.token, "admin")

    def run_admin(*argv: str) -> int:
        return admin_cli.main(["--config", str(admin), *argv])

    assert run_admin("user", "add", "erin", "--max-running", "1", "--max-gpus", "2", "--json") == 0
    added = json.loads(capsys.readouterr().out)
    assert added["user"]["limits"] == {"max_cores": None, "max_gpus": 2, "max_running": 1}
    erin = _config(tmp_path, cluster, added["token"], "erin")

    assert run_admin("user", "set", "erin", "--max-cores", "4", "--max-gpus", "none") == 0
    out, err = capsys.readouterr()
    assert out.strip() == "limits of erin: max cores 4, max GPUs -, max running 1"
    assert "-: unlimited" in err

    assert run_admin("user", "list") == 0
    out, _ = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split()[5:11] == ["MAX", "CORES", "MAX", "GPUS", "MAX", "RUNNING"]
    assert row.split()[:7] == ["erin", "user", "-", "1", "4", "-", "1"]

    # Bad input: one line, exit 2, nothing sent or changed.
    assert run_admin("user", "set", "erin") == 2
    assert "give at least one of --max-cores" in one_error_line(capsys.readouterr().err)
    assert run_admin("user", "set", "erin", "--max-cores", "-1") == 2
    assert "must not be negative" in one_error_line(capsys.readouterr().err)
    assert run_admin("user", "set", "erin", "--max-cores", "lots") == 2
    assert "is not a whole number or 'none'" in one_error_line(capsys.readouterr().err)
    assert run_admin("user", "set", "nobody", "--max-cores", "1") != 0
    assert "no user 'nobody'" in one_error_line(capsys.readouterr().err)

    cluster.add_runner("a")
    status, first = cluster.api("POST", "/api/tasks", {"command": ["fake", "hang"]}, token=added["token"])
    assert status == 201, first
    [first_id] = first["task_ids"]
    cluster.wait_state(first_id, "running")
    status, second = cluster.api("POST", "/api/tasks", {"command": ["fake", "exit", "0"]}, token=added["token"])
    [second_id] = second["task_ids"]
    poll(
        lambda: cluster.task(second_id)["pending_reason"] == "limit: max-running (1 of 1 running)",
        timeout=20,
        what="the second task to wait for erin's limit",
    )

    assert task_cli.main(["--config", str(erin), "list", "--state", "pending"]) == 0
    out, _ = capsys.readouterr()
    header, row = out.splitlines()
    assert header.split() == ["ID", "POS", "PRI", "USER", "USAGE", "CORES", "MEM", "GPUS", "COMMAND", "REASON"]
    assert row.split()[:4] == [second_id, "1", "0", "erin"]
    assert row.endswith("limit: max-running (1 of 1 running)")

    assert task_cli.main(["--config", str(erin), "status", second_id]) == 0
    out, _ = capsys.readouterr()
    fields = {line.split(None, 1)[0]: line.split(None, 1)[1] for line in out.splitlines() if " " in line}
    assert fields["position"] == "1" and fields["waiting"] == "limit: max-running (1 of 1 running)"

    assert task_cli.main(["--config", str(erin), "kill", first_id]) == 0
    capsys.readouterr()
    cluster.wait_state(second_id, "completed")
