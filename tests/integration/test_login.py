"""`hakuriver.client login` against a real Host: a lab member with only the
machine-wide client config and the token an admin gave them gets a working
personal config; a wrong token is never stored."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import toml

from .cluster import LocalCluster

pytestmark = pytest.mark.docker


def run_cli(
    home: Path, cluster: LocalCluster, module: str, *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = cluster._env({"HOME": str(home)})
    return subprocess.run(
        [sys.executable, "-m", f"hakuriver.cli.{module}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_login_stores_a_checked_token_and_then_plain_commands_work(cluster: LocalCluster, tmp_path: Path) -> None:
    status, reply = cluster.api("POST", "/api/users", {"name": "carol"})
    assert status == 201, reply
    token = reply["token"]
    host_cfg = toml.loads(cluster.host_config_path.read_text(encoding="utf-8"))
    # What the roles write to /etc/hakuriver/client.toml: the address, no secret.
    system = tmp_path / "client.toml"
    system.write_text(toml.dumps({"network": host_cfg["network"]}), encoding="utf-8")
    home = tmp_path / "carol"
    home.mkdir()
    personal = home / ".hakuriver" / "config.toml"

    wrong = run_cli(home, cluster, "client", "--config", str(system), "login", "--token-file", "-", stdin="hkr_wrong\n")
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "nothing was stored" in wrong.stderr, wrong.stderr
    assert not personal.exists()

    ok = run_cli(home, cluster, "client", "--config", str(system), "login", "--token-file", "-", stdin=token + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "logged in as carol" in ok.stdout
    assert stat.S_IMODE(os.stat(personal).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(personal.parent).st_mode) == 0o700
    stored = toml.loads(personal.read_text(encoding="utf-8"))
    assert stored["auth"] == {"token": token}
    assert stored["network"]["host_port"] == host_cfg["network"]["host_port"]

    # No --config, no $HAKURIVER_CONFIG: the lookup finds the personal file.
    listed = run_cli(home, cluster, "task", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["tasks"] == []
    status, users = cluster.api("GET", "/api/users")
    assert status == 200 and "carol" in [u["name"] for u in users["users"]]
