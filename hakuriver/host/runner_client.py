"""The Host's client for talking to runners.

One `aiohttp.ClientSession` for the Host's lifetime, with keep-alive
connections per runner: the original built a fresh HTTPS client for every
dispatch and spent two thirds of its CPU doing so.

Failures come in two kinds, because the Host acts differently on them:
- `RunnerRejected`: the runner answered and said no (4xx). Definitive.
- `RunnerUnreachable`: no answer (refused, reset, timeout, 5xx). The runner
  may or may not have acted; heartbeats reconcile what really happened.
"""

from __future__ import annotations

import json
import logging
import ssl
from typing import Any

import aiohttp

from ..webapi import auth_headers
from .db import NodeRecord

log = logging.getLogger(__name__)


class RunnerRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RunnerUnreachable(Exception):
    pass


class RunnerClient:
    """Calls runners. Each node is called with the order token its runner
    chose at registration (`NodeRecord.order_token`); a runner registered
    before those existed gets `fallback_token` (the cluster's runner secret)."""

    def __init__(
        self,
        fallback_token: str,
        *,
        timeout: float = 10.0,
        limit_per_host: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._fallback = fallback_token
        self._ssl = ssl_context  # verifies HTTPS runners (the cluster CA); None: aiohttp's default checks
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._limit_per_host, keepalive_timeout=60, ssl=self._ssl or True
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, node: NodeRecord, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self._session is not None, "RunnerClient.start() was not awaited"
        base_url = node.url
        url = base_url.rstrip("/") + path
        headers = auth_headers(node.order_token or self._fallback)
        try:
            async with self._session.post(url, json=payload or {}, headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 500:
                    raise RunnerUnreachable(f"runner at {base_url} answered {resp.status}: {_message(text)}")
                if resp.status >= 400:
                    raise RunnerRejected(resp.status, _message(text))
                return json.loads(text) if text else {}
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RunnerUnreachable(f"cannot reach runner at {base_url}: {exc.__class__.__name__}: {exc}") from None

    async def run_task(self, node: NodeRecord, payload: dict[str, Any]) -> dict[str, Any]:
        return await self.post(node, "/api/tasks", payload)

    async def control(self, node: NodeRecord, task_id: int, action: str) -> dict[str, Any]:
        if action not in ("kill", "pause", "resume"):
            raise ValueError(action)
        return await self.post(node, f"/api/tasks/{task_id}/{action}")


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(empty response)"
