"""The typed async HTTP client for the Host API; every CLI and test uses it.

    async with HostClient(config.host_url, config.auth.token) as host:
        result = await host.submit(["python", "train.py"], cores=4, memory=8 << 30)
        done = await host.wait(result["task_ids"], timeout=600)

Contract:
- Every method returns the decoded JSON body exactly as `host/openapi.yaml`
  documents it (so `--json` prints what the API said), except `logs`
  (raw bytes plus the two headers) and `openapi` (the YAML text).
- An answer with an error status raises `ApiError(status, code, message)`,
  taken from the API's `{"error": {"code", "message"}}` body.
- No answer at all (refused, DNS failure, reset, timeout) raises
  `HostUnreachable("cannot reach the Host at URL: reason")`; so does an
  HTTPS Host whose certificate does not verify with `ssl_context`
  (`hakuriver.tls.client_context`: the cluster CA), with what to check.
- Task ids are strings on the wire; methods accept `int` or `str` and refuse
  anything that is not an id (`ValidationError`) before sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp

from . import __version__
from .errors import HakuRiverError, HostUnreachable
from .ids import parse_id
from .models import FINAL_STATES
from .parsing import validate_env_name, validate_node_name
from .webapi import auth_headers

DEFAULT_TIMEOUT = 30.0
"""Seconds one ordinary request may take, connection included."""

CONNECT_TIMEOUT = 10.0
"""Seconds to establish the connection, whatever the request's own limit."""

WAIT_CHUNK = 60.0
"""Seconds one long-poll of POST /api/tasks/wait asks the Host to hold
(the Host allows 300); `wait` repeats it until its own deadline."""

WAIT_BATCH = 1000
"""Most ids one wait request may carry (the Host's MAX_LIST)."""

STREAMS = ("stdout", "stderr")


class LogChunk(NamedTuple):
    """One answer of the log endpoint (`HostClient.log_chunk`)."""

    data: bytes
    next_offset: int
    state: str
    attempt: int | None
    """The task's current attempt when the Host read the file (`X-HakuRiver-Task-Attempt`)."""


OPERATION_IDLE_TIMEOUT = 120.0
"""Seconds an environment operation's stream may stay silent (the Host sends a
keepalive line every 10 s) before the Host counts as unreachable."""

UPLOAD_CHUNK = 1 << 20

BACKUP_IDLE_TIMEOUT = 600.0
"""Seconds a backup's answer may keep silent: the Host copies and checks the
whole database before it sends the first byte."""

ProgressCallback = Callable[[dict[str, Any]], None]


class ApiError(HakuRiverError):
    """The Host answered with an error status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code, status=status)


def task_id_str(task_id: int | str) -> str:
    """An id as the API carries it (a decimal string), checked."""
    return str(parse_id(task_id.strip() if isinstance(task_id, str) else task_id))


class HostClient:
    """One aiohttp session to one Host. Use as an async context manager."""

    def __init__(
        self,
        base_url: str,
        token: str,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ):
        """`ssl_context` verifies an https:// Host (`hakuriver.tls.client_context`);
        None leaves aiohttp's default checks (the system's trust store)."""
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self._headers = {**auth_headers(token), "User-Agent": f"hakuriver-client/{__version__}"}
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HostClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            # The connector's context covers every request: JSON calls, streams and the shell's websocket.
            connector = aiohttp.TCPConnector(ssl=self._ssl or True)
            self._session = aiohttp.ClientSession(headers=self._headers, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ----------------------------------------------------------- plumbing
    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Mapping[str, str], bytes]:
        if self._session is None:
            raise RuntimeError("HostClient used outside 'async with' (or before open())")
        url = self.base_url + path
        limit = self.timeout if timeout is None else timeout
        client_timeout = aiohttp.ClientTimeout(total=limit, connect=min(limit, CONNECT_TIMEOUT))
        try:
            async with self._session.request(
                method, url, json=body, params=params, timeout=client_timeout, allow_redirects=False
            ) as resp:
                data = await resp.read()
                status, headers = resp.status, resp.headers
        except TimeoutError:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: no answer within {limit:g}s") from None
        except aiohttp.InvalidURL:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: not a valid URL") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: {self._reason(exc)}") from None
        if status >= 400:
            raise _api_error(status, headers, data)
        if status >= 300:
            where = headers.get("Location", "?")
            raise ApiError(
                status,
                "redirect",
                f"the Host at {self.base_url} redirected {method} {path} to {where}; "
                "check network.host_reachable_address and host_port",
            )
        return status, headers, data

    def _reason(self, exc: BaseException) -> str:
        """Why a request got no answer, in words: TLS trouble says what to check."""
        https = self.base_url.startswith("https://")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cert_error = exc.certificate_error
            detail = getattr(cert_error, "verify_message", None) or getattr(cert_error, "reason", None) or cert_error
            if getattr(cert_error, "verify_code", None) in _NAME_MISMATCH:
                hint = (
                    f"the certificate does not name {exc.host}: set network.host_reachable_address to a name "
                    "it has, or sign one that names it (hakuriver.init tls cert --dns/--ip)"
                )
            else:
                hint = "check that tls.ca_file is the cluster's CA, the one that signed the Host's certificate"
            return f"its TLS certificate was not accepted ({str(detail).rstrip('.')}); {hint}"
        if isinstance(exc, aiohttp.ClientConnectorSSLError) or (https and isinstance(exc, ssl.SSLError)):
            reason = getattr(exc, "reason", None) or getattr(getattr(exc, "os_error", None), "reason", None)
            return f"the TLS handshake failed ({reason or exc}); is the Host serving HTTPS (tls.enabled there)?"
        if isinstance(exc, aiohttp.ClientConnectorError):
            return _os_reason(exc)
        reason = str(exc) or type(exc).__name__
        if not https and isinstance(exc, aiohttp.ServerDisconnectedError):
            reason += " (if the Host serves HTTPS, set tls.enabled = true and tls.ca_file in this config)"
        return reason

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, _, data = await self._send(method, path, **kwargs)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HakuRiverError(
                f"unexpected answer from {self.base_url}{path}: not JSON; is this a HakuRiver Host?",
                code="bad_response",
            ) from None

    async def dashboard_url(self) -> str:
        """The address of the Host's web dashboard, once the Host has answered
        that it serves one there; `ApiError` 404 when its admin turned it off
        (`dashboard.enabled = false`). The page itself needs no credential:
        the login form asks for a token."""
        path = "/dashboard/"
        try:
            await self._send("GET", path)
        except ApiError as exc:
            if exc.status == 404:
                raise ApiError(
                    404, "not_found", f"the Host at {self.base_url} serves no dashboard (dashboard.enabled = false)"
                ) from None
            raise
        return self.base_url + path

    # -------------------------------------------------------------- tasks
    async def submit(
        self,
        command: Sequence[str],
        *,
        cores: int | None = None,
        memory: int | None = None,
        container: str | None = None,
        env: Mapping[str, str] | None = None,
        mounts: Iterable[object] | None = None,
        privileged: bool | None = None,
        targets: Iterable[object] | None = None,
        gpus: int | None = None,
        time_limit: int | str | None = None,
        after: Iterable[int | str] | None = None,
        after_any: Iterable[int | str] | None = None,
        array: str | None = None,
        sweep: bool = False,
        retries: int | None = None,
        retry_on_exit: bool = False,
        priority: int | None = None,
        views: bool = True,
    ) -> dict[str, Any]:
        """Submit one task per target (or one auto-placed task).

        The answer has `batch_id` and `task_ids`, and with `views` (the
        default) `tasks`, each new task's view; `views=False` asks for the ids
        only (`?reply=ids`), much less for a large array.

        `retries`: how many times a task that ends `lost` or `failed` on the
        node's side runs again; `retry_on_exit`: a non-zero exit too (see
        host/retries.py). Sent only when set, so an older Host refuses them
        rather than ignore them.

        `array`: an array spec (`0-99%8`, see `parsing.parse_array`): one task
        per index in one batch, at most one target. `sweep`: the command's
        `span:{A..B}` / `span:[a,b]` words make one task per combination (an
        array; `array` may then only be `%N`).

        `after`: task ids that must all end `completed` first; `after_any`: task
        ids that must all end, whichever way (see host/dependencies.py).

        `command` is the argv list, sent as a JSON array and never joined.
        `memory` is bytes. `mounts`/`targets` take strings or the
        `models.Mount`/`models.Target` objects. None leaves a field to the
        Host's default (e.g. `privileged` from docker.tasks_privileged).
        `time_limit` is seconds, or a duration the Host parses (`2h`, `1:30:00`).
        `priority`: higher is scheduled first (default 0; above 0 only an admin).
        """
        if isinstance(command, (str, bytes)):
            raise TypeError("command must be a list of arguments, not a string")
        body: dict[str, Any] = {"command": [str(arg) for arg in command]}
        if cores is not None:
            body["cores"] = cores
        if memory is not None:
            body["memory"] = memory
        if container is not None:
            body["container"] = container
        if env:
            body["env"] = dict(env)
        if mounts:
            body["mounts"] = [str(m) for m in mounts]
        if privileged is not None:
            body["privileged"] = privileged
        if targets:
            body["targets"] = [str(t) for t in targets]
        if gpus:
            body["gpus"] = gpus
        if time_limit is not None:
            body["time_limit"] = time_limit
        if after:
            body["after"] = [task_id_str(t) for t in after]
        if after_any:
            body["after_any"] = [task_id_str(t) for t in after_any]
        if array is not None:
            body["array"] = array
        if sweep:
            body["sweep"] = True
        if retries:
            body["retries"] = retries
        if retry_on_exit:
            body["retry_on_exit"] = True
        if priority is not None:
            body["priority"] = priority
        return await self._json("POST", "/api/tasks" if views else "/api/tasks?reply=ids", body=body)

    async def get_task(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("GET", f"/api/tasks/{task_id_str(task_id)}")

    async def list_tasks(
        self,
        state: str | Iterable[str] | None = None,
        node: str | None = None,
        limit: int = 100,
        before: int | str | None = None,
        user: str | None = None,
        since: float | None = None,
        batch: int | str | None = None,
    ) -> dict[str, Any]:
        """Newest first. `state` is one state, "a,b", or a list; `since` (epoch
        seconds): only tasks that finished at or after it; `batch`: only the
        tasks of this batch. Returns
        {"tasks": [...], "next_before": id or None}: pass `next_before` as
        `before` for the next page."""
        params: dict[str, str] = {"limit": str(limit)}
        if state:
            params["state"] = state if isinstance(state, str) else ",".join(state)
        if node:
            params["node"] = node
        if user:
            params["user"] = user
        if since is not None:
            params["since"] = repr(float(since))
        if before is not None:
            params["before"] = task_id_str(before)
        if batch is not None:
            params["batch"] = task_id_str(batch)
        return await self._json("GET", "/api/tasks", params=params)

    async def batch_task_ids(self, batch_id: int | str) -> list[str]:
        """The ids of every task of a batch, oldest first (paged; empty: no such batch).

        Checked here too: a Host from before batches ignores `batch=` and lists
        every task, and the first page with none of the batch ends the search."""
        batch = task_id_str(batch_id)
        ids: list[str] = []
        before: str | None = None
        while True:
            page = await self.list_tasks(limit=1000, before=before, batch=batch)
            mine = [str(t["task_id"]) for t in page["tasks"] if str(t.get("batch_id")) == batch]
            ids.extend(mine)
            before = page.get("next_before")
            if not before or not mine:
                return sorted(ids, key=int)

    async def kill_batch(self, batch_id: int | str) -> dict[str, Any]:
        """Kill every task of a batch that has not ended: {"batch_id", "killed": [ids], "tasks": [...]}."""
        return await self._json("POST", f"/api/batches/{task_id_str(batch_id)}/kill")

    async def kill(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("POST", f"/api/tasks/{task_id_str(task_id)}/kill")

    async def set_priority(self, task_id: int | str, priority: int) -> dict[str, Any]:
        """A pending task's new priority (its owner may lower it; only an admin raise it)."""
        return await self._json("POST", f"/api/tasks/{task_id_str(task_id)}/priority", body={"priority": priority})

    async def set_batch_priority(self, batch_id: int | str, priority: int) -> dict[str, Any]:
        """Every pending task of a batch gets `priority`: {"batch_id", "priority",
        "changed": [ids], "unchanged": [ids no longer pending]}."""
        return await self._json("POST", f"/api/batches/{task_id_str(batch_id)}/priority", body={"priority": priority})

    async def pause(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("POST", f"/api/tasks/{task_id_str(task_id)}/pause")

    async def resume(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("POST", f"/api/tasks/{task_id_str(task_id)}/resume")

    async def wait(self, task_ids: Iterable[int | str], timeout: float | None = None) -> dict[str, Any]:
        """Wait until every task is final, or `timeout` seconds (None: forever).

        Long-polls POST /api/tasks/wait in chunks of WAIT_CHUNK seconds and
        batches of WAIT_BATCH ids. Returns {"tasks": [...], "done": bool}
        with tasks in the order asked; `done` is False when the deadline
        passed first.
        """
        ids = list(dict.fromkeys(task_id_str(t) for t in task_ids))
        if not ids:
            return {"tasks": [], "done": True}
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + max(0.0, timeout)
        by_id: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), WAIT_BATCH):
            batch = ids[start : start + WAIT_BATCH]
            while True:
                remaining = WAIT_CHUNK if deadline is None else max(0.0, min(WAIT_CHUNK, deadline - loop.time()))
                result = await self._json(
                    "POST",
                    "/api/tasks/wait",
                    body={"task_ids": batch, "timeout": round(remaining, 3)},
                    timeout=remaining + self.timeout,
                )
                if result.get("done") or (deadline is not None and loop.time() >= deadline):
                    break
            for task in result.get("tasks", []):
                by_id[str(task["task_id"])] = task
        tasks = [by_id[i] for i in ids if i in by_id]
        return {"tasks": tasks, "done": len(tasks) == len(ids) and all(is_final(t["state"]) for t in tasks)}

    async def logs(
        self,
        task_id: int | str,
        stream: str = "stdout",
        offset: int = 0,
        tail: int | None = None,
        attempt: int | None = None,
    ) -> tuple[bytes, int, str]:
        """One chunk of a task's log: (data, next_offset, task_state).

        With `tail`, the chunk starts at the last `tail` lines and `offset`
        is ignored. Read on from `next_offset`; an empty chunk means nothing
        more has been written yet (or the log does not exist yet).
        `attempt`: that attempt's output (`--retries`), not the current one's.
        """
        chunk = await self.log_chunk(task_id, stream, offset, tail, attempt)
        return chunk.data, chunk.next_offset, chunk.state

    async def log_chunk(
        self,
        task_id: int | str,
        stream: str = "stdout",
        offset: int = 0,
        tail: int | None = None,
        attempt: int | None = None,
    ) -> LogChunk:
        """`logs`, with the task's current attempt as the Host read it before
        the file (None from a Host that does not say)."""
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {stream!r}")
        params = {"stream": stream}
        if attempt is not None:
            params["attempt"] = str(attempt)
        if tail is not None:
            params["tail"] = str(tail)
        else:
            params["offset"] = str(offset)
        path = f"/api/tasks/{task_id_str(task_id)}/logs"
        _, headers, data = await self._send("GET", path, params=params)
        try:
            next_offset = int(headers["X-HakuRiver-Next-Offset"])
            state = headers["X-HakuRiver-Task-State"]
        except (KeyError, ValueError):
            raise HakuRiverError(
                f"unexpected answer from {self.base_url}{path}: missing X-HakuRiver-Next-Offset/Task-State headers",
                code="bad_response",
            ) from None
        raw_attempt = headers.get("X-HakuRiver-Task-Attempt", "")
        current = int(raw_attempt) if raw_attempt.isascii() and raw_attempt.isdigit() else None
        return LogChunk(data, next_offset, state, current)

    # -------------------------------------------------------------- nodes
    async def nodes(self) -> dict[str, Any]:
        """{"nodes": [node, ...]}."""
        return await self._json("GET", "/api/nodes")

    async def node(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/nodes/{validate_node_name(name)}")

    async def whoami(self) -> dict[str, Any]:
        return await self._json("GET", "/api/whoami")

    async def usage(self, *, by: str = "user", since: float | None = None, user: str | None = None) -> dict[str, Any]:
        """Core-hours and GPU-hours of final tasks by user or node
        ({"by", "since", "user", "rows": [...], "total": {...}}); `since` in epoch seconds."""
        params: dict[str, str] = {"by": by}
        if since is not None:
            params["since"] = repr(float(since))
        if user:
            params["user"] = user
        return await self._json("GET", "/api/usage", params=params)

    async def fairshare(self) -> dict[str, Any]:
        """Each user's decayed recent usage, lightest first (a non-admin: their own)."""
        return await self._json("GET", "/api/fairshare")

    async def list_users(self) -> dict[str, Any]:
        return await self._json("GET", "/api/users")

    async def add_user(
        self,
        name: str,
        *,
        admin: bool = False,
        unix_user: str | None = None,
        limits: dict[str, int | None] | None = None,
    ) -> dict[str, Any]:
        """Returns {"user": {...}, "token": ...}; the token is shown only this once.
        `limits`: the user's own limits (max_cores, max_gpus, max_running; 0: unlimited)."""
        body: dict[str, Any] = {"name": name, "admin": admin}
        if unix_user is not None:
            body["unix_user"] = unix_user
        if limits:
            body["limits"] = limits
        return await self._json("POST", "/api/users", body=body)

    async def set_user_limits(self, name: str, limits: dict[str, int | None]) -> dict[str, Any]:
        """Change some of a user's own limits; None clears one to the cluster default."""
        return await self._json("PATCH", f"/api/users/{quote(name, safe='')}", body={"limits": limits})

    async def remove_user(self, name: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/api/users/{quote(name, safe='')}")

    async def issue_token(self, name: str, *, revoke_all: bool = False) -> dict[str, Any]:
        return await self._json("POST", f"/api/users/{quote(name, safe='')}/tokens", body={"revoke_all": revoke_all})

    async def forget_node(self, name: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/nodes/{quote(name, safe='')}/forget")

    async def drain_node(self, name: str, reason: str | None = None) -> dict[str, Any]:
        """Place no new task on the node (admin only); returns the node. Again on a
        drained node, it replaces the reason."""
        body = {} if reason is None else {"reason": reason}
        return await self._json("POST", f"/api/nodes/{quote(name, safe='')}/drain", body=body)

    async def resume_node(self, name: str) -> dict[str, Any]:
        """Undo a drain (admin only); returns the node."""
        return await self._json("POST", f"/api/nodes/{quote(name, safe='')}/resume")

    async def backup(
        self,
        dest: str | Path,
        *,
        overwrite: bool = False,
        verify: Callable[[str], object] | None = None,
    ) -> dict[str, Any]:
        """Save an online, consistent copy of the Host database at `dest` (admin only).

        The answer goes to a private temporary file (0600) in `dest`'s
        directory; its length and sha256 are checked against what the Host
        said, then `verify(temp_path)` (if given) may refuse it by raising;
        only then does it get its name, atomically: without `overwrite` an
        existing `dest` is never replaced (a hard link refuses it). A failure
        at any point leaves nothing at `dest` and no temporary file. Returns
        {"path", "bytes", "sha256", "schema_version"}. The copy holds token
        hashes and tasks' environment values: keep it private.
        """
        if self._session is None:
            raise RuntimeError("HostClient used outside 'async with' (or before open())")
        dest = Path(dest)
        if not overwrite and os.path.lexists(dest):
            raise HakuRiverError(f"{dest} exists; pass --force to replace it", code="local_file")
        if not dest.parent.is_dir():
            raise HakuRiverError(f"cannot write {dest}: directory {dest.parent} does not exist", code="local_file")
        url = self.base_url + "/api/backup"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=BACKUP_IDLE_TIMEOUT)
        try:
            fd, tmp = await asyncio.to_thread(
                tempfile.mkstemp, prefix=f".{dest.name}.", suffix=".part", dir=str(dest.parent)
            )
        except OSError as exc:
            raise HakuRiverError(f"cannot write in {dest.parent}: {exc.strerror or exc}", code="local_file") from None
        done = False
        try:
            await asyncio.to_thread(os.fchmod, fd, 0o600)
            try:
                async with self._session.get(url, timeout=timeout, allow_redirects=False) as resp:
                    if resp.status >= 400:
                        raise _api_error(resp.status, resp.headers, await resp.read())
                    expected_sha = resp.headers.get("X-HakuRiver-Sha256", "")
                    expected_len = resp.content_length
                    version = resp.headers.get("X-HakuRiver-Schema-Version", "")
                    digest = hashlib.sha256()
                    received = 0
                    async for chunk in resp.content.iter_chunked(UPLOAD_CHUNK):
                        digest.update(chunk)
                        received += len(chunk)
                        await asyncio.to_thread(_write_all, fd, chunk)
            except TimeoutError:
                raise HostUnreachable(
                    f"the Host at {self.base_url} went silent for {BACKUP_IDLE_TIMEOUT:g}s during the backup"
                ) from None
            except (aiohttp.ClientError, OSError) as exc:
                raise HostUnreachable(
                    f"the backup from {self.base_url} was cut off: {self._reason(exc)}; nothing was written to {dest}"
                ) from None
            if expected_len is None or received != expected_len or digest.hexdigest() != expected_sha:
                raise HakuRiverError(
                    f"the backup from {self.base_url} arrived incomplete or altered ({received} bytes of "
                    f"{expected_len}); nothing was written to {dest}",
                    code="bad_response",
                )
            await asyncio.to_thread(os.fsync, fd)
            if verify is not None:
                await asyncio.to_thread(verify, tmp)
            await asyncio.to_thread(_install, tmp, dest, overwrite)
            done = True
        finally:
            os.close(fd)
            if not done:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return {"path": str(dest), "bytes": received, "sha256": expected_sha, "schema_version": int(version or 0)}

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/api/health")

    async def openapi(self) -> str:
        _, _, data = await self._send("GET", "/api/openapi.yaml")
        return data.decode("utf-8", "replace")

    async def metrics(self) -> str:
        """The Prometheus text of `GET /metrics` (an admin's token or the scrape token)."""
        _, _, data = await self._send("GET", "/metrics")
        return data.decode("utf-8", "replace")

    # ------------------------------------------------------- environments
    # Names are checked locally (parsing.validate_env_name) before anything is
    # sent, with the same message the Host would give.
    async def list_env_containers(self) -> dict[str, Any]:
        """{"containers": [{"name", "container", "id", "status", "image", "created"}, ...]}."""
        return await self._json("GET", "/api/environments/containers")

    async def create_env_container(
        self, name: str, image: str, *, pull: bool = False, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """Start the environment container `hakuriver-env-<name>` from a local image
        (pulled first only with `pull`). Returns the container as listed."""
        path = f"/api/environments/containers/{validate_env_name(name)}"
        return await self._operation("POST", path, body={"image": image, "pull": pull}, progress=progress)

    async def start_env_container(self, name: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/environments/containers/{validate_env_name(name)}/start")

    async def stop_env_container(self, name: str) -> dict[str, Any]:
        return await self._json("POST", f"/api/environments/containers/{validate_env_name(name)}/stop", timeout=60)

    async def delete_env_container(self, name: str) -> dict[str, Any]:
        return await self._json("DELETE", f"/api/environments/containers/{validate_env_name(name)}", timeout=60)

    async def create_tarball(self, name: str, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
        """create-tar: commit the environment container as a new version and save its
        tarball. Returns {"name", "version", "file", "size", "image", "removed"}."""
        path = f"/api/environments/containers/{validate_env_name(name)}/tarball"
        return await self._operation("POST", path, progress=progress)

    async def list_tarballs(self, name: str | None = None) -> dict[str, Any]:
        """{"tarballs": [{"name", "version", "file", "size"}, ...]}, newest version first per name."""
        params = {"name": validate_env_name(name)} if name else None
        return await self._json("GET", "/api/environments/tarballs", params=params)

    async def delete_tarball(self, name: str, version: int | None = None) -> dict[str, Any]:
        """Delete one version, or every version when `version` is None. {"deleted": [...]}."""
        params = {"version": str(int(version))} if version is not None else None
        return await self._json("DELETE", f"/api/environments/tarballs/{validate_env_name(name)}", params=params)

    async def import_image(
        self, name: str, image: str, *, pull: bool = False, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """A new version of environment `name` made from an image on the Host."""
        path = f"/api/environments/tarballs/{validate_env_name(name)}/image"
        return await self._operation("POST", path, body={"image": image, "pull": pull}, progress=progress)

    async def import_tar(
        self, name: str, file: str | Path, *, progress: ProgressCallback | None = None
    ) -> dict[str, Any]:
        """A new version of environment `name` from a local `docker save` tarball (uploaded)."""
        path = f"/api/environments/tarballs/{validate_env_name(name)}/tar"
        file = Path(file)
        try:
            size = file.stat().st_size
            fh = await asyncio.to_thread(open, file, "rb")
        except OSError as exc:
            raise HakuRiverError(f"cannot read {file}: {exc.strerror or exc}", code="local_file") from None

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            try:
                while chunk := await asyncio.to_thread(fh.read, UPLOAD_CHUNK):
                    sent += len(chunk)
                    if progress is not None:
                        progress(
                            {
                                "event": "progress",
                                "stage": "upload",
                                "message": f"sent {sent >> 20} MiB",
                                "bytes": sent,
                                "total": size,
                            }
                        )
                    yield chunk
            finally:
                fh.close()

        try:
            return await self._operation(
                "POST", path, data=chunks(), progress=progress, headers={"Content-Type": "application/x-tar"}
            )
        finally:
            fh.close()

    async def open_shell(
        self, name: str, *, command: Sequence[str] | None = None, rows: int = 24, cols: int = 80, term: str = "xterm"
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket to a terminal in the environment container (see cli/docker.py for
        the framing). The bearer token travels in the handshake's headers."""
        if self._session is None:
            raise RuntimeError("HostClient used outside 'async with' (or before open())")
        params: list[tuple[str, str]] = [("rows", str(rows)), ("cols", str(cols)), ("term", term)]
        params += [("cmd", str(arg)) for arg in command or ()]
        url = f"{self.base_url}/api/environments/containers/{validate_env_name(name)}/shell"
        try:
            ws = await self._session.ws_connect(
                url,
                params=params,
                heartbeat=30.0,
                autoping=True,
                max_msg_size=1 << 22,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
            )
        except aiohttp.WSServerHandshakeError as exc:
            status = exc.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: {self._reason(exc)}") from None
        else:
            return ws
        # A refused handshake carries no reason: ask again without the upgrade to read it.
        await self._send("GET", url[len(self.base_url) :], params=dict(params[:3]))
        raise ApiError(status, f"http_{status}", f"the Host refused the shell (HTTP {status})")

    async def _operation(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> dict[str, Any]:
        """Run a long environment operation: read its NDJSON stream, hand each
        progress line to `progress`, return the final result (or raise its error)."""
        if self._session is None:
            raise RuntimeError("HostClient used outside 'async with' (or before open())")
        url = self.base_url + path
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=OPERATION_IDLE_TIMEOUT)
        try:
            async with self._session.request(
                method, url, json=body, data=data, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status >= 400:
                    raise _api_error(resp.status, resp.headers, await resp.read())
                async for line in resp.content:
                    if not line.strip():
                        continue
                    try:
                        event = json.loads(line)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise HakuRiverError(f"unexpected answer from {url}: not NDJSON", code="bad_response") from None
                    kind = event.get("event")
                    if kind == "done":
                        return event.get("result") or {}
                    if kind == "error":
                        err = event.get("error") or {}
                        raise ApiError(
                            502 if err.get("code") == "docker" else 400 if err.get("code") == "invalid" else 500,
                            str(err.get("code", "error")),
                            str(err.get("message", "failed")),
                        )
                    if kind == "progress" and progress is not None:
                        progress(event)
        except TimeoutError:
            raise HostUnreachable(
                f"the Host at {self.base_url} went silent for {OPERATION_IDLE_TIMEOUT:g}s during "
                f"{method} {path}; the operation may still finish there"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: {self._reason(exc)}") from None
        raise HostUnreachable(
            f"the Host at {self.base_url} ended {method} {path} without a result; the operation may still finish there"
        )


_FINAL = frozenset(s.value for s in FINAL_STATES)
_NAME_MISMATCH = (62, 64)
"""OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _install(tmp: str, dest: Path, overwrite: bool) -> None:
    """Give the finished file `tmp` its name `dest`, atomically; without
    `overwrite`, only if `dest` does not exist at that moment."""
    try:
        if overwrite:
            os.replace(tmp, dest)
        else:
            os.link(tmp, dest, follow_symlinks=False)
            os.unlink(tmp)
    except FileExistsError:
        raise HakuRiverError(f"{dest} exists; pass --force to replace it", code="local_file") from None
    except OSError as exc:
        raise HakuRiverError(f"cannot write {dest}: {exc.strerror or exc}", code="local_file") from None
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def is_final(state: str) -> bool:
    """Whether a state string (as the API sends it) is final."""
    return state in _FINAL


def _os_reason(exc: aiohttp.ClientConnectorError) -> str:
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, socket.gaierror):
        return f"cannot resolve the name ({os_error.strerror or os_error})"
    errno = getattr(os_error, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno).lower()  # "connection refused", not "Connect call failed ('h', p)"
    return getattr(os_error, "strerror", None) or str(os_error or exc)


def _api_error(status: int, headers: Mapping[str, str], data: bytes) -> ApiError:
    try:
        body = json.loads(data)
        err = body["error"]
        return ApiError(status, str(err["code"]), str(err["message"]))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        pass
    snippet = data[:200].decode("utf-8", "replace").strip().replace("\n", " ")
    text = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    return ApiError(status, f"http_{status}", f"{text} (not a HakuRiver error body; is this a HakuRiver Host?)")
