"""The Host's client for talking to runners.

One `aiohttp.ClientSession` for the Host's lifetime, with keep-alive
connections per runner: the original built a fresh HTTPS client for every
dispatch and spent two thirds of its CPU doing so.

Failures come in two kinds, because the Host acts differently on them:
- `RunnerRejected`: the runner answered and said no (4xx). Definitive.
- `RunnerUnreachable`: no answer (refused, reset, timeout, 5xx). The runner
  may or may not have acted; heartbeats reconcile what really happened.

Several tasks for one runner go in one request (`run_tasks`, the runner's
`POST /api/tasks/batch`), each with its own outcome. A runner from before that
route answers 404 or 405: it is then sent each task alone, and not asked
again for `BATCH_RETRY_SECONDS` (it may be upgraded meanwhile).
"""

from __future__ import annotations

import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp

from ..jsoncodec import dumps_bytes
from ..webapi import BATCH_BODY_BYTES, MAX_BATCH_ITEMS, auth_headers
from .db import NodeRecord

log = logging.getLogger(__name__)


class RunnerRejected(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RunnerUnreachable(Exception):
    pass


BATCH_RETRY_SECONDS = 600.0
"""How long a runner that has no batch route is sent tasks one by one before it is asked again."""

SEND_ALONE = None
"""A task's outcome in `run_tasks` when it must go by the single route instead."""

STARTED = "started"
"""A task's outcome in `run_tasks` when the runner took it and says it had
started by the time it answered (`"state": "running"` beside its status):
the task's `running` report, carried in the answer to its order."""

Outcome = str | RunnerRejected | RunnerUnreachable | None
"""One task's outcome in a batch: the runner's status (`accepted`, `already_accepted`),
`STARTED`, its refusal, no answer, or `SEND_ALONE`."""


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
        clock: Callable[[], float] = time.monotonic,
    ):
        self._fallback = fallback_token
        self._ssl = ssl_context  # verifies HTTPS runners (the cluster CA); None: aiohttp's default checks
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 5.0))
        self._limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._no_batch: dict[str, float] = {}
        """Runner URL -> when it last answered that it has no batch route (the clock's time)."""

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=self._limit_per_host, keepalive_timeout=60, ssl=self._ssl or True
        )
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, node: NodeRecord, path: str, payload: dict[str, Any] | None = None, *, body: bytes | None = None
    ) -> dict[str, Any]:
        """POST `payload` (or `body`, JSON already encoded) to the runner; its answer."""
        assert self._session is not None, "RunnerClient.start() was not awaited"
        base_url = node.url
        url = base_url.rstrip("/") + path
        headers = auth_headers(node.order_token or self._fallback)
        headers["Content-Type"] = "application/json"
        data = dumps_bytes(payload or {}) if body is None else body
        try:
            async with self._session.post(url, data=data, headers=headers) as resp:
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

    def batches_to(self, node: NodeRecord) -> bool:
        """Whether tasks for `node` go in batches (False for a while after it said it has no batch route)."""
        since = self._no_batch.get(node.url)
        if since is None:
            return True
        if self._clock() - since >= BATCH_RETRY_SECONDS:
            del self._no_batch[node.url]
            return True
        return False

    async def run_tasks(self, node: NodeRecord, payloads: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Send several run requests to one runner, as few requests as the
        bounds allow (`MAX_BATCH_ITEMS`, `BATCH_BODY_BYTES`), and return each
        one's outcome in order (see `Outcome`). Never raises for a runner's
        answer: a request that got none makes each of its tasks
        `RunnerUnreachable`; a runner without the batch route, or one that
        refuses a batch as a whole, makes them `SEND_ALONE`."""
        outcomes: list[Outcome] = []
        encoded = [dumps_bytes(p) for p in payloads]
        for chunk in _chunks(encoded):
            if not self.batches_to(node):
                outcomes.extend([SEND_ALONE] * len(chunk))
                continue
            outcomes.extend(await self._run_batch(node, chunk))
        return outcomes

    async def _run_batch(self, node: NodeRecord, chunk: list[bytes]) -> list[Outcome]:
        body = b'{"tasks":[' + b",".join(chunk) + b"]}"
        try:
            answer = await self.post(node, "/api/tasks/batch", body=body)
        except RunnerUnreachable as exc:
            return [exc] * len(chunk)
        except ValueError:  # an answer that is no JSON: each task alone gets a plain answer or error
            log.warning("runner %s answered a batch of %d tasks with no JSON", node.hostname, len(chunk))
            return [SEND_ALONE] * len(chunk)
        except RunnerRejected as exc:
            if exc.status in (404, 405):
                log.info("runner %s has no batch route (an older runner); sending it tasks one by one", node.hostname)
                self._no_batch[node.url] = self._clock()
            else:
                log.warning("runner %s refused a batch of %d tasks: %s", node.hostname, len(chunk), exc.message)
            return [SEND_ALONE] * len(chunk)
        results = answer.get("results") if isinstance(answer, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            log.warning("runner %s answered a batch of %d tasks without an outcome for each", node.hostname, len(chunk))
            return [SEND_ALONE] * len(chunk)
        return [_outcome(node, r) for r in results]

    async def control(self, node: NodeRecord, task_id: int, action: str) -> dict[str, Any]:
        if action not in ("kill", "pause", "resume"):
            raise ValueError(action)
        return await self.post(node, f"/api/tasks/{task_id}/{action}")


def _outcome(node: NodeRecord, result: Any) -> Outcome:
    """One task's outcome in a runner's answer to a batch."""
    if not isinstance(result, dict):
        return SEND_ALONE
    status = result.get("status")
    if status in ("accepted", "already_accepted"):
        return STARTED if started(result) else str(status)
    if status != "refused":
        return SEND_ALONE
    code = result.get("http_status")
    try:
        message = str(result["error"]["message"])
    except (KeyError, TypeError):
        message = "(no reason given)"
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 500:
        return RunnerRejected(code, message)
    return RunnerUnreachable(f"runner at {node.url} answered {code}: {message}")


def started(answer: Any) -> bool:
    """Whether a runner's answer to an order says its task had started by then."""
    return isinstance(answer, dict) and answer.get("state") == "running"


def _chunks(encoded: list[bytes]) -> list[list[bytes]]:
    """Run requests in order, in groups of at most `MAX_BATCH_ITEMS` and about
    `BATCH_BODY_BYTES` (a larger one goes in a group of its own)."""
    chunks: list[list[bytes]] = []
    size = 0
    for item in encoded:
        if not chunks or len(chunks[-1]) >= MAX_BATCH_ITEMS or size + len(item) > BATCH_BODY_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += len(item) + 1
    return chunks


def _message(text: str) -> str:
    try:
        return str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()[:500] or "(empty response)"
