"""A real Host process against special files in its log directories and
oversized or stalled uploads (issue 15; audit M2 and L5).

- A FIFO, a socket (and, where this process may make one, a device node)
  named like a task's log: the log route answers 409 `unsafe_file` at once,
  eight such requests at a time block nobody else, `hakuriver.task logs`
  prints one line, and SIGTERM still stops the Host.
- `import-tar` with a small `docker.max_upload_size`: 413 before anything is
  stored when Content-Length says so, 413 while streaming a chunked body,
  507 when the announced size does not fit the disk, 408 when the body
  stalls; no temporary file is left.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import toml

from hakuriver import naming
from tests.harness.hostproc import ADMIN_TOKEN, HostProc, running_host
from tests.harness.procs import REPO, child_env

UPLOAD = "/api/environments/tarballs/{name}/tar"


def _submit(host: HostProc) -> int:
    host.register_node()
    status, reply = host.call("POST", "/api/tasks", {"command": ["echo", "hi"]})
    assert status == 201, reply
    return int(reply["tasks"][0]["task_id"])


def _plant(path: str, kind: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)
        sock.close()  # the socket file stays
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        except PermissionError:
            pytest.skip("this process may not make device nodes")


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
def test_a_special_file_as_a_log_answers_409_at_once_and_blocks_nothing(tmp_path: Path, kind: str) -> None:
    with running_host(tmp_path) as host:
        shared = str(tmp_path / "shared")
        trapped, normal = _submit(host), _submit(host)
        _plant(naming.stdout_path(shared, trapped), kind)
        _plant(naming.stderr_path(shared, trapped), kind)
        os.makedirs(os.path.dirname(naming.stdout_path(shared, normal)), exist_ok=True)
        Path(naming.stdout_path(shared, normal)).write_bytes(b"normal output\n")

        # Eight at once (the audit's reproduction filled the thread pool with them), then a normal log.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: host.call("GET", f"/api/tasks/{trapped}/logs"), range(8)))
        for status, body in answers:
            assert status == 409 and body["error"]["code"] == "unsafe_file", (status, body)
        status, body = host.call("GET", f"/api/tasks/{trapped}/logs?stream=stderr")
        assert status == 409 and "not served" in body["error"]["message"], body
        status, body = host.call("GET", f"/api/tasks/{normal}/logs")
        assert (status, body) == (200, b"normal output\n")

        client = tmp_path / "client.toml"
        client.write_text(
            toml.dumps(
                {
                    "network": {"host_reachable_address": "127.0.0.1", "host_port": host.port},
                    "auth": {"token": ADMIN_TOKEN},
                }
            )
        )
        cli = subprocess.run(
            [sys.executable, "-m", "hakuriver.cli.task", "logs", str(trapped), "--config", str(client)],
            env=child_env(tmp_path),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert cli.returncode == 1, cli
        assert cli.stderr.startswith("hakuriver.task: error: ") and len(cli.stderr.splitlines()) == 1, cli.stderr
        assert "not served" in cli.stderr and "Traceback" not in cli.stderr

        host.proc.stop(timeout=30)  # SIGTERM; SIGKILL only after 30 s
        assert host.proc.popen is not None and host.proc.popen.returncode == 0, host.proc.tail()
        assert stat.S_ISFIFO(os.lstat(naming.stdout_path(shared, trapped)).st_mode) == (kind == "fifo")


def _raw_upload(host: HostProc, headers: dict[str, str], body: bytes = b"", timeout: float = 30) -> tuple[int, Any]:
    """An upload whose headers say what the test wants (Content-Length included), with `body` after them."""
    conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=timeout)
    try:
        conn.putrequest("POST", UPLOAD.format(name="bigenv"))
        for key, value in {"Authorization": f"Bearer {ADMIN_TOKEN}", **headers}.items():
            conn.putheader(key, value)
        conn.endheaders()
        if body:
            conn.send(body)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _leftovers(root: Path) -> list[str]:
    return [p.name for p in (root / "shared").rglob(".upload-*")]


async def test_uploads_are_held_to_the_size_limit_and_the_free_space(tmp_path: Path) -> None:
    with running_host(tmp_path, docker={"max_upload_size": "1M"}, network={"request_body_timeout": 2.0}) as host:
        tar = {"Content-Type": "application/x-tar"}

        # Announced too large: refused before a byte is read.
        status, body = _raw_upload(host, {**tar, "Content-Length": str(2 << 20)})
        assert status == 413 and body["error"]["code"] == "upload_too_large", body
        assert "docker.max_upload_size (1M)" in body["error"]["message"], body

        # Chunked (no length): refused once the streamed bytes pass the limit.
        async def chunks() -> Any:
            for _ in range(4):
                yield b"\0" * (512 << 10)

        async with aiohttp.ClientSession() as session:
            url = host.url + UPLOAD.format(name="bigenv")
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **tar}
            async with session.post(url, data=chunks(), headers=headers) as resp:
                assert resp.status == 413, await resp.text()
                assert (await resp.json())["error"]["code"] == "upload_too_large"

        # A stalled body: 408 after request_body_timeout.
        status, body = _raw_upload(host, {**tar, "Content-Length": "1000"}, b"x" * 10)
        assert status == 408 and body["error"]["code"] == "request_timeout", body
        assert _leftovers(tmp_path) == []

        # The same for an ordinary JSON body.
        conn = http.client.HTTPConnection("127.0.0.1", host.port, timeout=30)
        try:
            conn.putrequest("POST", "/api/tasks")
            for key, value in {
                "Authorization": f"Bearer {ADMIN_TOKEN}",
                "Content-Type": "application/json",
                "Content-Length": "100",
            }.items():
                conn.putheader(key, value)
            conn.endheaders()
            conn.send(b'{"command": ')
            resp = conn.getresponse()
            assert resp.status == 408, resp.read()
            assert json.loads(resp.read())["error"]["code"] == "request_timeout"
        finally:
            conn.close()


def test_an_upload_that_does_not_fit_the_disk_is_refused_first(tmp_path: Path) -> None:
    with running_host(tmp_path, docker={"max_upload_size": "1000T"}) as host:
        st = os.statvfs(tmp_path)
        free = st.f_bavail * st.f_frsize
        announced = free + (1 << 40)  # a terabyte more than there is
        status, body = _raw_upload(host, {"Content-Type": "application/x-tar", "Content-Length": str(announced)})
        assert status == 507 and body["error"]["code"] == "insufficient_storage", body
        assert "free" in body["error"]["message"] and "to spare" in body["error"]["message"], body
        assert _leftovers(tmp_path) == []
        assert host.call("GET", "/api/health")[0] == 200
