"""Blocking calls to a Host's HTTP API for synchronous tests (urllib, no event loop).

`BlockingHostApi` is a mixin: the class using it provides `url` and `token`, and
may override `debug_logs()` to attach its logs to a timeout. The process cluster
(`tests/integration/cluster.py`) and the threaded in-process cluster
(`tests/inproc/cluster.py`) both use it, so a test written against one runs
against the other unchanged.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from hakuriver.models import FINAL_STATES

from .polling import poll


class BlockingHostApi:
    url: str
    token: str

    def debug_logs(self) -> str:
        return ""

    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The context that verifies an HTTPS Host (None: plain HTTP)."""
        return None

    def api(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        timeout: float = 10,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON body, or the raw bytes when the answer is not JSON)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token if token is None else token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            req.add_header(key, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                raw = resp.read()
                return resp.status, (
                    json.loads(raw) if raw and resp.headers.get_content_type() == "application/json" else raw
                )
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw

    def node(self, name: str) -> dict[str, Any] | None:
        status, body = self.api("GET", f"/api/nodes/{name}")
        return body if status == 200 else None

    def submit(self, command: list[str], **fields: Any) -> list[str]:
        status, body = self.api("POST", "/api/tasks", {"command": command, **fields})
        assert status == 201, f"submit failed: {status} {body}"
        return body["task_ids"]

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/tasks/{task_id}")
        assert status == 200, body
        return body

    def wait_state(self, task_id: str, states: str | set[str], timeout: float = 60) -> dict[str, Any]:
        wanted = {states} if isinstance(states, str) else set(states)

        def check() -> dict[str, Any] | None:
            task = self.task(task_id)
            return task if task["state"] in wanted else None

        try:
            return poll(check, timeout=timeout, what=f"task {task_id} to reach {sorted(wanted)}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nlast: {self.task(task_id)}\n{self.debug_logs()}") from None

    def wait_final(self, task_id: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_state(task_id, {s.value for s in FINAL_STATES}, timeout)
