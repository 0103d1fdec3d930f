"""A Host and an unprivileged Runner inside one systemd node, with the task launcher,
its allow-list and the sudoers drop-in installed (as root) from the package's own
functions: the setting `--container NULL` tasks run in for real.

The Host runs as root on 0.0.0.0 in the node and this process talks to it over
the node's bridge address; the Runner runs as the user `runner` in its own
transient service (KillMode=control-group), so stopping it kills its whole cgroup.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from typing import Any

from hakuriver.models import FINAL_STATES
from tests.harness import Node, poll

VENV_PY = "/opt/hakuriver/venv/bin/python"
RUNNER_USER = "runner"
SHARED = "/srv/hkr/shared"
TEMP = "/srv/hkr/temp"
HOST_DIR = "/srv/hkr/host"
STATE_DIR = "/var/lib/hakuriver/task-status"
LAUNCHER = "/usr/local/libexec/hakuriver/hakuriver-task-launcher"
NODE_NAME = "sdnode"
HOST_PORT = 8000
RUNNER_MARKER = "RUNNER_ONLY_MARKER"

_SETUP = r"""
import json, os, pwd, subprocess, sys
from hakuriver.deploy.launcher_install import install, install_plan, render_launcher_config

cfg = json.loads(sys.argv[1])
subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", cfg["user"]], check=True)
pw = pwd.getpwnam(cfg["user"])
for d in (cfg["shared"], cfg["temp"]):
    os.makedirs(d, exist_ok=True)
    os.chown(d, pw.pw_uid, pw.pw_gid)
os.makedirs(cfg["host_dir"], exist_ok=True)
text = render_launcher_config(task_users=[cfg["user"]], shared_dirs=[cfg["shared"]], local_temp_dirs=[cfg["temp"]])
print("\n".join(install(install_plan(cfg["user"], text))))
"""


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        for k, v in values.items():
            lines.append(f"{k} = {json.dumps(v)}")
        lines.append("")
    return "\n".join(lines)


class SdCluster:
    def __init__(self, node: Node):
        self.node = node
        self.token = secrets.token_urlsafe(18)
        self.node.container.reload()
        self.ip = self.node.container.attrs["NetworkSettings"]["IPAddress"]
        self.url = f"http://{self.ip}:{HOST_PORT}"

    # ------------------------------------------------------------- setup
    def setup(self) -> None:
        settings = {"user": RUNNER_USER, "shared": SHARED, "temp": TEMP, "host_dir": HOST_DIR}
        self.node.exec([VENV_PY, "-c", _SETUP, json.dumps(settings)])
        common = {
            "network": {
                "host_bind_ip": "0.0.0.0",
                "host_port": HOST_PORT,
                "host_reachable_address": "127.0.0.1",
                "runner_address": "127.0.0.1",
                "runner_port": 8001,
            },
            "paths": {"shared_dir": SHARED, "local_temp_dir": TEMP},
            "database": {"db_file": f"{HOST_DIR}/host.db"},
            "timing": {"heartbeat_interval": 1.0, "heartbeat_timeout_factor": 10.0, "cleanup_check_interval": 1.0},
            "auth": {"token": self.token},
            "runner": {"name": NODE_NAME},
        }
        host = {**common, "paths": {"shared_dir": SHARED, "local_temp_dir": HOST_DIR}}
        self.node.write_file("/etc/hakuriver/host.toml", _toml(host), mode=0o600)
        self.node.write_file("/etc/hakuriver/runner.toml", _toml(common), mode=0o644)
        self.node.exec(
            [
                "systemd-run",
                "--unit=hkr-host",
                "--quiet",
                "--",
                VENV_PY,
                "-m",
                "hakuriver.cli.host",
                "--config",
                "/etc/hakuriver/host.toml",
            ]
        )
        poll(
            lambda: self.api("GET", "/api/health")[0] == 200,
            timeout=60,
            ignore=(OSError,),
            what="the Host in the node to answer",
            on_timeout=lambda: self.journal("hkr-host"),
        )
        self.start_runner()

    def start_runner(self) -> None:
        self.node.exec(
            [
                "systemd-run",
                "--unit=hkr-runner",
                "--quiet",
                f"--property=User={RUNNER_USER}",
                "--property=KillMode=control-group",
                f"--setenv={RUNNER_MARKER}=leaked",
                "--",
                VENV_PY,
                "-m",
                "hakuriver.cli.runner",
                "--config",
                "/etc/hakuriver/runner.toml",
            ]
        )
        self.wait_online(True)

    def stop_runner(self) -> None:
        self.node.exec(["systemctl", "stop", "hkr-runner.service"])

    def wait_online(self, online: bool) -> None:
        def check() -> bool:
            status, body = self.api("GET", f"/api/nodes/{NODE_NAME}")
            return status == 200 and body.get("online") is online

        poll(
            check,
            timeout=60,
            ignore=(OSError,),
            what=f"{NODE_NAME} online={online}",
            on_timeout=lambda: self.journal("hkr-runner"),
        )

    # -------------------------------------------------------------- api
    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                ctype = resp.headers.get_content_type()
                return resp.status, json.loads(raw) if ctype == "application/json" and raw else raw
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    def submit(self, command: list[str], **fields: Any) -> str:
        fields.setdefault("targets", [NODE_NAME])
        status, body = self.api("POST", "/api/tasks", {"command": command, "container": "NULL", **fields})
        assert status == 201, f"submit failed: {status} {body}"
        [task_id] = body["task_ids"]
        return task_id

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait_state(self, task_id: str, states: set[str], timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            t = self.task(task_id)
            return t if t["state"] in states else None

        return poll(
            check,
            timeout=timeout,
            what=f"task {task_id} in {sorted(states)}",
            on_timeout=lambda: f"last: {self.task(task_id)}\n{self.journal('hkr-runner')}",
        )

    def wait_final(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        return self.wait_state(task_id, {s.value for s in FINAL_STATES}, timeout)

    def act(self, task_id: str, verb: str) -> None:
        status, body = self.api("POST", f"/api/tasks/{task_id}/{verb}")
        assert status in (200, 202), f"{verb} {task_id}: {status} {body}"

    def logs(self, task_id: str, stream: str = "stdout") -> str:
        status, body = self.api("GET", f"/api/tasks/{task_id}/logs?stream={stream}")
        assert status == 200, body
        return body.decode(errors="replace") if isinstance(body, bytes) else str(body)

    def runner_tasks(self) -> dict[str, str]:
        """What the runner itself says it runs (its own API, inside the node)."""
        out = self.node.exec(
            ["curl", "-sf", "-H", f"Authorization: Bearer {self.token}", "http://127.0.0.1:8001/api/tasks"]
        ).stdout
        return {t["task_id"]: t["state"] for t in json.loads(out)["tasks"]}

    # ------------------------------------------------------------ node
    def unit(self, task_id: str, *props: str) -> dict[str, str]:
        out = self.node.exec(
            ["systemctl", "show", f"--property={','.join(props)}", f"hakuriver-task-{task_id}.service"]
        ).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def launcher(self, *args: str, input: str | None = None, user: str = RUNNER_USER) -> Any:
        return self.node.exec(["sudo", "-n", LAUNCHER, *args], user=user, input=input, check=False)

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.node.exec(
            ["journalctl", "--no-pager", "-o", "cat", "-n", str(lines), "-u", unit], check=False
        ).stdout
