"""The dashboard's pure parts: the session store, the heartbeat history, the change feed."""

from __future__ import annotations

import asyncio

from hakuriver.host.changes import ChangeFeed, TooManyListeners
from hakuriver.host.sessions import Sessions
from hakuriver.host.telemetry import HeartbeatHistory


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ sessions
def test_a_session_is_found_by_its_cookie_and_keeps_no_cookie() -> None:
    sessions = Sessions(3600, clock=Clock())
    cookie, session = sessions.create("alice", "hash-of-token")
    assert sessions.get(cookie) == session and session.user == "alice"
    assert sessions.get(cookie + "x") is None
    assert cookie not in repr(sessions._by_key)  # only the cookie's hash is kept
    assert session.csrf != cookie and len(session.csrf) >= 40


def test_sessions_expire_end_and_are_capped() -> None:
    clock = Clock()
    sessions = Sessions(60, cap=3, clock=clock)
    first, _ = sessions.create("a", "h")
    clock.now += 59
    assert sessions.get(first) is not None
    clock.now += 1
    assert sessions.get(first) is None and len(sessions) == 0

    cookies = [sessions.create(f"u{i}", "h")[0] for i in range(4)]
    assert len(sessions) == 3
    assert sessions.get(cookies[0]) is None  # the oldest made room
    assert all(sessions.get(c) is not None for c in cookies[1:])
    sessions.end(cookies[1])
    assert sessions.get(cookies[1]) is None and len(sessions) == 2


def test_expired_sessions_are_purged_on_login() -> None:
    clock = Clock()
    sessions = Sessions(10, clock=clock)
    for _ in range(50):
        sessions.create("a", "h")
    clock.now += 11
    sessions.create("b", "h")
    assert len(sessions) == 1


# ------------------------------------------------------------------- history
def _stats(util: int, temp: int | None = 50) -> dict[str, object]:
    return {
        "cpu_percent": 12.5,
        "memory_used": 1 << 30,
        "memory_total": 4 << 30,
        "gpus": [
            {"index": 0, "utilization": util, "memory_used": 10, "memory_total": 100, "temperature": temp},
            {"index": 1, "utilization": None, "memory_used": None, "memory_total": 100, "temperature": 40},
        ],
    }


def test_history_samples_at_most_every_interval_and_keeps_a_window() -> None:
    history = HeartbeatHistory(window=100, interval=10)
    assert history.record("n1", _stats(1), 0)
    assert not history.record("n1", _stats(2), 5)  # too soon: dropped
    for t in range(10, 300, 10):
        assert history.record("n1", _stats(t), t)
    series = history.series("n1", now=290)
    gpu0, gpu1 = series["gpus"]
    assert gpu0["index"] == 0 and gpu1["index"] == 1
    assert gpu0["t"] == [float(t) for t in range(200, 300, 10)]  # the last 100 s only
    assert gpu0["utilization"] == [float(t) for t in range(200, 300, 10)]
    assert gpu1["utilization"] == [None] * 10
    assert series["node"]["cpu_percent"][-1] == 12.5
    assert len(history._nodes["n1"].gpus[0]) <= history.capacity == 11
    assert history.series("n1", now=290, since=270)["gpus"][0]["t"] == [280, 290]


def test_history_drops_what_is_malformed_and_forgets_nodes() -> None:
    history = HeartbeatHistory(interval=1)
    weird = {
        "cpu_percent": "lots",
        "gpus": [
            "not a dict",
            {"index": "0"},
            {"index": True},
            {"index": 10_000},
            {"index": 2, "utilization": float("nan"), "temperature": True},
        ],
    }
    assert history.record("n1", weird, 0)
    series = history.series("n1", now=1)
    assert [g["index"] for g in series["gpus"]] == [2]
    assert series["gpus"][0]["utilization"] == [None] and series["gpus"][0]["temperature"] == [None]
    assert series["node"]["cpu_percent"] == [None]
    assert history.record("n2", {"gpus": "nope"}, 0)
    history.forget("n1")
    assert history.nodes() == ["n2"]
    assert history.series("n1", now=1)["gpus"] == []


# -------------------------------------------------------------- change feed
async def test_the_feed_wakes_listeners_once_per_change_and_at_most_once_a_period() -> None:
    state = {"tasks": 0}
    feed = ChangeFeed({"tasks": lambda: state["tasks"], "nodes": lambda: 0}, period=0.05)
    async with feed.listen() as listener:
        assert await listener.next(0.01) is None  # nothing changed
        state["tasks"] = 1
        state["tasks"] = 2  # two changes within one period: one wake-up
        assert await listener.next(5) == {"tasks": 1, "nodes": 0}
        assert await listener.next(0.2) is None
    await feed.close()
    assert feed.listeners == 0


async def test_the_feed_refuses_beyond_its_cap_and_ends_listeners_on_close() -> None:
    feed = ChangeFeed({"tasks": lambda: 0}, period=0.05, cap=1)
    async with feed.listen() as listener:
        try:
            async with feed.listen():
                raise AssertionError("a second listener was let in")
        except TooManyListeners as exc:
            assert exc.status == 503
        waiting = asyncio.create_task(listener.next(30))
        await asyncio.sleep(0)
        await feed.close()
        assert await asyncio.wait_for(waiting, 5) is None


async def test_a_failing_signature_never_stops_the_others(caplog) -> None:
    state = {"n": 0}

    def broken() -> int:
        raise RuntimeError("boom")

    feed = ChangeFeed({"bad": broken, "good": lambda: state["n"]}, period=0.05)
    async with feed.listen() as listener:
        state["n"] = 1
        assert (await listener.next(5) or {}).get("good") == 1
    await feed.close()


# --------------------------------------------------------- the login cookie
async def _login_cookie(tls: bool) -> dict[str, str]:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from hakuriver.config import config_from_dict
    from hakuriver.host.accounts import PRINCIPAL_KEY, Principal
    from hakuriver.host.api.session import login
    from hakuriver.host.keys import CONFIG, SESSIONS
    from hakuriver.host.sessions import SESSION_COOKIE

    app = web.Application()
    app[CONFIG] = config_from_dict({"tls": {"enabled": tls}})
    app[SESSIONS] = Sessions(3600)
    request = make_mocked_request("POST", "/api/session", headers={"Authorization": "Bearer hkr_x"}, app=app)
    request[PRINCIPAL_KEY] = Principal("alice", "user")
    response = await login(request)
    assert response.status == 201
    morsel = response.cookies[SESSION_COOKIE]
    return {k: str(morsel[k]) for k in ("secure", "httponly", "samesite", "path", "max-age")}


async def test_the_session_cookie_is_secure_exactly_when_the_host_serves_tls() -> None:
    plain, tls = await _login_cookie(False), await _login_cookie(True)
    assert plain["secure"] in ("", "False") and tls["secure"] == "True"
    for cookie in (plain, tls):
        assert cookie["httponly"] == "True" and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        assert cookie["max-age"] == "3600"


def test_a_session_stands_for_a_user_or_admin_token_never_the_runner_secret() -> None:
    from typing import Any, cast

    from hakuriver.config import config_from_dict
    from hakuriver.host.accounts import Accounts, token_hash

    admin, runner = "a" * 32, "r" * 32
    config = config_from_dict({"auth": {"admin_token": admin, "runner_token": runner, "admin_user": "boss"}})
    accounts = Accounts(config, cast(Any, None))  # the lookup needs no database
    principal = accounts.principal_of_hash(token_hash(admin))
    assert principal is not None and (principal.name, principal.is_admin) == ("boss", True)
    assert accounts.principal_of_hash(token_hash(runner)) is None
    assert accounts.principal_of_hash(token_hash("hkr_unknown")) is None


def test_one_users_logins_replace_only_their_own_oldest_sessions() -> None:
    from hakuriver.host.sessions import MAX_SESSIONS_PER_USER, Sessions

    sessions = Sessions(3600.0, cap=MAX_SESSIONS_PER_USER + 5)
    bobs_cookie, _ = sessions.create("bob", "b")
    cookies = [sessions.create("mallory", "m")[0] for _ in range(3 * MAX_SESSIONS_PER_USER)]
    assert sessions.get(bobs_cookie) is not None  # bob is still logged in
    assert sum(sessions.get(c) is not None for c in cookies) == MAX_SESSIONS_PER_USER
    assert sessions.get(cookies[-1]) is not None and sessions.get(cookies[0]) is None


async def test_one_user_cannot_take_every_event_stream() -> None:
    import contextlib

    import pytest

    from hakuriver.host.changes import MAX_LISTENERS_PER_USER, ChangeFeed, TooManyListeners

    feed = ChangeFeed({"tasks": lambda: 0}, cap=MAX_LISTENERS_PER_USER + 10)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(MAX_LISTENERS_PER_USER):
            await stack.enter_async_context(feed.listen("mallory"))
        with pytest.raises(TooManyListeners, match="you have"):
            await stack.enter_async_context(feed.listen("mallory"))
        await stack.enter_async_context(feed.listen("bob"))  # someone else still gets one
    await feed.close()
    assert feed.listeners == 0
