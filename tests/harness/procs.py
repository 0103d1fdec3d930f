"""Host and Runner processes on loopback, shared by tests/integration and bench/.

- `free_port()`: a loopback port nothing listens on right now.
- `loopback_config()` / `runner_config()`: the config dict (TOML-ready) of a
  Host in `root` (shared dir, host temp dir and SQLite file under it), and of
  a runner next to it.
- `Proc`: one child process in its own session, output to a log file,
  stopped with SIGTERM then SIGKILL.
- `child_env()`, `host_argv()`, `runner_argv()`: how such a child is started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port that was free a moment ago (closed again: nothing listens there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_config(
    root: Path,
    *,
    port: int,
    token: str,
    heartbeat_interval: float,
    heartbeat_timeout_factor: float,
    cleanup_check_interval: float | None = None,
    docker: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """A Host's config on 127.0.0.1:`port`: `root`/shared, `root`/host_temp, `root`/host.db."""
    timing: dict[str, Any] = {
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_timeout_factor": heartbeat_timeout_factor,
    }
    if cleanup_check_interval is not None:
        timing["cleanup_check_interval"] = cleanup_check_interval
    return {
        "network": {
            "host_bind_ip": "127.0.0.1",
            "host_port": port,
            "host_reachable_address": "127.0.0.1",
            "runner_address": "127.0.0.1",
        },
        "paths": {"shared_dir": str(root / "shared"), "local_temp_dir": str(root / "host_temp")},
        "database": {"db_file": str(root / "host.db")},
        "timing": timing,
        "docker": dict(docker or {}),
        "auth": {"token": token},
    }


def runner_config(
    host_config: dict[str, dict[str, Any]], name: str, *, port: int, local_temp: Path
) -> dict[str, dict[str, Any]]:
    """The config of runner `name` of that Host, serving on `port`, with its
    scratch in `local_temp` and its private state beside it."""
    cfg = {section: dict(values) for section, values in host_config.items()}
    cfg["network"]["runner_port"] = port
    cfg["paths"]["local_temp_dir"] = str(local_temp)
    # Keeps other [runner] keys of the Host's config dict (a test's timeout_grace, say).
    cfg["runner"] = {
        **cfg.get("runner", {}),
        "name": name,
        "state_dir": str(local_temp.parent / f"{local_temp.name}-state"),
    }
    return cfg


def child_env(home: Path, extra: dict[str, str] | None = None, *, repo_on_path: bool = False) -> dict[str, str]:
    """This process's environment without HAKURIVER_* and with HOME=`home` (so no
    ~/.hakuriver is read); `repo_on_path` puts the repository first on PYTHONPATH
    (needed when the child runs a script rather than `-m`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HAKURIVER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["HOME"] = str(home)
    if repo_on_path:
        env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


def host_argv(config_path: Path, launcher: str = "") -> list[str]:
    """`python -m hakuriver.cli.host --config PATH`, or `python LAUNCHER --config PATH`."""
    cmd = [launcher] if launcher else ["-m", "hakuriver.cli.host"]
    return [sys.executable, *cmd, "--config", str(config_path)]


def runner_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "hakuriver.cli.runner", "--config", str(config_path)]


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as out:
            # Own session: a terminal's Ctrl-C reaches only the parent, which stops its children itself.
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=str(REPO), start_new_session=True
            )

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

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

    def tail(self, n: int = 6000) -> str:
        """The last `n` characters of its log."""
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
