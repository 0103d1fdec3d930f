"""HTTPS with a cluster CA, on real parts: a CA and node certificates made with
hakuriver.tls, a real Host app and a real Runner app (fake executor) served over
TLS on loopback, the real HostClient and CLIs. What verifies what:

- clients and the Runner verify the Host against tls.ca_file, by name;
- the Host verifies each Runner it calls the same way;
- a wrong CA, no CA, a name not in the certificate, or plain HTTP on an
  HTTPS port each fail with one line that says what to check.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from hakuriver import tls
from hakuriver.cli import client as client_cli
from hakuriver.cli import host as host_cli
from hakuriver.client import HostClient
from hakuriver.config import TlsConfig, config_from_dict
from hakuriver.errors import ConfigError, HostUnreachable
from hakuriver.host.app import create_app as create_host_app
from hakuriver.host.db import NodeRecord
from hakuriver.host.runner_client import RunnerClient, RunnerUnreachable
from hakuriver.runner.app import create_app as create_runner_app
from hakuriver.runner.executors.fake import FakeExecutor
from tests.harness.polling import apoll

ADMIN_TOKEN = "admin-token-for-the-tls-tests-01"
RUNNER_TOKEN = "runner-secret-for-the-tls-tests1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pki:
    dir: Path
    other_ca: Path

    def tls(self, name: str) -> dict[str, Any]:
        return {
            "enabled": True,
            "ca_file": str(self.dir / "ca.pem"),
            "cert_file": str(self.dir / f"{name}.pem"),
            "key_file": str(self.dir / f"{name}-key.pem"),
        }


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """The cluster CA with certificates for the Host and runner n1 (both at
    127.0.0.1), and a second, unrelated CA with a certificate of its own."""
    ca_dir, other = tmp_path / "pki", tmp_path / "other-pki"
    tls.write_ca(ca_dir)
    tls.write_node_cert(ca_dir, "host", ips=["127.0.0.1"])
    tls.write_node_cert(ca_dir, "n1", ips=["127.0.0.1"])
    tls.write_ca(other)
    tls.write_node_cert(other, "impostor", ips=["127.0.0.1"])
    return Pki(ca_dir, other / "ca.pem")


def host_config(tmp_path: Path, port: int, pki: Pki | None) -> Any:
    (tmp_path / "shared").mkdir(exist_ok=True)
    data: dict[str, Any] = {
        "network": {"host_port": port, "host_reachable_address": "127.0.0.1"},
        "paths": {"shared_dir": str(tmp_path / "shared")},
        "database": {"db_file": str(tmp_path / "host.db")},
        "timing": {"heartbeat_interval": 0.3, "heartbeat_timeout_factor": 10, "cleanup_check_interval": 0.2},
        "auth": {"admin_token": ADMIN_TOKEN, "runner_token": RUNNER_TOKEN},
    }
    if pki is not None:
        data["tls"] = pki.tls("host")
    return config_from_dict(data, source=str(tmp_path / "host.toml"))


async def serve(app: web.Application, port: int, context: ssl.SSLContext | None) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    return runner


@dataclass
class TlsHost:
    port: int
    config: Any
    pki: Pki

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, ca_file: str | None = None, url: str | None = None, **tls_fields: Any) -> HostClient:
        fields = {"enabled": True, "ca_file": str(self.pki.dir / "ca.pem") if ca_file is None else ca_file}
        fields.update(tls_fields)
        context = tls.client_context(TlsConfig(**fields))
        return HostClient(url or self.url, ADMIN_TOKEN, timeout=10, ssl_context=context)


@pytest.fixture
async def tls_host(tmp_path: Path, pki: Pki) -> AsyncIterator[TlsHost]:
    port = free_port()
    config = host_config(tmp_path, port, pki)
    site = await serve(create_host_app(config), port, tls.server_context(config.tls, config.source))
    try:
        yield TlsHost(port, config, pki)
    finally:
        await site.cleanup()


# ----------------------------------------------------------------- clients
async def test_a_client_with_the_cluster_ca_is_served(tls_host: TlsHost) -> None:
    async with tls_host.client() as host:
        assert (await host.whoami())["name"] == "admin"
        assert "nodes" in await host.nodes()


@pytest.mark.parametrize("which", ["another CA", "the system trust store"])
async def test_a_client_without_the_cluster_ca_refuses_the_host(tls_host: TlsHost, which: str) -> None:
    ca_file = str(tls_host.pki.other_ca) if which == "another CA" else ""
    async with tls_host.client(ca_file=ca_file) as host:
        with pytest.raises(HostUnreachable) as info:
            await host.whoami()
    message = info.value.message
    assert message.startswith(f"cannot reach the Host at {tls_host.url}: its TLS certificate was not accepted (")
    assert "certificate verify failed" in message or "unable to get local issuer certificate" in message
    assert "check that tls.ca_file is the cluster's CA" in message and "\n" not in message


async def test_a_name_missing_from_the_certificate_is_refused(tls_host: TlsHost) -> None:
    async with tls_host.client(url=f"https://localhost:{tls_host.port}") as host:
        with pytest.raises(HostUnreachable) as info:
            await host.whoami()
    assert "its TLS certificate was not accepted" in info.value.message
    assert "the certificate does not name localhost" in info.value.message
    assert "network.host_reachable_address" in info.value.message and "--dns/--ip" in info.value.message


async def test_plain_http_to_the_https_port_fails_with_a_hint(tls_host: TlsHost) -> None:
    async with HostClient(f"http://127.0.0.1:{tls_host.port}", ADMIN_TOKEN, timeout=10) as host:
        with pytest.raises(HostUnreachable) as info:
            await host.whoami()
    assert "tls.enabled" in info.value.message and "\n" not in info.value.message


async def test_https_to_a_plain_http_host_fails_with_a_hint(tmp_path: Path, pki: Pki) -> None:
    port = free_port()
    site = await serve(create_host_app(host_config(tmp_path, port, None)), port, None)
    try:
        context = tls.client_context(TlsConfig(enabled=True, ca_file=str(pki.dir / "ca.pem")))
        async with HostClient(f"https://127.0.0.1:{port}", ADMIN_TOKEN, timeout=10, ssl_context=context) as host:
            with pytest.raises(HostUnreachable) as info:
                await host.whoami()
    finally:
        await site.cleanup()
    assert "the TLS handshake failed" in info.value.message and "is the Host serving HTTPS" in info.value.message


def _client_config(path: Path, port: int, tls_lines: list[str]) -> Path:
    lines = ["[network]", 'host_reachable_address = "127.0.0.1"', f"host_port = {port}"]
    lines += ["[auth]", f'token = "{ADMIN_TOKEN}"', "[tls]", *tls_lines]
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_the_cli_verifies_the_host(
    tls_host: TlsHost, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    good = _client_config(
        tmp_path / "good.toml", tls_host.port, ["enabled = true", f'ca_file = "{tls_host.pki.dir / "ca.pem"}"']
    )
    code = await asyncio.to_thread(client_cli.main, ["--config", str(good), "nodes"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for tls_lines in (["enabled = true", f'ca_file = "{tls_host.pki.other_ca}"'], ["enabled = true"]):
        bad = _client_config(tmp_path / "bad.toml", tls_host.port, tls_lines)
        code = await asyncio.to_thread(client_cli.main, ["--config", str(bad), "nodes"])
        err = capsys.readouterr().err
        assert code == 1
        assert err.count("\n") == 1 and err.startswith("hakuriver.client: error: cannot reach the Host at https://")
        assert "its TLS certificate was not accepted" in err
    missing = _client_config(
        tmp_path / "missing.toml", tls_host.port, ["enabled = true", f'ca_file = "{tmp_path / "nope.pem"}"']
    )
    code = await asyncio.to_thread(client_cli.main, ["--config", str(missing), "nodes"])
    err = capsys.readouterr().err
    assert code == 1 and err == f"hakuriver.client: error: tls.ca_file: {tmp_path / 'nope.pem'} does not exist\n"


# ----------------------------------------------------------------- runners
def runner_config(tmp_path: Path, host_port: int, runner_port: int, pki: Pki, name: str = "n1") -> Any:
    (tmp_path / f"temp-{name}").mkdir(exist_ok=True)
    return config_from_dict(
        {
            "network": {
                "host_port": host_port,
                "host_reachable_address": "127.0.0.1",
                "runner_address": "127.0.0.1",
                "runner_port": runner_port,
            },
            "paths": {"shared_dir": str(tmp_path / "shared"), "local_temp_dir": str(tmp_path / f"temp-{name}")},
            "timing": {"heartbeat_interval": 0.3, "heartbeat_timeout_factor": 10},
            "auth": {"runner_token": RUNNER_TOKEN},
            "tls": pki.tls(name),
            # Its own state dir: the default (~/.hakuriver/state) is shared by every run on the machine.
            "runner": {"name": name, "state_dir": str(tmp_path / f"state-{name}")},
        },
        source=str(tmp_path / f"{name}.toml"),
    )


async def test_a_runner_over_tls_registers_and_runs_a_task(tls_host: TlsHost, tmp_path: Path) -> None:
    runner_port = free_port()
    config = runner_config(tmp_path, tls_host.port, runner_port, tls_host.pki)
    fake = FakeExecutor("n1")
    app = create_runner_app(config, executors={"docker": fake, "systemd": fake})
    site = await serve(app, runner_port, tls.server_context(config.tls, config.source))
    try:
        async with tls_host.client() as host:

            async def online() -> bool:
                nodes = (await host.nodes())["nodes"]
                return any(n["hostname"] == "n1" and n["online"] for n in nodes)

            await apoll(online, timeout=20, what="runner n1 to register over HTTPS")
            node = await host.node("n1")
            assert node["url"] == f"https://127.0.0.1:{runner_port}"
            submitted = await host.submit(["fake", "exit", "0"], targets=["n1"])
            done = await host.wait(submitted["task_ids"], timeout=30)
            assert done["done"], done
            assert [t["state"] for t in done["tasks"]] == ["completed"]
            failed = await host.submit(["fake", "exit", "3"], targets=["n1"])
            done = await host.wait(failed["task_ids"], timeout=30)
            assert [(t["state"], t["exit_code"]) for t in done["tasks"]] == [("failed", 3)]
    finally:
        await site.cleanup()


async def test_the_host_refuses_a_plain_http_runner(tls_host: TlsHost) -> None:
    """An HTTPS Host never sends its order token or tasks to a runner in the clear."""
    body = {"hostname": "n2", "url": "http://127.0.0.1:9", "cores": 2, "memory": 1 << 30}
    context = tls.client_context(TlsConfig(enabled=True, ca_file=str(tls_host.pki.dir / "ca.pem")))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        async with session.post(
            f"{tls_host.url}/api/runner/register", json=body, headers={"Authorization": f"Bearer {RUNNER_TOKEN}"}
        ) as resp:
            status, reply = resp.status, await resp.json()
    assert status == 400
    assert "is plain HTTP; set tls.enabled in the runner's config" in reply["error"]["message"]


async def test_the_host_verifies_the_runner_it_calls(tmp_path: Path, pki: Pki) -> None:
    """A runner whose certificate the cluster CA did not sign gets no orders (or order token)."""
    port = free_port()
    impostor = tls.server_context(
        TlsConfig(
            enabled=True,
            cert_file=str(pki.other_ca.parent / "impostor.pem"),
            key_file=str(pki.other_ca.parent / "impostor-key.pem"),
        )
    )
    seen: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/api/tasks", accept)
    site = await serve(app, port, impostor)
    client = RunnerClient(RUNNER_TOKEN, ssl_context=tls.client_context(TlsConfig(**pki.tls("host"))))
    await client.start()
    node = NodeRecord(
        hostname="n9",
        url=f"https://127.0.0.1:{port}",
        cores=1,
        memory=1 << 30,
        numa=(),
        gpus=(),
        online=True,
        registered_at=0.0,
        last_heartbeat=0.0,
        order_token="order-token-for-n9-0001",
    )
    try:
        with pytest.raises(RunnerUnreachable, match="certificate verify failed"):
            await client.run_task(node, {"task_id": "1"})
    finally:
        await client.close()
        await site.cleanup()
    assert seen == [], "the order token went to a server the CA does not vouch for"


# ---------------------------------------------------------------- services
@pytest.fixture
def run_app_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(web, "run_app", lambda app, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(host_cli, "_create_app", lambda config: object())
    return calls


@pytest.fixture(autouse=True)
def _restore_logging() -> Any:
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


def test_a_plain_http_service_says_so_once(tmp_path: Path, run_app_calls: list[dict[str, Any]]) -> None:
    log_file = tmp_path / "host.log"
    config = tmp_path / "c.toml"
    config.write_text(f'[paths]\nhost_log_file = "{log_file}"\n')
    assert host_cli.main(["--config", str(config)]) == 0
    assert "ssl_context" not in run_app_calls[0]
    for handler in logging.getLogger().handlers:
        handler.flush()
    warnings = [line for line in log_file.read_text().splitlines() if " WARNING " in line]
    assert (
        len(warnings) == 1 and "plain HTTP" in warnings[0] and "one-machine setup or a trusted network" in warnings[0]
    )
    assert "over plain HTTP" in log_file.read_text()


def test_an_https_service_serves_with_its_certificate(
    tmp_path: Path, pki: Pki, run_app_calls: list[dict[str, Any]]
) -> None:
    log_file = tmp_path / "host.log"
    config = tmp_path / "c.toml"
    fields = pki.tls("host")
    config.write_text(
        f'[paths]\nhost_log_file = "{log_file}"\n[tls]\nenabled = true\n'
        + "".join(f'{k} = "{v}"\n' for k, v in fields.items() if k != "enabled")
    )
    assert host_cli.main(["--config", str(config)]) == 0
    assert isinstance(run_app_calls[0]["ssl_context"], ssl.SSLContext)
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "over HTTPS" in text and " WARNING " not in text


@pytest.mark.parametrize(
    "tls_lines, message",
    [
        (["enabled = true"], "tls.enabled is true but tls.cert_file and tls.key_file are not set in"),
        (["enabled = true", 'cert_file = "/nonexistent/host.pem"', 'key_file = "/nonexistent/host-key.pem"'], None),
    ],
)
def test_an_https_service_without_its_files_is_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    run_app_calls: list[dict[str, Any]],
    tls_lines: list[str],
    message: str | None,
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[tls]\n" + "\n".join(tls_lines) + "\n")
    assert host_cli.main(["--config", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert run_app_calls == []
    expected = message or "tls.cert_file: /nonexistent/host.pem does not exist"
    assert err[-1].startswith(f"hakuriver.host: error: {expected}")


def test_the_service_contexts_check_the_ca_too(tmp_path: Path, pki: Pki) -> None:
    fields = {**pki.tls("host"), "ca_file": str(tmp_path / "gone.pem")}
    config = config_from_dict({"tls": fields})
    with pytest.raises(ConfigError, match="tls.ca_file: .* does not exist"):
        tls.service_contexts(config)
    assert tls.service_contexts(config_from_dict({})) == (None, None)


# ------------------------------------------------- the shell and the streams
async def test_the_shell_websocket_and_operation_streams_verify_the_host(pki: Pki) -> None:
    """open_shell and the NDJSON operations use the client's session: the same CA check."""

    async def shell(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_bytes(b"hello over wss")
        await ws.close()
        return ws

    async def create_tar(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        await resp.write(b'{"event": "progress", "stage": "commit", "message": "x"}\n')
        await resp.write(b'{"event": "done", "result": {"name": "env", "version": 3}}\n')
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/api/environments/containers/{name}/shell", shell)
    app.router.add_post("/api/environments/containers/{name}/tarball", create_tar)
    port = free_port()
    server_tls = TlsConfig(**pki.tls("host"))
    site = await serve(app, port, tls.server_context(server_tls))
    url = f"https://127.0.0.1:{port}"
    good = tls.client_context(server_tls)
    bad = tls.client_context(TlsConfig(enabled=True, ca_file=str(pki.other_ca)))
    try:
        async with HostClient(url, ADMIN_TOKEN, ssl_context=good) as host:
            ws = await host.open_shell("env")
            message = await ws.receive()
            await ws.close()
            assert message.data == b"hello over wss"
            progress: list[dict[str, Any]] = []
            assert await host.create_tarball("env", progress=progress.append) == {"name": "env", "version": 3}
            assert [p["stage"] for p in progress] == ["commit"]
        async with HostClient(url, ADMIN_TOKEN, ssl_context=bad) as host:
            with pytest.raises(HostUnreachable, match="its TLS certificate was not accepted"):
                await host.open_shell("env")
            with pytest.raises(HostUnreachable, match="its TLS certificate was not accepted"):
                await host.create_tarball("env")
    finally:
        await site.cleanup()
