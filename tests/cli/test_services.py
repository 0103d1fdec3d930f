"""`hakuriver.host` / `hakuriver.runner`: config → logging → create_app → run_service.

The real apps are not started here (they are tested with the Host and the
Runner); `create_app` and `run_service` are stubbed so that only the CLI's own
wiring is under test.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hakuriver.cli import common
from hakuriver.cli import host as host_cli
from hakuriver.cli import runner as runner_cli
from hakuriver.connlimits import ConnectionLimits
from hakuriver.errors import ConfigError
from tests.harness.procs import free_port

from .fakehost import _isolated_env  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def run_app_calls(monkeypatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run_service(app: Any, host: str, port: int, **kwargs: Any) -> None:
        calls.append({"app": app, "host": host, "port": port, **kwargs})
        logging.getLogger("hakuriver.test").info("serving")

    monkeypatch.setattr(common, "run_service", fake_run_service)
    return calls


def _config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "module, section, bind_key, port_key, log_key",
    [
        (host_cli, "network", "host_bind_ip", "host_port", "host_log_file"),
        (runner_cli, "network", "runner_address", "runner_port", "runner_log_file"),
    ],
)
def test_service_binds_and_logs_from_config(
    module, section, bind_key, port_key, log_key, tmp_path, monkeypatch, run_app_calls
):
    log_file = tmp_path / "service.log"
    log_file.touch(0o644)  # as earlier versions left it
    config = _config(
        tmp_path / "c.toml",
        f'[network]\n{bind_key} = "127.0.0.2"\n{port_key} = 18123\n'
        f'[paths]\n{log_key} = "{log_file}"\n[auth]\ntoken = "t"\n',
    )
    seen: list[Any] = []
    sentinel = object()
    monkeypatch.setattr(module, "_create_app", lambda cfg: seen.append(cfg) or sentinel)
    assert module.main(["--config", str(config)]) == 0
    (call,) = run_app_calls
    limits = ConnectionLimits(keepalive_timeout=20.0, request_body_timeout=60.0)
    assert call == {"app": sentinel, "host": "127.0.0.2", "port": 18123, "ssl_context": None, "limits": limits}
    assert seen[0].source == str(config)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "starting on 127.0.0.2:18123" in text and "serving" in text
    assert log_file.stat().st_mode & 0o777 == 0o640  # not world-readable any more (audit L4)


def test_a_new_log_file_is_not_world_readable(tmp_path):
    from hakuriver.cli.common import LOG_FILE_MODE, _not_world_readable

    old = os.umask(0)
    try:
        _not_world_readable(str(tmp_path / "new.log"))
    finally:
        os.umask(old)
    assert (tmp_path / "new.log").stat().st_mode & 0o777 == LOG_FILE_MODE == 0o640


def test_service_config_error_is_one_line(tmp_path, monkeypatch, capsys, run_app_calls):
    def refuse(cfg: Any) -> Any:
        raise ConfigError("database.db_file, paths.shared_dir must be set in x.toml")

    monkeypatch.setattr(host_cli, "_create_app", refuse)
    config = _config(tmp_path / "c.toml", '[auth]\ntoken = "t"\n')
    assert host_cli.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.endswith("hakuriver.host: error: database.db_file, paths.shared_dir must be set in x.toml\n")
    assert "Traceback" not in err and run_app_calls == []


def test_service_bad_config_file_is_one_line(tmp_path, capsys):
    config = _config(tmp_path / "c.toml", "[network]\nhost_port = 'eighty'\n")
    assert runner_cli.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == ["hakuriver.runner: error: network.host_port must be an integer, not 'eighty'"]


def test_service_unopenable_log_file(tmp_path, capsys, monkeypatch, run_app_calls):
    monkeypatch.setattr(host_cli, "_create_app", lambda cfg: object())
    config = _config(tmp_path / "c.toml", f'[paths]\nhost_log_file = "{tmp_path}/no/such/dir/host.log"\n')
    assert host_cli.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "cannot open log file" in err


def test_service_port_in_use_is_one_line(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        parser = host_cli.build_parser()
        config = _config(tmp_path / "c.toml", f'[network]\nhost_bind_ip = "127.0.0.1"\nhost_port = {port}\n')
        code = common.serve(
            parser,
            ["--config", str(config)],
            factory=lambda cfg: web.Application(),
            bind=lambda c: (c.network.host_bind_ip, c.network.host_port),
            log_file=lambda c: "",
        )
    assert code == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith(f"hakuriver.host: error: cannot serve on 127.0.0.1:{port}: ")
    assert "in use" in err[-1].lower()


def test_service_stops_cleanly_on_sigterm(tmp_path):
    """A real run_app in a child process: it serves, gets SIGTERM, exits 0."""
    port = free_port()
    config = _config(tmp_path / "c.toml", f'[network]\nhost_bind_ip = "127.0.0.1"\nhost_port = {port}\n')
    script = f"""
import os, signal
from aiohttp import web
from hakuriver.cli import common, host

def factory(cfg):
    app = web.Application()
    async def stop_soon(app):
        os.kill(os.getpid(), signal.SIGTERM)
    app.on_startup.append(stop_soon)
    return app

raise SystemExit(common.serve(host.build_parser(), ["--config", {str(config)!r}], factory=factory,
                              bind=lambda c: (c.network.host_bind_ip, c.network.host_port), log_file=lambda c: ""))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "hakuriver.host starting on 127.0.0.1" in proc.stderr and "hakuriver.host stopped" in proc.stderr
