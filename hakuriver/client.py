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
  `HostUnreachable("cannot reach the Host at URL: reason")`.
- Task ids are strings on the wire; methods accept `int` or `str` and refuse
  anything that is not an id (`ValidationError`) before sending.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any, Iterable, Mapping, Sequence

import aiohttp

from . import __version__
from .errors import HakuRiverError, HostUnreachable
from .ids import parse_id
from .models import FINAL_STATES
from .parsing import validate_node_name
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


class ApiError(HakuRiverError):
    """The Host answered with an error status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code, status=status)


def task_id_str(task_id: int | str) -> str:
    """An id as the API carries it (a decimal string), checked."""
    return str(parse_id(task_id.strip() if isinstance(task_id, str) else task_id))


class HostClient:
    """One aiohttp session to one Host. Use as an async context manager."""

    def __init__(self, base_url: str, token: str, timeout: float = DEFAULT_TIMEOUT):
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout)
        self._headers = {**auth_headers(token), "User-Agent": f"hakuriver-client/{__version__}"}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HostClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self._headers)

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
        except asyncio.TimeoutError:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: no answer within {limit:g}s") from None
        except aiohttp.InvalidURL:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: not a valid URL") from None
        except aiohttp.ClientConnectorError as exc:
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: {_os_reason(exc)}") from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise HostUnreachable(f"cannot reach the Host at {self.base_url}: {reason}") from None
        if status >= 400:
            raise _api_error(status, headers, data)
        if status >= 300:
            where = headers.get("Location", "?")
            raise ApiError(status, "redirect", f"the Host at {self.base_url} redirected {method} {path} to {where}; "
                                               "check network.host_reachable_address and host_port")
        return status, headers, data

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        _, _, data = await self._send(method, path, **kwargs)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise HakuRiverError(
                f"unexpected answer from {self.base_url}{path}: not JSON; is this a HakuRiver Host?",
                code="bad_response",
            ) from None

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
    ) -> dict[str, Any]:
        """Submit one task per target (or one auto-placed task).

        `command` is the argv list, sent as a JSON array and never joined.
        `memory` is bytes. `mounts`/`targets` take strings or the
        `models.Mount`/`models.Target` objects. None leaves a field to the
        Host's default (e.g. `privileged` from docker.tasks_privileged).
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
        return await self._json("POST", "/api/tasks", body=body)

    async def get_task(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("GET", f"/api/tasks/{task_id_str(task_id)}")

    async def list_tasks(
        self,
        state: str | Iterable[str] | None = None,
        node: str | None = None,
        limit: int = 100,
        before: int | str | None = None,
    ) -> dict[str, Any]:
        """Newest first. `state` is one state, "a,b", or a list. Returns
        {"tasks": [...], "next_before": id or None}: pass `next_before` as
        `before` for the next page."""
        params: dict[str, str] = {"limit": str(limit)}
        if state:
            params["state"] = state if isinstance(state, str) else ",".join(state)
        if node:
            params["node"] = node
        if before is not None:
            params["before"] = task_id_str(before)
        return await self._json("GET", "/api/tasks", params=params)

    async def kill(self, task_id: int | str) -> dict[str, Any]:
        return await self._json("POST", f"/api/tasks/{task_id_str(task_id)}/kill")

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
            batch = ids[start:start + WAIT_BATCH]
            while True:
                remaining = WAIT_CHUNK if deadline is None else max(0.0, min(WAIT_CHUNK, deadline - loop.time()))
                result = await self._json(
                    "POST", "/api/tasks/wait", body={"task_ids": batch, "timeout": round(remaining, 3)},
                    timeout=remaining + self.timeout,
                )
                if result.get("done") or (deadline is not None and loop.time() >= deadline):
                    break
            for task in result.get("tasks", []):
                by_id[str(task["task_id"])] = task
        tasks = [by_id[i] for i in ids if i in by_id]
        return {"tasks": tasks, "done": len(tasks) == len(ids) and all(is_final(t["state"]) for t in tasks)}

    async def logs(
        self, task_id: int | str, stream: str = "stdout", offset: int = 0, tail: int | None = None
    ) -> tuple[bytes, int, str]:
        """One chunk of a task's log: (data, next_offset, task_state).

        With `tail`, the chunk starts at the last `tail` lines and `offset`
        is ignored. Read on from `next_offset`; an empty chunk means nothing
        more has been written yet (or the log does not exist yet).
        """
        if stream not in STREAMS:
            raise ValueError(f"stream must be one of {STREAMS}, not {stream!r}")
        params = {"stream": stream}
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
        return data, next_offset, state

    # -------------------------------------------------------------- nodes
    async def nodes(self) -> dict[str, Any]:
        """{"nodes": [node, ...]}."""
        return await self._json("GET", "/api/nodes")

    async def node(self, name: str) -> dict[str, Any]:
        return await self._json("GET", f"/api/nodes/{validate_node_name(name)}")

    async def health(self) -> dict[str, Any]:
        return await self._json("GET", "/api/health")

    async def openapi(self) -> str:
        _, _, data = await self._send("GET", "/api/openapi.yaml")
        return data.decode("utf-8", "replace")


_FINAL = frozenset(s.value for s in FINAL_STATES)


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
