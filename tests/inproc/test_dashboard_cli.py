"""`hakuriver.client dashboard` against the real Host app: the address of a
dashboard the Host serves, or one line saying it serves none."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest

from hakuriver.cli import client as client_cli

from .cluster import ThreadedCluster
from .test_drain_cli import one_error_line, write_config

pytestmark = pytest.mark.usefixtures("cli_env")


def test_dashboard_prints_the_address_the_host_serves(cluster: ThreadedCluster, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "user.toml", cluster, cluster.token)
    assert client_cli.main(["--config", config, "dashboard"]) == 0
    url = capsys.readouterr().out.strip()
    assert url == f"http://127.0.0.1:{cluster.url.rsplit(':', 1)[1]}/dashboard/"
    with urllib.request.urlopen(url, timeout=10) as page:  # what a browser gets there: the app's page
        assert page.status == 200 and b"<html" in page.read().lower()


def test_a_host_without_a_dashboard_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    cluster = ThreadedCluster(tmp_path / "off", config_overrides={"dashboard": {"enabled": False}})
    try:
        cluster.start_host()
        config = write_config(tmp_path / "user.toml", cluster, cluster.token)
        assert client_cli.main(["--config", config, "dashboard"]) != 0
        line = one_error_line(capsys.readouterr().err)
        assert "serves no dashboard (dashboard.enabled = false)" in line
    finally:
        cluster.close()
