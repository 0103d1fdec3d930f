"""A real Host process under a flood of idle and half-sent connections (issue 15, audit M1).

2,000 connections from 16 loopback addresses (half send nothing, half send
half a request's headers) are held open while an authenticated client and a
Runner's heartbeat are answered; the Host closes every flood connection once
its keep-alive (header) timeout passed. 1,256 more from one address meet the
per-address limit (256): the 1,000 beyond it are closed at once, and the
Host's log says so in two lines (the first refusal, then the count). The figures are
printed (run with -s to read them).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import statistics
import time
from pathlib import Path

import aiohttp
import pytest

from tests.harness.hostproc import ADMIN_TOKEN, RUNNER_TOKEN, HostProc, running_host
from tests.harness.polling import apoll

FLOOD = 2000
FLOOD_ADDRESSES = [f"127.0.0.{i}" for i in range(2, 18)]  # 16 addresses, 125 each
PER_ADDRESS = 256
OVER = PER_ADDRESS + 1000
KEEPALIVE = 15.0
NODE_KEY = "node-key-of-the-flood-test-runner-01"
HALF_REQUEST = b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: appl"


def _fd_room(needed: int) -> None:
    """This process and the Host (which inherits the limit) each need `needed` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"the open-file hard limit is {hard}; the flood needs {needed} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def _loopback_aliases_work() -> None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.2", 0))
        except OSError as exc:
            pytest.skip(f"cannot bind 127.0.0.2 (loopback aliases needed for distinct client addresses): {exc}")


class Flood:
    """Connections that are opened, maybe half-written, and watched until the Host closes them."""

    def __init__(self) -> None:
        self.opened: list[float] = []
        self.closed: list[float] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.watchers: list[asyncio.Task[None]] = []

    @property
    def open_now(self) -> int:
        return len(self.opened) - len(self.closed)

    async def open(self, port: int, address: str, half_request: bool) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
        started = time.monotonic()
        self.opened.append(started)
        self.writers.append(writer)
        if half_request:
            writer.write(HALF_REQUEST)
        self.watchers.append(asyncio.create_task(self._watch(reader, started)))

    async def _watch(self, reader: asyncio.StreamReader, started: float) -> None:
        try:
            data = await reader.read(1)  # the Host sends nothing to an incomplete request: b"" is its close
            assert data == b"", data
        except ConnectionError:
            pass
        self.closed.append(time.monotonic() - started)

    def close(self) -> None:
        for task in self.watchers:
            task.cancel()
        for writer in self.writers:
            writer.close()


async def _answers(session: aiohttp.ClientSession, host: HostProc) -> tuple[int, int]:
    """(health status for an admin, heartbeat status for the registered runner), each on a new connection."""
    async with session.get(host.url + "/api/health", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as resp:
        health = resp.status
    async with session.post(
        host.url + "/api/runner/heartbeat",
        json={"hostname": "flood-node", "stats": {}},
        headers={"Authorization": f"Bearer {RUNNER_TOKEN}", "X-HakuRiver-Node-Key": NODE_KEY},
    ) as resp:
        beat = resp.status
    return health, beat


async def test_the_host_answers_clients_and_heartbeats_under_a_connection_flood(tmp_path: Path) -> None:
    _fd_room(FLOOD + OVER + 1024)
    _loopback_aliases_work()
    with running_host(
        tmp_path,
        network={"keepalive_timeout": KEEPALIVE, "max_connections": 4096, "max_connections_per_address": PER_ADDRESS},
    ) as host:
        flood, over = Flood(), Flood()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True), timeout=timeout) as session:
            register = {
                "hostname": "flood-node",
                "url": "http://127.0.0.1:9",
                "cores": 4,
                "memory": 8 << 30,
                "node_key": NODE_KEY,
                "order_token": "order-token-of-the-flood-test-0001",
            }
            headers = {"Authorization": f"Bearer {RUNNER_TOKEN}"}
            async with session.post(host.url + "/api/runner/register", json=register, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            try:
                t0 = time.monotonic()
                gate = asyncio.Semaphore(100)

                async def one(i: int) -> None:
                    async with gate:
                        await flood.open(host.port, FLOOD_ADDRESSES[i % len(FLOOD_ADDRESSES)], half_request=i % 2 == 0)

                await asyncio.gather(*(one(i) for i in range(FLOOD)))
                opened_in = time.monotonic() - t0
                assert len(flood.opened) == FLOOD

                # Answered while the flood is held: each answer on a fresh connection.
                t1 = time.monotonic()
                statuses = await apoll(
                    lambda: _answers(session, host), timeout=30, what="health and heartbeat answers", ignore=(OSError,)
                )
                answered_in, held_then = time.monotonic() - t1, flood.open_now
                assert statuses == (200, 200)
                assert held_then > FLOOD * 0.9, f"only {held_then} flood connections were still open"

                # One address beyond its limit: the excess is closed at once, the rest held.
                await asyncio.gather(*(over.open(host.port, "127.0.0.200", half_request=False) for _ in range(OVER)))
                await apoll(lambda: len(over.closed) >= OVER - PER_ADDRESS, timeout=10, what="the excess closed")
                refused_at_once = len(over.closed)
                assert refused_at_once == OVER - PER_ADDRESS and over.open_now == PER_ADDRESS, (
                    refused_at_once,
                    over.open_now,
                )

                # The Host closes every flood connection once its timeout passed.
                await apoll(
                    lambda: flood.open_now == 0 and over.open_now == 0,
                    timeout=KEEPALIVE + 60,
                    what="the Host to close the flood",
                    on_timeout=lambda: f"{flood.open_now} + {over.open_now} still open",
                )
                after = await _answers(session, host)
                assert after == (200, 200)
            finally:
                flood.close()
                over.close()
        host.proc.stop()
        closed = sorted(flood.closed)
        print(
            f"\nflood: {FLOOD} connections from {len(FLOOD_ADDRESSES)} addresses opened in {opened_in:.1f} s; "
            f"{held_then} still held when the Host answered health + heartbeat ({answered_in:.2f} s); "
            f"all {len(closed)} closed by the Host {closed[0]:.1f}-{closed[-1]:.1f} s after opening "
            f"(median {statistics.median(closed):.1f} s; keepalive_timeout {KEEPALIVE:g} s); "
            f"per-address: {refused_at_once} of {OVER} from one address refused at once, {PER_ADDRESS} held"
        )
        log = (tmp_path / "host.log").read_text()
        refusals = [line for line in log.splitlines() if "refused a connection from" in line]
        assert len(refusals) == 2, refusals  # the first, and one line with the count
        assert f"(repeated {OVER - PER_ADDRESS - 1} times" in refusals[1], refusals
        assert "Traceback" not in log, log[-3000:]
