"""hakuriver installs offline into a systemd node, from the working tree."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.systemd]


def test_node_runs_this_working_trees_hakuriver(hakuriver_node_factory: Any) -> None:
    node = hakuriver_node_factory("inst")
    out = node.exec(
        [
            "/opt/hakuriver/venv/bin/python",
            "-c",
            "import hakuriver, hakuriver.host.app, hakuriver.runner.app; print(hakuriver.__file__)",
        ]
    )
    assert "/opt/hakuriver/venv/lib/" in out.stdout
    helptext = node.exec(["/opt/hakuriver/venv/bin/hakuriver.task", "submit", "--help"]).stdout
    assert "--target" in helptext
