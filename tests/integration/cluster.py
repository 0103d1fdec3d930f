"""A real HakuRiver cluster for tests: Host and Runner *processes* on loopback.

Each `LocalCluster` writes its own config (random ports, a fresh token, a
temporary shared dir and SQLite file), starts `python -m hakuriver.cli.host`
and any number of runners, and tears everything down, including the task
containers its runners started, even when the test failed.

`LocalCluster(tls=True)` speaks HTTPS: a cluster CA in `root/pki` (made with
hakuriver.tls), a certificate for the Host and one per runner, all for
127.0.0.1; `api()` verifies the Host against that CA.
"""

from __future__ import annotations

import secrets
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import toml

from tests.harness.hostapi import BlockingHostApi
from tests.harness.polling import poll
from tests.harness.procs import Proc, child_env, free_port, host_argv, loopback_config, runner_argv, runner_config

TEST_ENV = "hakuriver-test"
"""The environment name tests use; its image is the harness's task image."""


@dataclass
class RunnerInfo:
    name: str
    config_path: Path
    port: int
    proc: Proc
    local_temp: Path


@dataclass
class LocalCluster(BlockingHostApi):
    root: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    host_port: int = field(default_factory=free_port)
    heartbeat_interval: float = 0.5
    heartbeat_timeout_factor: float = 6.0
    docker_overrides: dict[str, Any] = field(default_factory=dict)
    tls: bool = False
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
        self.pki = self.root / "pki"
        self._ssl: ssl.SSLContext | None = None
        if self.tls:
            from hakuriver import tls

            tls.write_ca(self.pki)
            tls.write_node_cert(self.pki, "host", ips=["127.0.0.1"])
            self._ssl = ssl.create_default_context(cafile=str(self.pki / tls.CA_CERT))

    def tls_section(self, name: str) -> dict[str, Any]:
        """[tls] for the node whose certificate is pki/NAME.pem (made when missing)."""
        from hakuriver import tls

        if not (self.pki / f"{name}.pem").exists():
            tls.write_node_cert(self.pki, name, ips=["127.0.0.1"])
        return {
            "enabled": True,
            "ca_file": str(self.pki / tls.CA_CERT),
            "cert_file": str(self.pki / f"{name}.pem"),
            "key_file": str(self.pki / f"{name}-key.pem"),
        }

    # ---------------------------------------------------------------- config
    def base_config(self) -> dict[str, Any]:
        docker = {"default_container_name": TEST_ENV, "allowed_mount_prefixes": [str(self.root / "mountable")]}
        docker.update(self.docker_overrides)
        config = loopback_config(
            self.root,
            port=self.host_port,
            token=self.token,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout_factor=self.heartbeat_timeout_factor,
            cleanup_check_interval=0.25,
            docker=docker,
        )
        if self.tls:
            config["tls"] = self.tls_section("host")
        return config

    @property
    def host_config_path(self) -> Path:
        return self.root / "host.toml"

    def write_host_config(self) -> Path:
        (self.root / "host_temp").mkdir(exist_ok=True)
        self.host_config_path.write_text(toml.dumps(self.base_config()))
        return self.host_config_path

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.host_port}"

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl

    # ------------------------------------------------------------- processes
    def _env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return child_env(self.root, extra)  # HOME: keep ~/.hakuriver out of the picture

    def start_host(self) -> None:
        self.write_host_config()
        self.host_proc = Proc(
            "host",
            host_argv(self.host_config_path),
            self.logs / "host.log",
            self._env(),
        )
        self.host_proc.start()
        self.wait_host_up()

    def wait_host_up(self, timeout: float = 30) -> None:
        def up() -> bool:
            if self.host_proc is not None and not self.host_proc.alive:
                raise AssertionError(f"the Host exited:\n{self.host_proc.tail()}")
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
        local_temp = self.root / f"temp-{name}"
        local_temp.mkdir(exist_ok=True)
        local_temp.chmod(0o1777)  # tasks (not root) write there too
        cfg = runner_config(self.base_config(), name, port=port, local_temp=local_temp)
        if self.tls:
            cfg["tls"] = self.tls_section(name)
        for section, values in (config or {}).items():
            cfg.setdefault(section, {}).update(values)
        path = self.root / f"runner-{name}.toml"
        path.write_text(toml.dumps(cfg))
        proc = Proc(
            f"runner-{name}",
            runner_argv(path),
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

    def wait_node(self, name: str, online: bool = True, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            info = self.runners.get(name)
            if online and info is not None and not info.proc.alive:
                raise AssertionError(f"runner {name} exited:\n{info.proc.tail()}")
            node = self.node(name)
            return node if node is not None and node["online"] is online else None

        return poll(check, timeout=timeout, what=f"node {name} to be {'online' if online else 'offline'}")

    # ---------------------------------------------------------------- tasks
    def stdout(self, task_id: str) -> str:
        path = self.shared / "task_outputs" / f"{task_id}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr(self, task_id: str) -> str:
        path = self.shared / "task_errors" / f"{task_id}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def debug_logs(self) -> str:
        parts = []
        if self.host_proc:
            parts.append(f"--- host log ---\n{self.host_proc.tail()}")
        for info in self.runners.values():
            parts.append(f"--- runner {info.name} log ---\n{info.proc.tail()}")
        return "\n".join(parts)

    def shutdown(self) -> None:
        for info in self.runners.values():
            info.proc.stop()
        if self.host_proc is not None:
            self.host_proc.stop()


def remove_runner_containers(client: Any, runner_names: list[str]) -> None:
    for name in runner_names:
        for c in client.containers.list(all=True, sparse=True, filters={"label": f"org.hakuriver.runner={name}"}):
            try:
                c.remove(force=True)
            except Exception:
                pass


def wait_until(fn: Any, timeout: float = 30, what: str = "condition") -> Any:
    return poll(fn, timeout=timeout, what=what)


def now() -> float:
    return time.time()
