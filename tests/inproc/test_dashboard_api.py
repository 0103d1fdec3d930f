"""The dashboard's side of the real Host: its files, browser sessions (cookie,
CSRF, expiry by logout, revocation and restart), node history and the event
stream, through real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from hakuriver.host.keys import LIVENESS
from hakuriver.host.sessions import CSRF_HEADER, SESSION_COOKIE
from tests.harness.polling import apoll

from .cluster import InProcCluster
from .conftest import ClusterFactory


@pytest.fixture
async def browser() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client that keeps cookies, as a browser does (loopback IPs included)."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def add_user(inproc: InProcCluster, name: str) -> str:
    reply = await inproc.client.add_user(name)
    return str(reply["token"])


async def login(browser: aiohttp.ClientSession, inproc: InProcCluster, token: str) -> dict[str, Any]:
    async with browser.post(inproc.url + "/api/session", headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        cookie = resp.headers["Set-Cookie"]
        assert f"{SESSION_COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert "Secure" not in cookie  # plain HTTP here; TLS adds it
        CSRF_OF[id(browser)] = body["csrf_token"]
        return dict(body)


CSRF_OF: dict[int, str] = {}
"""Each logged-in client's CSRF token, which its calls send as the page does."""


async def call(
    browser: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    body: Any = None,
    headers: dict[str, str] | None = None,
    csrf: bool = True,
) -> tuple[int, Any]:
    """One request as the dashboard makes it: with the session's CSRF token
    (unless `csrf=False`, or `headers` set their own)."""
    sent = dict(headers or {})
    if csrf and id(browser) in CSRF_OF:
        sent.setdefault(CSRF_HEADER, CSRF_OF[id(browser)])
    async with browser.request(method, url, json=body, headers=sent) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


# --------------------------------------------------------------------- files
async def test_the_pages_need_no_credential_and_carry_a_strict_policy(
    inproc: InProcCluster, browser: aiohttp.ClientSession
) -> None:
    async with browser.get(inproc.url + "/", allow_redirects=False) as resp:
        assert resp.status == 302 and resp.headers["Location"] == "/dashboard/"
    async with browser.get(inproc.url + "/dashboard/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        assert "static/app.js" in await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    async with browser.get(inproc.url + "/dashboard/static/vendor/uPlot.esm.js") as resp:
        assert resp.status == 200 and resp.content_type == "text/javascript"
        etag = resp.headers["ETag"]
    async with browser.get(inproc.url + "/dashboard/static/vendor/uPlot.esm.js", headers={"If-None-Match": etag}) as r:
        assert r.status == 304
    for path in ("/dashboard/static/nope.js", "/dashboard/static/../../api/users", "/dashboard/static/vendor/..%2f.."):
        status, body = await call(browser, "GET", inproc.url + path)
        assert status in (404, 401), (path, status, body)
    # Only GET/HEAD of the files is open; anything else needs a credential.
    status, body = await call(browser, "POST", inproc.url + "/dashboard/")
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_a_host_without_the_dashboard_serves_none(inproc_factory: ClusterFactory) -> None:
    inproc = await inproc_factory(config_overrides={"dashboard": {"enabled": False}})
    async with aiohttp.ClientSession() as plain:
        status, _ = await call(plain, "GET", inproc.url + "/dashboard/")
        assert status == 401
        status, _ = await call(
            plain, "GET", inproc.url + "/dashboard/", headers={"Authorization": f"Bearer {inproc.token}"}
        )
        assert status == 404
        # Nor does it open browser sessions: there is no page to use one.
        status, body = await call(
            plain, "POST", inproc.url + "/api/session", headers={"Authorization": f"Bearer {inproc.token}"}
        )
        assert status == 404 and "dashboard is off" in body["error"]["message"], body
        # Every answer says: never sniff it into a page.
        async with plain.get(inproc.url + "/api/health", headers={"Authorization": f"Bearer {inproc.token}"}) as r:
            assert r.headers.get("X-Content-Type-Options") == "nosniff"


# ------------------------------------------------------------------ sessions
async def test_a_session_acts_as_its_user_and_needs_csrf_for_changes(
    inproc: InProcCluster, browser: aiohttp.ClientSession
) -> None:
    await inproc.add_runner("n1")
    alice = await add_user(inproc, "alice")
    session = await login(browser, inproc, alice)
    assert (session["user"], session["role"]) == ("alice", "user")
    status, shown = await call(browser, "GET", inproc.url + "/api/session")
    assert status == 200 and shown["csrf_token"] == session["csrf_token"]
    status, me = await call(browser, "GET", inproc.url + "/api/whoami")
    assert status == 200 and me["name"] == "alice"
    # What alice's token may not do, her session may not either.
    status, body = await call(browser, "GET", inproc.url + "/api/users")
    assert status == 403, body

    submit = {"command": ["fake", "hang"]}
    refused = [
        {},
        {CSRF_HEADER: "wrong"},
        {CSRF_HEADER: session["csrf_token"], "Origin": "https://evil.example"},
        {CSRF_HEADER: session["csrf_token"], "Origin": "null"},
        {CSRF_HEADER: session["csrf_token"], "Sec-Fetch-Site": "cross-site"},
    ]
    for headers in refused:
        status, body = await call(browser, "POST", inproc.url + "/api/tasks", body=submit, headers=headers, csrf=False)
        assert status == 403 and body["error"]["code"] == "csrf", (headers, body)
    assert (await inproc.client.list_tasks())["tasks"] == []  # nothing was submitted

    # Reads too are refused from another origin (another port of this machine is the same site).
    for headers in ({"Origin": "http://127.0.0.1:1"}, {"Sec-Fetch-Site": "same-site"}):
        status, body = await call(browser, "GET", inproc.url + "/api/whoami", headers=headers)
        assert status == 403 and body["error"]["code"] == "csrf", (headers, body)
    # No websocket (the environment shell) on a session, whatever it sends.
    status, body = await call(
        browser,
        "GET",
        inproc.url + "/api/environments/containers/x/shell",
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
            CSRF_HEADER: session["csrf_token"],
        },
    )
    assert status == 403 and "websocket" in body["error"]["message"], body

    same_site = {CSRF_HEADER: session["csrf_token"], "Origin": inproc.url, "Sec-Fetch-Site": "same-origin"}
    status, body = await call(browser, "POST", inproc.url + "/api/tasks", body=submit, headers=same_site)
    assert status == 201, body
    assert body["tasks"][0]["owner"] == "alice"


async def test_logout_revocation_and_restart_end_sessions(
    inproc: InProcCluster, browser: aiohttp.ClientSession
) -> None:
    alice = await add_user(inproc, "alice")

    def cookie() -> str:
        return next(c.value for c in browser.cookie_jar if c.key == SESSION_COOKIE)

    async def with_cookie(value: str, csrf: str = "") -> tuple[int, Any]:
        # Another client that has the cookie (and the token, where given).
        headers = {"Cookie": f"{SESSION_COOKIE}={value}"} | ({CSRF_HEADER: csrf} if csrf else {})
        async with aiohttp.ClientSession() as other:
            return await call(other, "GET", inproc.url + "/api/whoami", headers=headers)

    # Logout: needs the CSRF token; then the cookie is worth nothing.
    session = await login(browser, inproc, alice)
    old = cookie()
    # The cookie alone, as a server on another port of this machine would get it: refused.
    status, body = await with_cookie(old)
    assert status == 403 and body["error"]["code"] == "csrf", body
    for path in ("/api/session", "/api/events?timeout=1"):
        status, body = await call(browser, "GET", inproc.url + path, csrf=False)
        assert status == 403 and body["error"]["code"] == "csrf", (path, body)
    assert (await with_cookie(old, session["csrf_token"]))[0] == 200
    status, _ = await call(browser, "DELETE", inproc.url + "/api/session", csrf=False)
    assert status == 403
    status, body = await call(
        browser, "DELETE", inproc.url + "/api/session", headers={CSRF_HEADER: session["csrf_token"]}
    )
    assert status == 200 and body == {"ended": True}
    status, body = await with_cookie(old)
    assert status == 401 and body["error"]["code"] == "session_ended"

    # Revoking the token the session logged in with ends it.
    again = await login(browser, inproc, alice)
    assert (await with_cookie(cookie(), again["csrf_token"]))[0] == 200
    await inproc.client.issue_token("alice", revoke_all=True)
    status, body = await with_cookie(cookie())
    assert status == 401 and "revoked" in body["error"]["message"]

    # A Host restart logs everyone out (sessions are in memory only).
    admin = await login(browser, inproc, inproc.token)
    assert admin["role"] == "admin"
    value = cookie()
    await inproc.stop_host()
    await inproc.start_host()
    status, body = await with_cookie(value)
    assert status == 401 and body["error"]["code"] == "session_ended"


async def test_the_runner_routes_never_take_a_session(inproc: InProcCluster, browser: aiohttp.ClientSession) -> None:
    session = await login(browser, inproc, inproc.token)
    status, body = await call(
        browser,
        "POST",
        inproc.url + "/api/runner/heartbeat",
        body={"hostname": "x", "stats": {}},
        headers={CSRF_HEADER: session["csrf_token"]},
    )
    assert status == 401 and body["error"]["code"] == "unauthorized"
    # A bearer call shows no session, and logging out without one ends nothing.
    headers = {"Authorization": f"Bearer {inproc.token}"}
    async with aiohttp.ClientSession() as plain:
        assert (await call(plain, "GET", inproc.url + "/api/session", headers=headers))[0] == 404
        assert await call(plain, "DELETE", inproc.url + "/api/session", headers=headers) == (200, {"ended": False})
        status, body = await call(plain, "POST", inproc.url + "/api/session", body={"x": 1}, headers=headers)
        assert status == 400, body


# ------------------------------------------------------------ history, events
async def test_node_history_holds_the_gpus_heartbeats(fake_nvml: None, inproc: InProcCluster) -> None:
    inproc._host_site.app[LIVENESS].history.interval = 0.2  # type: ignore[union-attr]
    await inproc.add_runner("g1", gpus=2)
    headers = {"Authorization": f"Bearer {inproc.token}"}
    async with aiohttp.ClientSession(headers=headers) as client:

        async def samples() -> dict[str, Any] | None:
            status, body = await call(client, "GET", inproc.url + "/api/nodes/g1/history")
            assert status == 200, body
            return body if body["gpus"] and len(body["gpus"][0]["t"]) >= 3 else None

        history = await apoll(samples, timeout=20, interval=0.1, what="three GPU samples")
        assert [g["index"] for g in history["gpus"]] == [0, 1]
        gpu = history["gpus"][0]
        assert len(gpu["t"]) == len(gpu["utilization"]) == len(gpu["temperature"]) and gpu["t"] == sorted(gpu["t"])
        assert all(isinstance(v, (int, float)) for v in gpu["memory_total"])
        assert (await call(client, "GET", inproc.url + "/api/nodes/nope/history"))[0] == 404
        assert (await call(client, "GET", inproc.url + "/api/nodes/g1/history?since=soon"))[0] == 400
    # A forgotten node's history goes with it (the memory stays bounded by the nodes there are).
    await inproc.runners["g1"].stop()
    await inproc.client.forget_node("g1")
    assert inproc._host_site.app[LIVENESS].history.nodes() == []  # type: ignore[union-attr]


async def test_the_event_stream_says_when_tasks_change(inproc: InProcCluster, browser: aiohttp.ClientSession) -> None:
    await inproc.add_runner("n1")
    session = await login(browser, inproc, inproc.token)
    assert (await call(browser, "GET", inproc.url + "/api/events?timeout=0"))[0] == 400
    assert (await call(browser, "GET", inproc.url + "/api/events?timeout=301"))[0] == 400
    # An EventSource sends no custom header: the token rides in the query.
    async with browser.get(inproc.url + f"/api/events?timeout=60&csrf={session['csrf_token']}") as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"

        async def next_event() -> dict[str, int]:
            while True:
                line = (await resp.content.readline()).decode()
                if line.startswith("data: "):
                    return dict(json.loads(line[6:]))

        first = await asyncio.wait_for(next_event(), 10)
        await inproc.submit(["fake", "hang"])
        later = await asyncio.wait_for(next_event(), 10)
        assert later["tasks"] > first["tasks"]


async def test_open_streams_never_hold_up_heartbeats(inproc: InProcCluster, browser: aiohttp.ClientSession) -> None:
    await inproc.add_runner("n1")
    session = await login(browser, inproc, inproc.token)
    url = inproc.url + f"/api/events?timeout=60&csrf={session['csrf_token']}"
    streams = [await browser.get(url) for _ in range(5)]
    try:
        assert all(s.status == 200 for s in streams)
        seen = (await inproc.client.node("n1"))["last_heartbeat"]

        async def beats() -> bool:
            return bool((await inproc.client.node("n1"))["last_heartbeat"] > seen)

        await apoll(beats, timeout=10, interval=0.05, what="a heartbeat while 5 event streams are open")
    finally:
        for s in streams:
            s.close()
