"""The runner's link to the Host: registration, heartbeats, state reports.

HostLink owns every call the runner makes to the Host. The Supervisor only
records and posts (`supervisor.Notices`); HostLink runs three loops:

- Registration retries with capped, jittered backoff *forever*: a runner is
  never "up but unregistered" (the original gave up after five tries).
  Heartbeats then keep a monotonic schedule, and everything slow (psutil,
  NVML) runs in a thread, so starting or stopping tasks never makes one
  late. A heartbeat answered "unknown node" (a Host with a fresh database)
  triggers re-registration at once.
- Each task the Supervisor posts as started is reported `running` at once,
  once, best effort: a lost report is made good by the heartbeat, which
  lists every running task.
- Every result in the state store's durable outbox is sent until the Host
  acknowledges it, and only then deleted (results recorded before a runner
  restart are sent after it). A result whose output files are incomplete
  carries `output_error` next to its real state and exit code. A task's `running` report always goes before
  its result.
- Whatever is ready goes in one request (`POST /api/runner/reports`): every
  start posted so far, then every result in the outbox, each acknowledged
  (or dropped, when the Host refuses it for good) by its own outcome. A Host
  from before that route gets each report alone, as before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from ..config import Config
from ..jsoncodec import dumps_bytes
from ..models import NodeCapabilities, NodeResources, RunnerReport, TaskState
from ..webapi import BATCH_BODY_BYTES, MAX_BATCH_ITEMS, NODE_KEY_HEADER, auth_headers
from .state import NODE_KEY, ORDER_TOKEN, RunnerState
from .supervisor import Notices

log = logging.getLogger(__name__)

BATCH_RETRY_SECONDS = 600.0
"""How long reports go one by one to a Host without the batch route before it is asked again."""


class HostLink:
    """See the module docstring. `running`, `holding` and `on_kill` are the
    Supervisor's views and kill; `stats` samples the node for heartbeats;
    `capabilities` is what the node can run now (read, never probed, here: a
    heartbeat must not wait for a Docker ping or a sudo call)."""

    def __init__(
        self,
        config: Config,
        resources: NodeResources,
        state: RunnerState,
        notices: Notices,
        *,
        running: Callable[[], list[dict[str, Any]]],
        holding: Callable[[], list[int]],
        stats: Callable[[], Awaitable[dict[str, Any]]],
        on_kill: Callable[[int], Awaitable[bool]],
        capabilities: Callable[[], NodeCapabilities] | None = None,
        attempt_of: Callable[[int], int] = lambda _task_id: 1,
    ):
        self.config = config
        self.resources = resources
        self._state = state
        self._notices = notices
        self._running = running
        self._holding = holding
        self._stats = stats
        self._on_kill = on_kill
        self._capabilities = capabilities
        self._attempt_of = attempt_of
        self._session: aiohttp.ClientSession | None = None
        self._node_key = ""
        self._order_token = ""
        self._announcing = asyncio.Lock()
        self._no_batch_at: float | None = None
        """When the Host last answered that it has no batch route for reports (the loop's clock)."""
        self._loops: list[asyncio.Task[None]] = []
        self.base = config.host_url

    async def start(self) -> None:
        """Open the connection pool and start the loops (register and heartbeat,
        running reports, result delivery)."""
        from ..tls import client_context  # the cluster CA verifies the Host (None: plain HTTP)

        timeout = aiohttp.ClientTimeout(total=max(self.config.timing.heartbeat_interval * 2, 5.0), connect=5.0)
        self._node_key = await self._state.secret(NODE_KEY)
        self._order_token = await self._state.secret(ORDER_TOKEN)
        # The runner secret says "a runner of this cluster"; the node key,
        # on every call, says which one.
        headers = {**auth_headers(self.config.auth.effective_runner_token()), NODE_KEY_HEADER: self._node_key}
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            headers=headers,
            connector=aiohttp.TCPConnector(ssl=client_context(self.config.tls) or True),
        )
        self._loops = [
            asyncio.create_task(self.deliver_loop()),
            asyncio.create_task(self.announce_loop()),
            asyncio.create_task(self.heartbeat_loop()),
        ]

    async def close(self) -> None:
        """Stop the loops and close the connections. Undelivered results stay in the outbox."""
        loops, self._loops = self._loops, []
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.post(self.base + path, json=payload) as resp:
            text = await resp.text()
            try:
                body = json.loads(text) if text else {}
            except ValueError:
                body = {"raw": text[:200]}
            return resp.status, body

    # ---------------------------------------------------------- register
    def _register_payload(self) -> dict[str, Any]:
        r = self.resources
        return {
            "hostname": r.hostname,
            "url": r.url,
            "cores": r.cores,
            "memory": r.memory,
            "numa": [n.to_json() for n in r.numa],
            "gpus": [g.to_json() for g in r.gpus],
            "tasks": self._running(),
            "finishing": [str(i) for i in self._holding()],
            "node_key": self._node_key,
            "order_token": self._order_token,
            **self._capabilities_field(),
        }

    def _capabilities_field(self) -> dict[str, Any]:
        return {} if self._capabilities is None else {"capabilities": self._capabilities().to_json()}

    async def register_forever(self) -> None:
        delay = 0.5
        while True:
            try:
                status, body = await self._post("/api/runner/register", self._register_payload())
                if status == 200:
                    log.info("registered with the Host at %s as %s", self.base, self.resources.hostname)
                    return
                log.warning("registration refused (%s): %s", status, _error(body))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot reach the Host at %s to register: %s; retrying in %.1fs", self.base, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not a secret
            delay = min(delay * 2, 30.0)

    # --------------------------------------------------------- heartbeat
    async def heartbeat_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.timing.heartbeat_interval
        await self.register_forever()
        next_at = loop.time()
        while True:
            next_at += interval
            try:
                await self._beat()
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.warning("heartbeat to %s failed: %s", self.base, exc)
            except Exception:
                log.exception("heartbeat failed")
            now = loop.time()
            if next_at < now:  # fell behind (Host down): don't burst to catch up
                next_at = now
            await asyncio.sleep(next_at - now)

    async def _beat(self) -> None:
        payload = {
            "hostname": self.resources.hostname,
            "stats": await self._stats(),
            "tasks": self._running(),
            "finishing": [str(i) for i in self._holding()],
            **self._capabilities_field(),
        }
        status, body = await self._post("/api/runner/heartbeat", payload)
        if status == 404:
            log.warning("the Host does not know this node any more; registering again")
            await self.register_forever()
            return
        if status != 200:
            log.warning("heartbeat refused (%s): %s", status, _error(body))
            return
        for raw in body.get("kill", []):
            # A heartbeat built just before a task ended may list it after the
            # Host recorded its end; the Host then orders a kill of a task
            # already gone, which is harmless and not worth a log line.
            try:
                if await self._on_kill(int(raw)):
                    log.info("killed task %s on the Host's order", raw)
            except Exception as exc:  # noqa: BLE001 - one failed kill must not stop the others
                log.warning("kill of task %s requested by the Host failed: %s", raw, exc)

    # ------------------------------------------------- running and results
    async def announce_loop(self) -> None:
        """Report each task posted as started `running`, as soon as it is posted."""
        while True:
            await self._notices.new_start.wait()
            self._notices.new_start.clear()
            try:
                await self._announce()
            except Exception:  # best effort: the heartbeat lists every running task
                log.exception("reporting started tasks as running failed")

    async def _announce(self) -> None:
        """Report every start posted so far, in one request; return once it is sent.
        Serialised, so that a caller returns only after the reports taken by any
        other caller are sent too."""
        async with self._announcing:
            await self._send(self._running_reports())

    def _running_reports(self) -> list[RunnerReport]:
        return [RunnerReport(i, TaskState.RUNNING, attempt=self._attempt_of(i)) for i in self._notices.take_started()]

    async def deliver_loop(self) -> None:
        """Send every recorded result until the Host acknowledges it, together
        with the starts posted so far (in one request, `running` first)."""
        backoff = 0.5
        while True:
            self._notices.new_result.clear()
            outbox = await self._state.outbox()
            async with self._announcing:
                # Every start of a task read above was posted before its result was
                # recorded: sending the starts first keeps each `running` before its end.
                running = self._running_reports()
                results = [
                    RunnerReport(
                        item.task_id,
                        item.result.state,
                        item.result.exit_code,
                        item.result.error,
                        item.result.output_error,
                        item.attempt,
                    )
                    for item in outbox
                ]
                done = (await self._send(running + results))[len(running) :]
            await self._state.acknowledge_many(
                (item.task_id, item.attempt) for item, ok in zip(outbox, done, strict=True) if ok
            )
            if not all(done):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 0.5
            await self._notices.new_result.wait()

    async def _send(self, reports: list[RunnerReport]) -> list[bool]:
        """Send `reports` in order, as few requests as the bounds allow
        (`POST /api/runner/reports`); for each, whether it is done with (the
        Host took it, or refused it for good: logged). A Host from before that
        route (404, 405) is sent each report alone (`report`), and not asked
        again for `BATCH_RETRY_SECONDS`."""
        done: list[bool] = []
        for chunk in _chunks(reports):
            got = await self._send_batch(chunk) if self._batches() else None
            if got is None:
                got = await self._send_each(chunk)
            done.extend(got)
        return done

    def _batches(self) -> bool:
        loop = asyncio.get_running_loop()
        if self._no_batch_at is not None and loop.time() - self._no_batch_at >= BATCH_RETRY_SECONDS:
            self._no_batch_at = None
        return self._no_batch_at is None

    async def _send_batch(self, chunk: list[RunnerReport]) -> list[bool] | None:
        """One request for `chunk`; None when the reports must go one by one instead."""
        payload = {"hostname": self.resources.hostname, "reports": [r.to_json(with_id=True) for r in chunk]}
        try:
            status, body = await self._post("/api/runner/reports", payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot report %s to the Host: %s", _named(chunk), exc)
            return [False] * len(chunk)
        if status in (404, 405):
            log.info("the Host has no batch route for reports (an older Host); sending them one by one")
            self._no_batch_at = asyncio.get_running_loop().time()
            return None
        if status == 400:
            # Never from a Host that has the route and this runner's fields;
            # one by one, each report gets its own answer (and fallbacks).
            log.warning("the Host refused a batch of %d report(s): %s; sending each alone", len(chunk), _error(body))
            return None
        results = body.get("results") if status == 200 and isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(chunk):
            log.warning("sending %d report(s) failed (%s): %s", len(chunk), status, _error(body))
            return [False] * len(chunk)
        return [self._outcome(r, result) for r, result in zip(chunk, results, strict=True)]

    @staticmethod
    def _outcome(report: RunnerReport, result: Any) -> bool:
        """Whether one report of a batch is done with, as `report` decides for a single one."""
        status = result.get("status") if isinstance(result, dict) else None
        if status == 200:
            return True
        if status in (404, 409):
            log.warning("the Host refused the report for task %s (%s): %s", report.task_id, status, _error(result))
            return True
        log.warning("report for task %s failed (%s): %s", report.task_id, status, _error(result))
        return False

    async def _send_each(self, chunk: list[RunnerReport]) -> list[bool]:
        """The reports one request each: the starts concurrently, then the results in order."""
        starts = [i for i, r in enumerate(chunk) if r.state is TaskState.RUNNING]
        sent = await asyncio.gather(*(self.send_one(chunk[i]) for i in starts), return_exceptions=True)
        done = [False] * len(chunk)
        for i, outcome in zip(starts, sent, strict=True):
            if isinstance(outcome, BaseException):
                log.error("reporting task %s as running failed: %r", chunk[i].task_id, outcome)
            done[i] = outcome is True
        for i, report in enumerate(chunk):
            if report.state is not TaskState.RUNNING:
                done[i] = await self.send_one(report)
        return done

    async def send_one(self, report: RunnerReport) -> bool:
        return await self.report(
            report.task_id,
            report.state,
            report.exit_code,
            report.error,
            output_error=report.output_error,
            attempt=report.attempt,
        )

    async def report(
        self,
        task_id: int,
        state: TaskState,
        exit_code: int | None = None,
        error: str | None = None,
        *,
        output_error: str | None = None,
        attempt: int = 1,
    ) -> bool:
        fields = RunnerReport(task_id, state, exit_code, error, output_error, attempt).to_json(with_id=False)
        payload: dict[str, Any] = {"hostname": self.resources.hostname, **fields}
        try:
            status, body = await self._post(f"/api/runner/tasks/{task_id}/status", payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning("cannot report task %s as %s: %s", task_id, state, exc)
            return False
        if status == 200:
            return True
        if status == 400 and output_error is not None:
            # A Host from before `output_error` refuses the unknown field: say it in `error` instead.
            log.info("the Host does not take output_error; sending task %s's in its error", task_id)
            folded = f"output incomplete: {output_error}"
            return await self.report(
                task_id, state, exit_code, f"{error}; {folded}" if error else folded, attempt=attempt
            )
        if status in (404, 409):
            # Definitive: the Host will never accept this report. Keeping it
            # would retry forever; drop it and say why.
            log.warning("the Host refused the report for task %s (%s): %s", task_id, status, _error(body))
            return True
        log.warning("report for task %s failed (%s): %s", task_id, status, _error(body))
        return False


def _chunks(reports: list[RunnerReport]) -> list[list[RunnerReport]]:
    """`reports` in order, in groups of at most `MAX_BATCH_ITEMS` and about
    `BATCH_BODY_BYTES` of JSON (a larger report goes in a group of its own)."""
    chunks: list[list[RunnerReport]] = []
    size = 0
    for report in reports:
        item = len(dumps_bytes(report.to_json(with_id=True)))
        if not chunks or len(chunks[-1]) >= MAX_BATCH_ITEMS or size + item > BATCH_BODY_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(report)
        size += item + 1
    return chunks


def _named(chunk: list[RunnerReport]) -> str:
    """`task 7 as completed`, or `task 7, 8, 9 (12 reports)`: an admin looking
    for one task's fate in the log finds its id either way."""
    if len(chunk) == 1:
        return f"task {chunk[0].task_id} as {chunk[0].state}"
    ids = list(dict.fromkeys(str(r.task_id) for r in chunk))
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return f"task {shown} ({len(chunk)} reports)"


def _error(body: Any) -> str:
    try:
        return str(body["error"]["message"])
    except (KeyError, TypeError):
        return str(body)[:200]
