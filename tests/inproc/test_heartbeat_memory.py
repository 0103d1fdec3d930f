"""Heartbeats live in the Host's memory: a beat that changes nothing durable
writes nothing to the database, the API shows the latest beat all the same,
and a node that stops beating still goes offline (the sweep reads memory)."""

from __future__ import annotations

import sqlite3

from tests.harness.polling import apoll

from .cluster import FAST_LIVENESS
from .conftest import ClusterFactory


def stored_heartbeat(db_file, name: str) -> float:
    with sqlite3.connect(db_file) as conn:
        [(value,)] = conn.execute("SELECT last_heartbeat FROM nodes WHERE hostname=?", (name,)).fetchall()
    conn.close()
    return float(value)


async def test_beats_stay_in_memory_and_the_sweep_still_sees_them_stop(inproc_factory: ClusterFactory) -> None:
    inproc = await inproc_factory(timing=FAST_LIVENESS)
    runner = await inproc.add_runner("n1")
    first = (await inproc.client.node("n1"))["last_heartbeat"]
    stored = stored_heartbeat(inproc.db_file, "n1")

    async def beat_three_times() -> bool:
        return (await inproc.client.node("n1"))["last_heartbeat"] >= first + 3 * FAST_LIVENESS.heartbeat_interval

    await apoll(beat_three_times, timeout=20, interval=0.05, what="three more heartbeats")
    # Newer in the API than in the file: those beats cost no write.
    assert stored_heartbeat(inproc.db_file, "n1") == stored

    await runner.stop()

    async def offline() -> bool:
        return not (await inproc.client.node("n1"))["online"]

    await apoll(offline, timeout=20, interval=0.05, what="the silent node to go offline")
    assert (await inproc.client.health())["nodes"] == {"online": 0, "offline": 1}
