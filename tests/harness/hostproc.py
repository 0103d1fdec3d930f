"""A real Host process on loopback for the hostile-conditions tests (no Docker needed).

`running_host(tmp_path, **sections)` starts `python -m hakuriver.cli.host` with
a loopback config (`sections` merge into it), waits until it answers, and
stops it (SIGTERM, then SIGKILL) however the test ends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import toml

from tests.harness.hostapi import BlockingHostApi
from tests.harness.polling import poll
from tests.harness.procs import Proc, child_env, free_port, host_argv, loopback_config

ADMIN_TOKEN = "admin-token-of-the-hostile-tests-01"
RUNNER_TOKEN = "runner-token-of-the-hostile-tests-1"


@dataclass
class HostProc(BlockingHostApi):
    url: str
    port: int
    root: Path
    proc: Proc
    token: str = ADMIN_TOKEN

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str = ADMIN_TOKEN,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, the decoded JSON body, or the raw bytes when the answer is not JSON)."""
        return self.api(method, path, body, token=token, headers=headers)

    def register_node(self, name: str = "n1", node_key: str = "node-key-of-the-hostile-tests-0001") -> None:
        """Register a node (no Runner behind its URL) so that tasks can be submitted."""
        body = {
            "hostname": name,
            "url": "http://127.0.0.1:9",
            "cores": 4,
            "memory": 8 << 30,
            "node_key": node_key,
            "order_token": "order-token-of-the-hostile-tests-01",
        }
        status, reply = self.call("POST", "/api/runner/register", body, token=RUNNER_TOKEN)
        assert status == 200, reply


@contextlib.contextmanager
def running_host(tmp_path: Path, **sections: dict[str, Any]) -> Iterator[HostProc]:
    (tmp_path / "shared").mkdir(exist_ok=True)
    port = free_port()
    config = loopback_config(tmp_path, port=port, token="", heartbeat_interval=1.0, heartbeat_timeout_factor=30)
    config["auth"] = {"admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN}
    config["paths"]["host_log_file"] = str(tmp_path / "host.log")
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = tmp_path / "host.toml"
    path.write_text(toml.dumps(config))
    proc = Proc("host", host_argv(path), tmp_path / "host.out", child_env(tmp_path))
    proc.start()
    host = HostProc(f"http://127.0.0.1:{port}", port, tmp_path, proc)
    try:
        poll(
            lambda: proc.alive and host.call("GET", "/api/health")[0] == 200,
            timeout=60,
            what="the Host to answer",
            ignore=(OSError,),
            on_timeout=proc.tail,
        )
        yield host
    finally:
        proc.stop()
