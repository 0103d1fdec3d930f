"""A Host and an unprivileged Runner inside one systemd node, with the task launcher,
its allow-list and the sudoers drop-in installed (as root) from the package's own
functions: the setting `--container NULL` tasks run in for real.

The Host runs as root on 0.0.0.0 in the node and this process talks to it over
the node's bridge address; the Runner runs as the user `runner` in its own
transient service (KillMode=control-group), so stopping it kills its whole cgroup.

The node has task accounts (`ACCOUNTS`): HakuRiver users of the same names have
them as their `unix_user`, and `submit(..., as_user=NAME)` submits with their
token. The admin (the legacy `auth.token`) has no Unix account.
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

TASK_USER = "alice"
"""A plain account: the default submitter of the tests' tasks."""
ACCOUNTS = {
    "alice": (),
    "larry": ("lab",),  # allowed through task_groups
    "dave": ("docker",),
    "sam": ("sudo",),
    "rita": (RUNNER_USER,),  # in the runner service's group
}
"""Task accounts in the node: name -> supplementary groups."""

_SETUP = r"""
import json, os, pwd, subprocess, sys
from hakuriver.deploy.launcher_install import install, install_plan

cfg = json.loads(sys.argv[1])
subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", cfg["user"]], check=True)
for group in ("docker", "sudo", "lab"):
    subprocess.run(["groupadd", "-f", group], check=True)
for name, groups in cfg["accounts"].items():
    extra = ["--groups", ",".join(groups)] if groups else []
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", *extra, name], check=True)
pw = pwd.getpwnam(cfg["user"])
# Every task account writes whatever it likes in the shared dir and the scratch dir,
# as on a shared filesystem: world-writable and sticky, like /tmp. The log dirs are
# the service user's (0755), as a deployment makes them: tasks cannot plant anything
# there, and the launcher (root) makes each task's log files for its account.
for d, mode in (
    (cfg["shared"], 0o1777),
    (cfg["shared"] + "/task_outputs", 0o755),
    (cfg["shared"] + "/task_errors", 0o755),
    (cfg["temp"], 0o1777),
):
    os.makedirs(d, exist_ok=True)
    os.chown(d, pw.pw_uid, pw.pw_gid)
    os.chmod(d, mode)
os.makedirs(cfg["host_dir"], exist_ok=True)
print("\n".join(install(install_plan(cfg["user"], cfg["launcher_config"]))))
"""


def launcher_config(**changes: Any) -> str:
    """The node's allow-list: every account listed (so that a refusal is the launcher's
    privilege rule, not a missing entry), lab's members, and the runner's user and group
    recorded. `changes` replace fields."""
    from hakuriver.deploy.launcher_install import render_launcher_config

    fields: dict[str, Any] = {
        "task_users": ["alice", "dave", "sam", "rita", RUNNER_USER, "root"],
        "task_groups": ["lab"],
        "runner_user": RUNNER_USER,
        "runner_group": RUNNER_USER,
        "shared_dirs": [SHARED],
        "local_temp_dirs": [TEMP],
    }
    fields.update(changes)
    return render_launcher_config(**fields)


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
        """The admin's (the legacy auth.token), who has no Unix account."""
        self.tokens: dict[str, str] = {}
        """Each task account's HakuRiver user's token."""
        self.node.container.reload()
        self.ip = self.node.container.attrs["NetworkSettings"]["IPAddress"]
        self.url = f"http://{self.ip}:{HOST_PORT}"

    # ------------------------------------------------------------- setup
    def setup(self) -> None:
        settings = {
            "user": RUNNER_USER,
            "shared": SHARED,
            "temp": TEMP,
            "host_dir": HOST_DIR,
            "accounts": ACCOUNTS,
            "launcher_config": launcher_config(),
        }
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
        self.runner_config = common
        self.write_runner_config()
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
        for name in ACCOUNTS:
            status, body = self.api("POST", "/api/users", {"name": name, "unix_user": name})
            assert status in (200, 201), f"adding user {name}: {status} {body}"
            self.tokens[name] = body["token"]
        self.start_runner()

    def write_runner_config(self, **environment: str) -> None:
        """The Runner's config, with these `[environment]` settings (restart it to apply)."""
        config = {**self.runner_config, **({"environment": environment} if environment else {})}
        self.node.write_file("/etc/hakuriver/runner.toml", _toml(config), mode=0o644)

    def set_launcher_config(self, text: str) -> None:
        self.node.write_file("/etc/hakuriver/launcher.json", text, mode=0o644)

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
        # The Host may still count the node online from before a restart: wait for the
        # new runner's own API too (any HTTP answer will do).
        poll(
            lambda: (
                self.node.exec(
                    ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:8001/api/tasks"],
                    check=False,
                ).stdout
                not in ("", "000")
            ),
            timeout=60,
            what="the runner's API to answer",
            on_timeout=lambda: self.journal("hkr-runner"),
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
    def api(
        self, method: str, path: str, body: Any = None, timeout: float = 10, as_user: str | None = None
    ) -> tuple[int, Any]:
        """A Host API call with the admin's token, or with `as_user`'s."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.tokens[as_user] if as_user else self.token}")
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

    def submit(self, command: list[str], *, as_user: str | None = TASK_USER, **fields: Any) -> str:
        """A NULL task submitted by `as_user` (default alice; None: the admin, who has no Unix account)."""
        fields.setdefault("targets", [NODE_NAME])
        status, body = self.api(
            "POST", "/api/tasks", {"command": command, "container": "NULL", **fields}, as_user=as_user
        )
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
        """What the runner itself says it runs (its own API, inside the node, with the
        Host's order token: the only credential the Runner's API accepts)."""
        out = self.node.exec(
            ["curl", "-sf", "-H", f"Authorization: Bearer {self.order_token()}", "http://127.0.0.1:8001/api/tasks"]
        ).stdout
        return {t["task_id"]: t["state"] for t in json.loads(out)["tasks"]}

    def order_token(self) -> str:
        """The order token the runner's state DB holds (default state dir of its user)."""
        db = f"/home/{RUNNER_USER}/.hakuriver/state/runner-{NODE_NAME}.db"
        code = "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute(sys.argv[2]).fetchone()[0])"
        query = "SELECT value FROM identity WHERE name = 'order_token'"
        return self.node.exec([VENV_PY, "-c", code, db, query]).stdout.strip()

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
