"""HTTPS end to end: real Host and Runner processes with a cluster CA, a Docker task,
and the console scripts verifying the Host (or refusing it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hakuriver import tls

from .cluster import LocalCluster

pytestmark = pytest.mark.docker

PLAIN_HTTP = "the tokens on it, travel as plain HTTP"


def client_config(cluster: LocalCluster, path: Path, ca_file: Path | None) -> Path:
    lines = [
        "[network]",
        'host_reachable_address = "127.0.0.1"',
        f"host_port = {cluster.host_port}",
        "[auth]",
        f'token = "{cluster.token}"',
    ]
    if ca_file is not None:
        lines += ["[tls]", "enabled = true", f'ca_file = "{ca_file}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(cluster: LocalCluster, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hakuriver.cli.client", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster._env(),
    )


def test_a_tls_cluster_runs_a_docker_task(cluster_factory: Any, node_name: str) -> None:
    cluster: LocalCluster = cluster_factory(tls=True)
    info = cluster.add_runner(node_name)
    node = cluster.node(node_name)
    assert node is not None and node["url"] == f"https://127.0.0.1:{info.port}"
    [task_id] = cluster.submit(["python3", "-c", "print('over https')"], targets=[node_name])
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed", cluster.debug_logs()
    assert cluster.stdout(task_id) == "over https\n"
    assert cluster.host_proc is not None
    host_log = cluster.host_proc.tail(1 << 30)
    assert "over HTTPS" in host_log and PLAIN_HTTP not in host_log
    assert PLAIN_HTTP not in info.proc.tail(1 << 30)

    good = cli(cluster, client_config(cluster, cluster.root / "good.toml", cluster.pki / "ca.pem"), "nodes")
    assert good.returncode == 0 and node_name in good.stdout, good.stderr
    tls.write_ca(cluster.root / "other-ca")
    for ca_file in (cluster.root / "other-ca" / "ca.pem", None):
        bad = cli(cluster, client_config(cluster, cluster.root / "bad.toml", ca_file), "nodes")
        assert bad.returncode == 1
        err = bad.stderr.splitlines()
        assert len(err) == 1, bad.stderr
        if ca_file is None:  # plain HTTP to the HTTPS port
            assert "tls.enabled" in err[0]
        else:
            assert "its TLS certificate was not accepted" in err[0]


def test_a_plain_cluster_warns_once(cluster: LocalCluster, node_name: str) -> None:
    info = cluster.add_runner(node_name)
    assert cluster.host_proc is not None
    assert cluster.host_proc.tail(1 << 30).count(PLAIN_HTTP) == 1
    assert info.proc.tail(1 << 30).count(PLAIN_HTTP) == 1
