"""`hakuriver.docker shell` on the Host: a terminal in an environment container,
relayed over a websocket.

`EnvironmentManager.open_shell` starts the program through `docker exec` with a
terminal and hands the session its attached socket and a `DockerShell`, the
exec's Docker side (resize, exit status, hang-up), defined here with the
session that moves the bytes:

- A dedicated daemon thread reads the exec's stream into a bounded queue, so
  a slow client slows the program down rather than filling the Host's
  memory. Writes, resizes and status calls run in the manager's small shell
  pool, never on the event loop.
- `close()` hangs the program up if it still runs (SIGHUP, then SIGKILL), so a
  dropped connection never leaves a shell behind in the container.

Wire format (the CLI side is `cli/docker.py`): binary frames are terminal
bytes, both ways. Text frames are JSON control messages: the client sends
`{"type": "resize", "rows": R, "cols": C}`; the Host sends
`{"type": "exit", "code": N}` when the program has ended, then closes, or
`{"type": "error", "message": ...}` for a refused control message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import ValidationError

log = logging.getLogger(__name__)

MAX_TERMINAL = 10000
"""Largest rows or cols a resize may ask for."""
READ_SIZE = 65536


class ShellBackend(Protocol):
    """The Docker side of one shell; blocking calls, run in the shell pool."""

    def resize(self, rows: int, cols: int) -> None: ...

    def status(self) -> tuple[bool, int | None]:
        """(still running, exit code)."""

    def hang_up(self, stop: threading.Event) -> None: ...


class DockerShell:
    """The Docker side of one shell, a `ShellBackend`: resize, exit status, hang-up
    of the exec `exec_id` (blocking; called in the shell pool by `ShellSession`).
    `api` gives the APIClient (`EnvironmentManager`'s engine)."""

    def __init__(self, api: Callable[[], Any], name: str, exec_id: str):
        self.api, self.name, self.exec_id = api, name, exec_id

    def resize(self, rows: int, cols: int) -> None:
        self.api().exec_resize(self.exec_id, height=rows, width=cols)

    def status(self) -> tuple[bool, int | None]:
        """(still running, exit code)."""
        info = self.api().exec_inspect(self.exec_id)
        return bool(info.get("Running")), info.get("ExitCode")

    def hang_up(self, stop: threading.Event) -> None:
        """SIGHUP, then SIGKILL, the program if it still runs (a dropped connection
        must not leave a shell behind in the environment container)."""
        api = self.api()
        info = api.exec_inspect(self.exec_id)
        if not info.get("Running"):
            return
        pid = _namespace_pid(int(info.get("Pid") or 0))
        container = info.get("ContainerID")
        if pid is None or not container:
            log.warning("a shell in environment %s may still run (cannot tell its pid)", self.name)
            return
        for signal_name in ("HUP", "KILL"):
            # A fixed script; the pid is a number read from /proc, never user input.
            kill = api.exec_create(container, ["/bin/sh", "-c", f'kill -{signal_name} "$1"', "sh", str(pid)])
            api.exec_start(kill["Id"])
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                if not api.exec_inspect(self.exec_id).get("Running"):
                    return
                stop.wait(0.1)
        log.warning("a shell in environment %s did not end after SIGKILL", self.name)


def _namespace_pid(host_pid: int) -> int | None:
    """The pid a host process has inside its own pid namespace (/proc NSpid), or None."""
    if host_pid <= 0:
        return None
    try:
        with open(f"/proc/{host_pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        return None
    return None


class ShellSession:
    QUEUE = 64

    def __init__(
        self,
        backend: ShellBackend,
        sock: Any,
        loop: asyncio.AbstractEventLoop,
        pool: concurrent.futures.Executor,
        *,
        name: str = "shell",
    ):
        self.backend = backend
        self.name = name
        self._io = sock
        self._sock = getattr(sock, "_sock", sock)  # the SDK hands a SocketIO around the socket
        self._loop = loop
        self._pool = pool
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(self.QUEUE)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._reader, name=f"hakuriver-shell-{name}", daemon=True)
        self._closed = False
        self.on_close: Callable[[ShellSession], None] | None = None

    def start(self) -> None:
        self._thread.start()

    # -- the reader thread ---------------------------------------------------
    def _reader(self) -> None:
        while not self._closing.is_set():
            try:
                data = self._sock.recv(READ_SIZE)
            except OSError:
                break
            if not data or not self._deliver(data):
                break
        self._deliver(None)

    def _deliver(self, item: bytes | None) -> bool:
        """Put `item` on the queue from the reader thread, waiting while it is full."""
        try:
            fut = asyncio.run_coroutine_threadsafe(self._queue.put(item), self._loop)
        except RuntimeError:  # the loop is gone
            return False
        while True:
            try:
                fut.result(timeout=1.0)
                return True
            except concurrent.futures.TimeoutError:
                if self._closing.is_set():
                    fut.cancel()
                    return False
            except Exception:  # noqa: BLE001 - cancelled along with the loop
                return False

    # -- the event loop side -------------------------------------------------
    async def read(self) -> bytes | None:
        """The next output bytes; None once the program has ended."""
        return await self._queue.get()

    async def write(self, data: bytes) -> None:
        if data and not self._closed:
            await self._loop.run_in_executor(self._pool, self._sock.sendall, data)

    async def resize(self, rows: int, cols: int) -> None:
        await self._loop.run_in_executor(self._pool, self.backend.resize, rows, cols)

    async def exit_code(self, timeout: float = 5.0) -> int | None:
        """The program's exit status (the daemon records it just after the stream ends)."""
        deadline = self._loop.time() + timeout
        while True:
            running, code = await self._loop.run_in_executor(self._pool, self.backend.status)
            if not running or self._loop.time() >= deadline:
                return code
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        if self.on_close is not None:
            self.on_close(self)
        try:
            await self._loop.run_in_executor(self._pool, self.backend.hang_up, self._closing)
        except Exception as exc:  # noqa: BLE001 - the socket is closed below regardless
            log.warning("could not end the shell in environment %s: %s", self.name, exc)
        finally:
            for close in (lambda: self._sock.shutdown(socket.SHUT_RDWR), self._io.close):
                try:
                    close()
                except OSError:
                    pass


def parse_client_message(text: str) -> tuple[int, int]:
    """A control message from the shell client: only `{"type": "resize", "rows", "cols"}`.
    Returns (rows, cols); ValidationError for anything else. Pure."""
    try:
        msg = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValidationError("control messages are JSON objects") from None
    if not isinstance(msg, dict) or msg.get("type") != "resize":
        raise ValidationError('unknown control message; expected {"type": "resize", "rows": R, "cols": C}')
    rows, cols = msg.get("rows"), msg.get("cols")
    for value in (rows, cols):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TERMINAL:
            raise ValidationError(f"'rows' and 'cols' must be whole numbers from 1 to {MAX_TERMINAL}")
    return int(rows or 0), int(cols or 0)  # checked above; `or 0` only narrows the type


async def bridge_websocket(ws: Any, session: ShellSession) -> None:
    """Relay between a prepared aiohttp WebSocketResponse and a shell until either ends."""
    from aiohttp import WSMsgType

    async def output() -> None:
        while (data := await session.read()) is not None:
            await ws.send_bytes(data)

    async def input_() -> None:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await session.write(msg.data)
            elif msg.type == WSMsgType.TEXT:
                try:
                    rows, cols = parse_client_message(msg.data)
                    await session.resize(rows, cols)
                except ValidationError as exc:
                    await ws.send_json({"type": "error", "message": exc.message})
                except Exception as exc:  # noqa: BLE001 - a failed resize is not fatal
                    log.debug("shell resize failed: %s", exc)
            elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE, WSMsgType.CLOSING):
                break

    out_task = asyncio.ensure_future(output())
    in_task = asyncio.ensure_future(input_())
    try:
        done, _ = await asyncio.wait({out_task, in_task}, return_when=asyncio.FIRST_COMPLETED)
        if out_task in done and out_task.exception() is None:
            code = await session.exit_code()
            await ws.send_json({"type": "exit", "code": code})
            await ws.close()
    except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
        log.debug("shell connection ended: %s", exc)
    finally:
        for task in (out_task, in_task):
            task.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)
        await session.close()
