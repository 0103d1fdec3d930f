"""A real HakuRiver cluster for tests: Host and Runner *processes* on loopback.

Each `LocalCluster` writes its own config (random ports, a fresh token, a
temporary shared dir and SQLite file), starts `python -m hakuriver.cli.host`
and any number of runners, and tears everything down, including the task
containers its runners started, even when the test failed.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml

from tests.harness.polling import poll

REPO = Path(__file__).resolve().parents[2]
TEST_ENV = "hakuriver-test"
"""The environment name tests use; its image is the harness's task image."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO), start_new_session=True
        )
        log.close()

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""


@dataclass
class RunnerInfo:
    name: str
    config_path: Path
    port: int
    proc: Proc
    local_temp: Path


@dataclass
class LocalCluster:
    root: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    host_port: int = field(default_factory=free_port)
    heartbeat_interval: float = 0.5
    heartbeat_timeout_factor: float = 6.0
    docker_overrides: dict[str, Any] = field(default_factory=dict)
    host_proc: Proc | None = None
    runners: dict[str, RunnerInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.shared = self.root / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        # Tasks run as their submitter (nobody for users without an account), not
        # root: like a real cluster's, the shared dir is one they can write to.
        self.shared.chmod(0o1777)
        self.db_file = self.root / "host.db"
        self.logs = self.root / "logs"
        self.logs.mkdir(exist_ok=True)

    # ---------------------------------------------------------------- config
    def base_config(self) -> dict[str, Any]:
        docker = {"default_container_name": TEST_ENV, "allowed_mount_prefixes": [str(self.root / "mountable")]}
        docker.update(self.docker_overrides)
        return {
            "network": {
                "host_bind_ip": "127.0.0.1",
                "host_port": self.host_port,
                "host_reachable_address": "127.0.0.1",
                "runner_address": "127.0.0.1",
            },
            "paths": {"shared_dir": str(self.shared), "local_temp_dir": str(self.root / "host_temp")},
            "database": {"db_file": str(self.db_file)},
            "timing": {
                "heartbeat_interval": self.heartbeat_interval,
                "heartbeat_timeout_factor": self.heartbeat_timeout_factor,
                "cleanup_check_interval": 0.25,
            },
            "docker": docker,
            "auth": {"token": self.token},
        }

    @property
    def host_config_path(self) -> Path:
        return self.root / "host.toml"

    def write_host_config(self) -> Path:
        (self.root / "host_temp").mkdir(exist_ok=True)
        self.host_config_path.write_text(toml.dumps(self.base_config()))
        return self.host_config_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    # ----------------------------------------------------------------- http
    def api(
        self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 10
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (
                    json.loads(raw) if raw and resp.headers.get_content_type() == "application/json" else raw
                )
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    # ------------------------------------------------------------- processes
    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HAKURIVER_")}
        env["PYTHONUNBUFFERED"] = "1"
        env["HOME"] = str(self.root)  # keep ~/.hakuriver out of the picture
        env.update(extra or {})
        return env

    def start_host(self) -> None:
        self.write_host_config()
        self.host_proc = Proc(
            "host",
            [sys.executable, "-m", "hakuriver.cli.host", "--config", str(self.host_config_path)],
            self.logs / "host.log",
            self._env(),
        )
        self.host_proc.start()
        self.wait_host_up()

    def wait_host_up(self, timeout: float = 30) -> None:
        def up() -> bool:
            if self.host_proc is not None and not self.host_proc.alive:
                raise AssertionError(f"the Host exited:\n{self.host_proc.log()}")
            try:
                return self.api("GET", "/api/health", timeout=2)[0] == 200
            except OSError:
                return False

        poll(up, timeout=timeout, what="the Host to answer /api/health")

    def stop_host(self, sig: int = signal.SIGTERM) -> None:
        if self.host_proc is not None:
            self.host_proc.stop(sig)

    def add_runner(
        self,
        name: str,
        *,
        env: dict[str, str] | None = None,
        config: dict[str, Any] | None = None,
        wait_online: bool = True,
    ) -> RunnerInfo:
        port = free_port()
        cfg = self.base_config()
        local_temp = self.root / f"temp-{name}"
        local_temp.mkdir(exist_ok=True)
        local_temp.chmod(0o1777)  # tasks (not root) write there too
        cfg["network"]["runner_port"] = port
        cfg["paths"]["local_temp_dir"] = str(local_temp)
        cfg["runner"] = {"name": name}
        for section, values in (config or {}).items():
            cfg.setdefault(section, {}).update(values)
        path = self.root / f"runner-{name}.toml"
        path.write_text(toml.dumps(cfg))
        proc = Proc(
            f"runner-{name}",
            [sys.executable, "-m", "hakuriver.cli.runner", "--config", str(path)],
            self.logs / f"runner-{name}.log",
            self._env(env),
        )
        info = RunnerInfo(name=name, config_path=path, port=port, proc=proc, local_temp=local_temp)
        self.runners[name] = info
        proc.start()
        if wait_online:
            self.wait_node(name, online=True)
        return info

    def restart_runner(self, name: str, sig: int = signal.SIGTERM) -> None:
        info = self.runners[name]
        info.proc.stop(sig)
        info.proc.start()

    def node(self, name: str) -> dict[str, Any] | None:
        status, body = self.api("GET", f"/api/nodes/{name}")
        return body if status == 200 else None

    def wait_node(self, name: str, online: bool = True, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            info = self.runners.get(name)
            if online and info is not None and not info.proc.alive:
                raise AssertionError(f"runner {name} exited:\n{info.proc.log()}")
            node = self.node(name)
            return node if node is not None and node["online"] is online else None

        return poll(check, timeout=timeout, what=f"node {name} to be {'online' if online else 'offline'}")

    # ---------------------------------------------------------------- tasks
    def submit(self, command: list[str], **fields: Any) -> list[str]:
        status, body = self.api("POST", "/api/tasks", {"command": command, **fields})
        assert status == 201, f"submit failed: {status} {body}"
        return body["task_ids"]

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait_state(self, task_id: str, states: str | set[str], timeout: float = 60) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else set(states)

        def check() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["state"] in wanted else None

        try:
            return poll(check, timeout=timeout, what=f"task {task_id} to reach {sorted(wanted)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast: {self.task(task_id)}\n{self.debug_logs()}") from None

    def wait_final(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_state(task_id, {"completed", "failed", "killed", "killed_oom", "lost"}, timeout)

    def stdout(self, task_id: str) -> str:
        path = self.shared / "task_outputs" / f"{task_id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr(self, task_id: str) -> str:
        path = self.shared / "task_errors" / f"{task_id}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def debug_logs(self) -> str:
        parts = []
        if self.host_proc:
            parts.append(f"--- host log ---\n{self.host_proc.log()}")
        for info in self.runners.values():
            parts.append(f"--- runner {info.name} log ---\n{info.proc.log()}")
        return "\n".join(parts)

    def shutdown(self) -> None:
        for info in self.runners.values():
            info.proc.stop()
        if self.host_proc is not None:
            self.host_proc.stop()


def remove_runner_containers(client: Any, runner_names: list[str]) -> None:
    for name in runner_names:
        for c in client.containers.list(all=True, filters={"label": f"org.hakuriver.runner={name}"}):
            try:
                c.remove(force=True)
            except Exception:
                pass


def wait_until(fn: Any, timeout: float = 30, what: str = "condition") -> Any:
    return poll(fn, timeout=timeout, what=what)


def now() -> float:
    return time.time()
