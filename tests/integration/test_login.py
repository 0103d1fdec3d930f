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
    token_file = home / ".hakuriver" / "token"

    wrong = run_cli(home, cluster, "client", "--config", str(system), "login", "--token-file", "-", stdin="hkr_wrong\n")
    assert wrong.returncode == 1
    assert wrong.stderr.count("\n") == 1 and "nothing was stored" in wrong.stderr, wrong.stderr
    assert not token_file.exists()

    ok = run_cli(home, cluster, "client", "--config", str(system), "login", "--token-file", "-", stdin=token + "\n")
    assert ok.returncode == 0, ok.stderr
    assert "logged in as carol" in ok.stdout
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(token_file.parent).st_mode) == 0o700
    # Only the token: the address stays the machine-wide file's, so a change there reaches her.
    assert token_file.read_text(encoding="utf-8") == token + "\n"
    assert not (home / ".hakuriver" / "config.toml").exists()

    listed = run_cli(home, cluster, "task", "--config", str(system), "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["tasks"] == []

    # A token file others can read is refused, as ssh refuses such a key.
    token_file.chmod(0o644)
    loose = run_cli(home, cluster, "task", "--config", str(system), "list")
    assert loose.returncode == 1 and "can be read by others" in loose.stderr, loose.stderr
    token_file.chmod(0o600)

    # A personal config in use keeps its settings and gets the token in auth.token.
    own = home / ".hakuriver" / "config.toml"
    own.write_text(toml.dumps({"network": host_cfg["network"], "auth": {"token": "hkr_old"}}), encoding="utf-8")
    again = run_cli(home, cluster, "client", "login", "--token-file", "-", stdin=token + "\n")
    assert again.returncode == 0, again.stderr
    assert toml.loads(own.read_text(encoding="utf-8")) == {"network": host_cfg["network"], "auth": {"token": token}}
    assert stat.S_IMODE(os.stat(own).st_mode) == 0o600
    assert run_cli(home, cluster, "task", "list").returncode == 0
