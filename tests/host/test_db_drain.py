"""The drain columns of the Host database: stored, kept by re-registration and
heartbeats, read back after reopening the file, absent (not drained) on an older one."""

from __future__ import annotations

import sqlite3

from hakuriver.host.db import MIGRATIONS, SCHEMA_VERSION, Database, Drain
from hakuriver.models import NodeResources


def node(name: str) -> NodeResources:
    return NodeResources(hostname=name, url=f"http://{name}:8001", cores=4, memory=1 << 30)


async def test_a_drain_survives_registration_heartbeats_and_reopening(tmp_path):
    path = tmp_path / "host.db"
    database = await Database.open(path)
    try:
        await database.upsert_node(node("n1"), now=1.0)
        await database.upsert_node(node("n2"), now=1.0)
        drain = Drain(at=2.0, by="carol", reason="kernel upgrade")
        got = await database.set_node_drain("n1", drain)
        assert got is not None and got.drain == drain
        assert await database.set_node_drain("nope", drain) is None
        # The runner registers again and heartbeats: still drained.
        assert (await database.upsert_node(node("n1"), now=3.0, identity_hash="x")).drain == drain
        beat = await database.record_heartbeat("n1", {}, now=4.0)
        assert beat is not None and beat.drain == drain
        # Drained again: the new reason replaces the old.
        again = Drain(at=5.0, by="dave", reason="")
        assert (await database.set_node_drain("n1", again)).drain == again  # type: ignore[union-attr]
    finally:
        await database.close()
    database = await Database.open(path)
    try:
        by_name = {n.hostname: n.drain for n in await database.list_nodes()}
        assert by_name == {"n1": Drain(at=5.0, by="dave", reason=""), "n2": None}
        resumed = await database.set_node_drain("n1", None)
        assert resumed is not None and resumed.drain is None
        assert (await database.get_node("n1")).drain is None  # type: ignore[union-attr]
    finally:
        await database.close()


async def test_nodes_of_an_older_database_are_not_drained(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for script in MIGRATIONS[: SCHEMA_VERSION - 1]:
        raw.executescript(script)
    raw.execute(
        "INSERT INTO nodes (hostname, url, cores, memory, registered_at, last_heartbeat) "
        "VALUES ('n1', 'http://n1:8001', 4, 1073741824, 1.0, 1.0)"
    )
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    raw.commit()
    raw.close()
    database = await Database.open(path)
    try:
        assert await database.schema_version() == SCHEMA_VERSION
        got = await database.get_node("n1")
        assert got is not None and got.drain is None
    finally:
        await database.close()
