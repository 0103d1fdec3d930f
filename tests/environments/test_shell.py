"""`hakuriver.docker shell`: a terminal in an environment container, bridged over a websocket."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import aiohttp
import pytest

from hakuriver.cli import docker as docker_cli
from hakuriver.client import ApiError, HostClient
from tests.harness.polling import apoll
from tests.integration.cluster import LocalCluster

from .conftest import Made

pytestmark = pytest.mark.docker


async def read_until(ws: aiohttp.ClientWebSocketResponse, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""

    async def more() -> None:
        nonlocal seen
        while needle not in seen:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.BINARY, (msg, seen)
            seen += msg.data

    await asyncio.wait_for(more(), timeout)
    return seen


async def test_shell_runs_commands_resizes_and_reports_the_exit_code(
    cluster: LocalCluster, made: Made, harness_images: dict[str, str], docker_client: Any
) -> None:
    name = made.name()
    async with HostClient(cluster.url, cluster.token, timeout=60) as host:
        await host.create_env_container(name, harness_images["task"])
        ws = await host.open_shell(name, command=["sh"], rows=30, cols=100)
        async with ws:
            await ws.send_bytes(b"stty size; echo mark$((6*7))\n")
            assert b"30 100" in await read_until(ws, b"mark42")
            await ws.send_str(docker_cli.resize_message(40, 120))
            await ws.send_bytes(b"stty size; echo mark$((7*7))\n")
            assert b"40 120" in await read_until(ws, b"mark49")
            await ws.send_bytes(b"exit 3\n")
            while True:
                msg = await asyncio.wait_for(ws.receive(), 20)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    assert docker_cli.parse_server_message(msg.data) == docker_cli.ServerMessage("exit", 3)
                    break
                assert msg.type == aiohttp.WSMsgType.BINARY, msg

        # The CLI's relay with pipes (not a terminal): input in, output out, the exit status back.
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        os.write(in_w, b"echo relayed$((2+3))\nexit 5\n")
        os.close(in_w)
        ws = await host.open_shell(name, command=["sh"])
        async with ws:
            status = await docker_cli.relay(ws, in_r, out_w, interactive=False)
        os.close(out_w)
        output = b""
        while chunk := os.read(out_r, 65536):
            output += chunk
        os.close(in_r)
        os.close(out_r)
        assert status == 5 and b"relayed5" in output, output

        # A dropped connection hangs the program up: nothing is left running in the container.
        ws = await host.open_shell(name, command=["sleep", "4242"])
        container = docker_client.containers.get(f"hakuriver-env-{name}")
        await apoll(lambda: "4242" in str(container.top()["Processes"]), timeout=20, what="the shell's program")
        await ws.close()
        await apoll(
            lambda: "4242" not in str(container.top()["Processes"]),
            timeout=20,
            what="the dropped shell's program to end",
        )

        # The handshake is authenticated, and refusals carry their reason.
        async with aiohttp.ClientSession() as anonymous:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await anonymous.ws_connect(f"{cluster.url}/api/environments/containers/{name}/shell")
            assert refused.value.status == 401
        await host.stop_env_container(name)
        with pytest.raises(ApiError) as stopped:
            await host.open_shell(name)
        assert stopped.value.status == 409 and "not running" in stopped.value.message
        with pytest.raises(ApiError) as missing:
            await host.open_shell(f"{name}-none")
        assert missing.value.status == 404


def _read_until(fd: int, needle: bytes, timeout: float = 20, resend: bytes | None = None) -> bytes:
    """Read a pty until `needle` appears, writing `resend` every second meanwhile, if given."""
    seen = b""
    deadline = time.monotonic() + timeout
    next_send = 0.0
    while needle not in seen:
        now = time.monotonic()
        assert now < deadline, f"no {needle!r} in {seen[-2000:]!r}"
        if resend is not None and now >= next_send:
            os.write(fd, resend)
            next_send = now + 1.0
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            seen += os.read(fd, 65536)
    return seen


def _wait_exit(pid: int, fd: int, timeout: float = 20) -> int:
    """The exit status of `pid`, draining its terminal meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                os.read(fd, 65536)
            except OSError:  # EIO once the terminal's other side is closed
                pass
    raise AssertionError("the CLI did not exit after the remote shell did")


def test_cli_shell_in_a_real_terminal(cluster: LocalCluster, made: Made, harness_images: dict[str, str]) -> None:
    """Raw mode, window changes, Ctrl-C to the remote side, the exit status, the terminal restored."""
    name = made.name()
    status, body = cluster.api("POST", f"/api/environments/containers/{name}", {"image": harness_images["task"]})
    assert status == 200 and b'"event":"done"' in body, body
    env = {**os.environ, "TERM": "xterm", "HOME": str(cluster.root)}
    env.pop("HAKURIVER_CONFIG", None)
    pid, master = pty.fork()
    if pid == 0:  # the child: the CLI on a terminal of its own
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "hakuriver.cli.docker",
                "--config",
                str(cluster.host_config_path),
                "shell",
                name,
                "--",
                "sh",
            ],
            env,
        )
    try:
        _read_until(master, b"# ")
        assert not termios.tcgetattr(master)[3] & termios.ICANON, "the local terminal is not in raw mode"
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))  # SIGWINCH
        _read_until(master, b"33 111", resend=b"stty size\r")
        os.write(master, b"sleep 600\r")
        _read_until(master, b"sleep 600")
        os.write(master, b"\x03")  # reaches the remote sleep, not the CLI
        _read_until(master, b"after2", resend=b"echo after$((1+1))\r")
        os.write(master, b"exit 7\r")
        code, pid = _wait_exit(pid, master), 0
        assert code == 7
        assert termios.tcgetattr(master)[3] & termios.ICANON, "the local terminal was not restored"
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)


@pytest.mark.parametrize("command", [[], ["--", "sh"]], ids=["login-shell", "sh"])
def test_cli_shell_with_piped_input_ends_at_end_of_input(
    cluster: LocalCluster, made: Made, harness_images: dict[str, str], command: list[str]
) -> None:
    """`echo ... | hakuriver.docker shell NAME`: the remote shell reads the input, sees its
    end, and exits; the CLI exits with the shell's status (that of its last command)."""
    name = made.name()
    status, body = cluster.api("POST", f"/api/environments/containers/{name}", {"image": harness_images["task"]})
    assert status == 200 and b'"event":"done"' in body, body
    env = {**os.environ, "HOME": str(cluster.root)}
    env.pop("HAKURIVER_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "hakuriver.cli.docker", "--config", str(cluster.host_config_path), "shell", name]
        + command,
        input=b"echo piped-$((1+1))\n(exit 5)\n",
        capture_output=True,
        env=env,
        timeout=60,  # a hang is the bug this test is about: fail, do not wait forever
    )
    assert b"piped-2" in proc.stdout, proc
    assert proc.returncode == 5, proc
    assert b"Traceback" not in proc.stderr
