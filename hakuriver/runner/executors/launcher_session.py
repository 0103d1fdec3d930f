"""One long-lived task launcher for the systemd backend: `sudo -n <launcher> serve`.

Why
    A one-shot launcher call is a sudo, a Python start, the compile of the
    launcher and its imports before it does anything: on a slow node about
    60 ms of every NULL task's start, and again for its cleanup. `serve` is
    the same root-owned launcher, started once through the same sudoers rule,
    answering the same subcommands over its stdin and stdout (one line of JSON
    each way, see `hakuriver.launcher.cmd_serve`). Every request is validated
    and answered by the launcher's own `main`, with its config read afresh, so
    an answer is exactly what the one-shot call would have printed.

Trust
    Unchanged. The pipes belong to this runner alone, which may run each of
    these subcommands through sudo anyway; `serve` refuses `exec`, `poststop`
    and itself. The launcher answers `restart` (running nothing) once its file
    has changed, so an upgraded launcher takes over at the next call.

When the one-shot call is used instead (`call` returns None)
    The session is busy with another request (one request at a time: a slow
    systemctl never holds up the others); it is not started or has ended, and
    starting it failed less than `retry_after` seconds ago (a launcher from
    before `serve` refuses it; sudo may refuse it); or the launcher asked for a
    restart. A session that ends while a request is in flight fails that
    request (ExecutorError), as a one-shot launcher that died would: whether
    it ran is unknown, so it is not run a second time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...errors import ExecutorError
from ...launcher import SERVE_VERSION

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 15.0
"""How long a starting session may take to say hello (sudo, a Python start)."""
RETRY_AFTER = 60.0
"""How long after a failed start the one-shot calls are used before trying again."""
CLOSE_WAIT = 30.0
"""How long `close` waits for the request in flight."""
LINE_LIMIT = 64 * 1024 * 1024
"""The longest answer line read (an answer carries a subcommand's output)."""


@dataclass(frozen=True)
class Call:
    """What one launcher call exited with and printed."""

    rc: int
    stdout: str
    stderr: str


class LauncherSession:
    """A `launcher serve` process, started on first use (see the module doc)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        hello_timeout: float = HELLO_TIMEOUT,
        retry_after: float = RETRY_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`argv`: the command that starts the session (`sudo -n -- <launcher> serve`)."""
        self.argv = list(argv)
        self.hello_timeout = hello_timeout
        self.retry_after = retry_after
        self.clock = clock
        self._proc: asyncio.subprocess.Process | None = None
        self._drainer: asyncio.Task[None] | None = None
        self._reapers: set[asyncio.Task[int]] = set()
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self._closed = False
        self.pid: int | None = None
        """The serving launcher's pid (for tests and logs), once it said hello."""

    async def call(self, args: Sequence[str], *, input: bytes | None, timeout: float) -> Call | None:
        """Run the launcher subcommand `args` in the session; None where the caller
        should run the one-shot launcher instead (see the module doc). ExecutorError
        when the session ended or did not answer within `timeout` mid-request."""
        if self._closed or self._lock.locked():
            return None
        async with self._lock:
            try:
                return await self._exchange(args, input, timeout)
            except asyncio.CancelledError:
                # Its request may be in flight: the answer must never be read as the
                # next request's. A new session serves the next one.
                self._abandon("was abandoned: its caller was cancelled")
                raise

    async def _exchange(self, args: Sequence[str], input: bytes | None, timeout: float) -> Call | None:
        proc = await self._ensure_started()
        if proc is None:
            return None
        assert proc.stdin is not None and proc.stdout is not None
        line = json.dumps({"argv": list(args), "input": None if input is None else input.decode("latin-1")})
        try:
            proc.stdin.write(line.encode("ascii") + b"\n")
            await proc.stdin.drain()
        except (OSError, RuntimeError) as exc:  # it had ended: the request never reached it
            await self._end(f"had ended ({exc})")
            return None
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), timeout)
        except TimeoutError:
            await self._end("did not answer in time")
            raise ExecutorError(f"the task launcher did not answer {args[0]} within {timeout:.0f}s") from None
        except (OSError, ValueError) as exc:  # a line over the limit
            await self._end(f"failed: {exc}")
            raise ExecutorError(f"the task launcher's session ended during {args[0]}: {exc}") from None
        if not raw.endswith(b"\n"):
            await self._end("ended")
            raise ExecutorError(f"the task launcher's session ended during {args[0]}")
        try:
            answer = json.loads(raw)
            if "restart" in answer:
                log.info("task launcher session: %s; starting a new one", answer["restart"])
                await self._end("asked for a restart")
                return None
            return Call(int(answer["rc"]), str(answer["stdout"]), str(answer["stderr"]))
        except (ValueError, KeyError, TypeError):
            await self._end("answered something else than JSON")
            raise ExecutorError(f"the task launcher's session answered {args[0]} with {raw[:200]!r}") from None

    async def _ensure_started(self) -> asyncio.subprocess.Process | None:
        if self._proc is not None and self._proc.returncode is None:
            return self._proc
        self._proc = None
        if self._failed_at is not None and self.clock() - self._failed_at < self.retry_after:
            return None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            self._start_failed(f"cannot run {self.argv[0]}: {exc.strerror or exc}")
            return None
        assert proc.stdout is not None
        self._proc = proc  # from here on, `_abandon` ends it if the caller is cancelled
        try:
            hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), self.hello_timeout) or b"null")
            if not isinstance(hello, dict) or hello.get("serve") != SERVE_VERSION:
                raise ValueError(f"no hello of serve version {SERVE_VERSION}")
        except (TimeoutError, ValueError, OSError) as exc:
            self._proc = None
            why = await self._stop(proc, read_stderr=True)
            self._start_failed(why or str(exc) or type(exc).__name__)
            return None
        if self._closed or self._proc is not proc:  # closed while it started
            await self._stop(proc)
            return None
        self._failed_at = None
        self.pid = int(hello.get("pid") or 0) or None
        self._drainer = asyncio.get_running_loop().create_task(self._drain_stderr(proc))
        log.info("task launcher session started (pid %s)", self.pid)
        return proc

    def _start_failed(self, why: str) -> None:
        self._failed_at = self.clock()
        log.info(
            "task launcher session not available (%s); calling the launcher once per request for %.0fs",
            " ".join(why.split())[:300],
            self.retry_after,
        )

    @staticmethod
    async def _drain_stderr(proc: asyncio.subprocess.Process) -> None:
        """What the serving launcher prints to stderr (only its own failures: each
        request's output travels in its answer), to the log."""
        assert proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            async for line in proc.stderr:
                log.warning("task launcher session: %s", line.decode(errors="replace").rstrip())

    async def _stop(self, proc: asyncio.subprocess.Process, *, read_stderr: bool = False) -> str:
        """End `proc` (stdin closed, then killed after a grace); with `read_stderr`
        (no `_drain_stderr` reads it), what it printed there."""
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.kill()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                self._reap_later(proc)
        err = b""
        if read_stderr and proc.stderr is not None and not proc.stderr.at_eof():
            with contextlib.suppress(OSError, ValueError, TimeoutError):
                err = await asyncio.wait_for(proc.stderr.read(4000), 1.0)
        return err.decode(errors="replace").strip()

    def _reap_later(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for `proc` in the background. Through sudo the runner may not signal it
        (sudo runs as root); it ends at its stdin's end, once its request is done (a
        hung tool is killed by the launcher's own timeout)."""
        reaper = asyncio.get_running_loop().create_task(proc.wait())
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)

    def _abandon(self, why: str) -> None:
        """End the session now, without awaiting anything (its caller is being cancelled)."""
        proc, self._proc = self._proc, None
        drainer, self._drainer = self._drainer, None
        if proc is not None:
            log.info("task launcher session (pid %s) %s", self.pid, why)
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.kill()
            self._reap_later(proc)
        if drainer is not None:
            drainer.cancel()

    async def _end(self, why: str) -> None:
        proc, self._proc = self._proc, None
        drainer, self._drainer = self._drainer, None
        if proc is not None:
            log.info("task launcher session (pid %s) %s", self.pid, why)
            await self._stop(proc)
        if drainer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drainer), 1.0)  # at the stderr's end
            drainer.cancel()

    async def close(self, *, wait: float = CLOSE_WAIT) -> None:
        """End the session (its launcher exits at the end of its stdin), after the
        request in flight, if any, for `wait` seconds at most: a start cut short
        would leave a unit nobody reports."""
        self._closed = True
        try:
            await asyncio.wait_for(self._lock.acquire(), wait)
        except TimeoutError:
            await self._end("closed with a request in flight")
            return
        try:
            await self._end("closed")
        finally:
            self._lock.release()
