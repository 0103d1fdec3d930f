"""hakuriver.host.db against real SQLite files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time

import pytest

from hakuriver.errors import HakuRiverError
from hakuriver.host.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Database,
    DatabaseError,
    NodeRecord,
    SchemaTooNew,
    target_from_stored,
)
from hakuriver.host.scheduler import Placement
from hakuriver.models import Capability, GpuInfo, Mount, NodeCapabilities, NodeResources, NumaNode, Task, TaskState

S = TaskState
LOST_ONLY = frozenset({TaskState.LOST})


def make_task(task_id: int, state: TaskState = S.PENDING, **kw) -> Task:
    base = dict(
        id=task_id,
        batch_id=kw.pop("batch_id", 1),
        state=state,
        command=["echo", str(task_id)],
        cores=1,
        memory=None,
        container=None,
        env={},
        mounts=[],
        privileged=False,
        target=None,
        submitted_at=1000.0 + task_id,
    )
    base.update(kw)
    if isinstance(base.get("target"), str):
        base["target"] = target_from_stored(base["target"])
    return Task(**base)


def node(name: str, cores: int = 8, memory: int = 16 << 30, **kw) -> NodeResources:
    return NodeResources(hostname=name, url=f"http://{name}:8001", cores=cores, memory=memory, **kw)


@pytest.fixture
async def db(tmp_path):
    database = await Database.open(tmp_path / "host.db")
    yield database
    await database.close()


# ---------------------------------------------------------------- opening and migrations


async def test_fresh_file_is_migrated(tmp_path):
    path = tmp_path / "fresh.db"
    database = await Database.open(path)
    try:
        assert await database.schema_version() == SCHEMA_VERSION >= 1
        assert await database.ping() is True
        assert await database.ping() is True
        pragmas = {
            name: (await database._conn.execute_fetchall(f"PRAGMA {name}"))[0][0]
            for name in ("synchronous", "foreign_keys", "busy_timeout", "journal_mode")
        }
        assert pragmas == {"synchronous": 2, "foreign_keys": 1, "busy_timeout": 10_000, "journal_mode": "wal"}
    finally:
        await database.close()
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"nodes", "tasks"} <= tables
        indexes = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert {"tasks_state", "tasks_node", "tasks_submitted", "tasks_batch"} <= indexes
        plan = " ".join(
            str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN SELECT id FROM tasks WHERE state='pending' ORDER BY id")
        )
        assert "tasks_state" in plan
    finally:
        raw.close()


async def test_reopen_keeps_data_and_does_not_remigrate(tmp_path):
    path = tmp_path / "keep.db"
    database = await Database.open(path)
    await database.upsert_node(node("n1"), now=5.0)
    await database.insert_tasks([make_task(7), make_task(8, state=S.RUNNING, node="n1")])
    await database.close()

    database = await Database.open(path)
    try:
        assert await database.schema_version() == SCHEMA_VERSION
        assert [t.id for t in await database.list_tasks()] == [8, 7]
        got = await database.get_node("n1")
        assert got is not None and got.cores == 8 and got.last_heartbeat == 5.0
    finally:
        await database.close()


async def test_node_capabilities_survive_a_restart_and_heartbeats_replace_them(tmp_path):
    path = tmp_path / "caps.db"
    no_systemd = NodeCapabilities(docker=Capability(True), null=Capability(False, "systemd is not PID 1"))
    database = await Database.open(path)
    await database.upsert_node(node("vm", capabilities=no_systemd), now=5.0)
    await database.upsert_node(node("old"), now=5.0)  # a runner that does not say
    await database.close()

    database = await Database.open(path)
    try:
        by_name = {n.hostname: n for n in await database.list_nodes()}
        vm, old = by_name["vm"], by_name["old"]
        assert vm.capabilities == no_systemd and vm.resources.refusal("null") == "systemd is not PID 1"
        assert old.capabilities is None and old.resources.refusal("null") is None
        # A heartbeat without capabilities keeps them; with, replaces them.
        got = await database.record_heartbeat("vm", {}, now=6.0)
        assert got is not None and got.capabilities == no_systemd
        both = NodeCapabilities(docker=Capability(True), null=Capability(True))
        got = await database.record_heartbeat("vm", {}, now=7.0, capabilities=both)
        assert got is not None and got.capabilities == both
        # Re-registered by an older runner: unknown again, not the stale record.
        got = await database.upsert_node(node("vm"), now=8.0)
        assert got.capabilities is None
    finally:
        await database.close()


async def test_a_version_2_database_gains_capabilities_as_unknown(tmp_path):
    path = tmp_path / "v2.db"
    raw = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        raw.executescript(script)
    raw.execute(
        "INSERT INTO nodes (hostname, url, cores, memory, registered_at, last_heartbeat) "
        "VALUES ('n1', 'http://n1:8001', 4, 1073741824, 1.0, 1.0)"
    )
    raw.execute("PRAGMA user_version=2")
    raw.commit()
    raw.close()
    database = await Database.open(path)
    try:
        assert await database.schema_version() == SCHEMA_VERSION == len(MIGRATIONS)
        got = await database.get_node("n1")
        assert got is not None and got.cores == 4 and got.capabilities is None
    finally:
        await database.close()


async def test_time_limits_are_stored_and_older_tasks_have_none(tmp_path):
    """The time-limit migration adds a NULL column: tasks from before it have no limit."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    version = next(i for i, script in enumerate(MIGRATIONS) if "time_limit" in script)
    for script in MIGRATIONS[:version]:
        raw.executescript(script)
    raw.execute(f"PRAGMA user_version={version}")
    raw.commit()
    raw.close()
    database = await Database.open(path)
    try:
        assert await database.schema_version() == SCHEMA_VERSION
        await database.insert_tasks([make_task(1), make_task(2, time_limit=5400)])
        old, limited = await database.get_tasks([1, 2])
        assert (old.time_limit, limited.time_limit) == (None, 5400)
        assert limited.to_json()["time_limit"] == 5400
        done = await database.transition(
            2, S.TIMEOUT, now=2000.0, allowed_from=frozenset({S.PENDING}), error="time limit 1h30m reached"
        )
        assert done is not None and done.state is S.TIMEOUT and done.time_limit == 5400
    finally:
        await database.close()


async def test_the_database_and_its_wal_are_private(tmp_path):
    """It holds every task's env and the token hashes (audit L4): 0600 whatever the umask,
    and a file made 0644 by an earlier version is fixed on open."""
    path = tmp_path / "private.db"
    old = os.umask(0o022)
    try:
        database = await Database.open(path)
        await database.insert_tasks([make_task(1)])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        await database.close()
        assert modes.get("private.db") == 0o600 and modes.get("private.db-wal") == 0o600, modes
        assert set(modes.values()) == {0o600}, modes
        for p in tmp_path.iterdir():
            p.chmod(0o644)
        database = await Database.open(path)
        await database.insert_tasks([make_task(2)])
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        await database.close()
        assert set(modes.values()) == {0o600}, modes
    finally:
        os.umask(old)


async def test_future_schema_version_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "future.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE from_the_future (x)")
    raw.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    raw.commit()
    raw.close()

    try:
        opened = await Database.open(path)
    except SchemaTooNew as e:
        err = e
    else:
        await opened.close()
        pytest.fail("a database from a newer version was opened")
    assert isinstance(err, DatabaseError) and isinstance(err, HakuRiverError)
    assert f"schema version {SCHEMA_VERSION + 1}" in err.message
    assert "newer" in err.message

    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == {"from_the_future"}
    finally:
        raw.close()


async def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DatabaseError, match="does not exist"):
        await Database.open(tmp_path / "nope" / "host.db")
    assert not (tmp_path / "nope").exists()


async def test_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="cannot open database"):
        await Database.open(path)


async def test_closed_database_refuses_calls(tmp_path):
    database = await Database.open(tmp_path / "c.db")
    await database.close()
    await database.close()  # idempotent
    with pytest.raises(DatabaseError, match="closed"):
        await database.get_task(1)
    with pytest.raises(DatabaseError, match="closed"):
        await database.insert_tasks([make_task(1)])


# ---------------------------------------------------------------- tasks round-trip


async def test_every_task_field_round_trips(db):
    full = Task(
        id=(1 << 63) - 1,
        batch_id=(1 << 62) + 12345,
        state=S.PAUSED,
        command=["python3", "-c", "print('héllo\\n')\nimport sys", "", "a b\tc", "日本語 🚀", "\x00nul", "\udcff"],
        cores=12,
        memory=(3 << 30) + 1,
        container="my-env",
        env={"A": "1", "EMPTY": "", "EQ": "x=y=z", "UNI": "ünï\ncode", "Z": "last"},
        mounts=[Mount("/data", "/mnt/data", True), Mount("/scratch", "/scratch", False)],
        privileged=True,
        target=target_from_stored("node1:1::0,3"),
        node="node1",
        numa=1,
        gpus=[3, 0],
        gpu_count=0,
        submitted_at=1712345678.123456,
        assigned_at=1712345679.5,
        started_at=1712345680.000001,
        finished_at=None,
        exit_code=-9,
        error="ошибка: 'quoted' \"double\"",
    )
    minimal = make_task(42)
    await db.insert_tasks([full, minimal])

    got = await db.get_task(full.id)
    assert got == full
    assert list(got.env) == list(full.env)  # order preserved
    assert isinstance(got.mounts[0], Mount) and got.mounts[0].read_only is True
    assert got.state is S.PAUSED
    assert await db.get_task(42) == minimal
    assert await db.get_task(43) is None
    assert await db.get_tasks([42, 999, full.id]) == [minimal, full]


async def test_duplicate_insert_fails_whole_call(db):
    await db.insert_tasks([make_task(1)])
    with pytest.raises(DatabaseError) as info:
        await db.insert_tasks([make_task(2), make_task(1)])
    assert info.value.status == 409
    assert await db.get_task(2) is None  # all or none
    assert [t.id for t in await db.list_tasks()] == [1]


async def test_concurrent_inserts_group_commit_and_isolate_failures(db):
    await db.insert_tasks([make_task(5000)])

    async def submit(i: int):
        return await db.insert_tasks([make_task(i)])

    ids = list(range(1, 301)) + [5000]  # the last one is a duplicate
    started = time.perf_counter()
    results = await asyncio.gather(*(submit(i) for i in ids), return_exceptions=True)
    elapsed = time.perf_counter() - started
    print(f"\n300 concurrent single-task durable inserts: {elapsed * 1000:.1f} ms ({300 / elapsed:.0f}/s)")
    assert all(r is None for r in results[:-1])
    assert isinstance(results[-1], DatabaseError)
    counts = await db.count_tasks_by_state()
    assert counts[S.PENDING] == 301
    assert set(counts) == set(TaskState)


async def test_concurrent_writes_share_transactions(db):
    await db.insert_tasks([make_task(i, state=S.RUNNING, node="n1") for i in range(1, 101)])
    statements: list[str] = []
    await db._conn.set_trace_callback(statements.append)
    results = await asyncio.gather(
        *(db.transition(i, S.COMPLETED, now=1.0, exit_code=0) for i in range(1, 101)),
        *(db.record_heartbeat("nobody", {}, now=1.0) for _ in range(20)),
    )
    await db._conn.set_trace_callback(None)
    assert sum(r is not None for r in results) == 100
    begins = sum(1 for st in statements if st.startswith("BEGIN"))
    commits = sum(1 for st in statements if st.startswith("COMMIT"))
    assert begins == commits
    assert 1 <= begins <= 10, f"120 concurrent writes took {begins} transactions"


async def test_a_write_op_that_awaits_something_else_fails_alone(db):
    """A batch runs in the database thread in one call, so an op may await
    only the connection: one that awaits anything else gets a clear error,
    and the ops beside it in the same batch still commit."""

    async def bad(conn):
        await conn.execute_fetchall("UPDATE tasks SET error='half' WHERE id=1")
        await asyncio.sleep(0)

    await db.insert_tasks([make_task(1), make_task(2)])
    results = await asyncio.gather(
        db._write(bad, atomic=True),
        db.transition(2, S.CANCELLED, now=1.0),
        return_exceptions=True,
    )
    assert isinstance(results[0], RuntimeError) and "awaited something other" in str(results[0])
    assert results[1] is not None and results[1].state is S.CANCELLED
    assert (await db.get_task(1)).error is None  # its own statement was rolled back with it
    assert (await db.get_task(2)).state is S.CANCELLED


async def test_a_cancelled_writer_still_answers_once_its_batch_committed(db):
    """Cancelling a caller while its batch commits loses nothing: the write
    stands, the next writes go through, and the database closes cleanly."""
    await db.insert_tasks([make_task(i) for i in range(1, 51)])
    waiting = [asyncio.ensure_future(db.transition(i, S.CANCELLED, now=1.0)) for i in range(1, 51)]
    await asyncio.sleep(0)
    for fut in waiting[::2]:
        fut.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    await db.insert_tasks([make_task(100)])
    states = {t.id: t.state for t in await db.list_tasks(limit=200)}
    assert states[100] is S.PENDING
    # Each transition either ran (cancelled) or was dropped before its batch began (pending).
    assert all(states[i] in (S.CANCELLED, S.PENDING) for i in range(1, 51))
    assert all(states[i] is S.CANCELLED for i in range(2, 51, 2))  # the callers not cancelled


async def test_sequential_write_latency(db):
    await db.insert_tasks([make_task(i, state=S.RUNNING, node="n1") for i in range(1, 201)])
    started = time.perf_counter()
    for i in range(1, 201):
        assert await db.transition(i, S.COMPLETED, now=2.0, exit_code=0) is not None
    elapsed = time.perf_counter() - started
    print(f"\n200 sequential durable transitions: {elapsed * 1000:.1f} ms ({elapsed / 200 * 1e6:.0f} us each)")
    started = time.perf_counter()
    page = await db.list_tasks(limit=200)
    print(f"list 200 tasks: {(time.perf_counter() - started) * 1000:.2f} ms")
    assert len(page) == 200 and all(t.state is S.COMPLETED for t in page)


# ---------------------------------------------------------------- guarded transitions


async def test_lifecycle_and_timestamps(db):
    await db.insert_tasks([make_task(1)])
    t = await db.transition(1, S.ASSIGNING, now=10.0, node="n1", numa=0, gpus=[1])
    assert (t.state, t.node, t.numa, t.gpus, t.assigned_at) == (S.ASSIGNING, "n1", 0, [1], 10.0)
    t = await db.transition(1, S.RUNNING, now=11.0)
    assert t.state is S.RUNNING and t.started_at == 11.0 and t.finished_at is None
    t = await db.transition(1, S.PAUSED, now=12.0)
    assert t.state is S.PAUSED and t.started_at == 11.0
    t = await db.transition(1, S.RUNNING, now=13.0)  # paused -> running
    assert t.state is S.RUNNING and t.started_at == 11.0
    t = await db.transition(1, S.COMPLETED, now=14.0, exit_code=0)
    assert (t.state, t.exit_code, t.finished_at) == (S.COMPLETED, 0, 14.0)
    # completed -> running is refused and changes nothing
    assert await db.transition(1, S.RUNNING, now=15.0) is None
    stored = await db.get_task(1)
    assert stored.state is S.COMPLETED and stored.finished_at == 14.0


async def test_late_completed_does_not_overwrite_killed(db):
    await db.insert_tasks([make_task(1, state=S.RUNNING, node="n1", started_at=1.0)])
    killed = await db.transition(1, S.KILLED, now=5.0, error="killed by user")
    assert killed.state is S.KILLED
    assert await db.transition(1, S.COMPLETED, now=6.0, exit_code=0) is None
    assert await db.transition(1, S.KILLED_OOM, now=6.0) is None
    stored = await db.get_task(1)
    assert (stored.state, stored.exit_code, stored.finished_at, stored.error) == (S.KILLED, None, 5.0, "killed by user")


async def test_pending_can_be_killed_but_not_completed(db):
    await db.insert_tasks([make_task(1)])
    assert await db.transition(1, S.COMPLETED, now=2.0) is None
    assert await db.transition(1, S.RUNNING, now=2.0) is None
    assert (await db.transition(1, S.KILLED, now=3.0)).state is S.KILLED


async def test_lost_can_come_back(db):
    await db.upsert_node(node("n1"), now=0.0)
    await db.insert_tasks([make_task(1, state=S.RUNNING, node="n1", started_at=1.0)])
    await db.mark_nodes_offline(["n1"], now=100.0)
    lost = await db.get_task(1)
    assert lost.state is S.LOST and lost.finished_at == 100.0 and "stopped heartbeating" in lost.error
    back = await db.transition(1, S.RUNNING, now=101.0, allowed_from=LOST_ONLY)
    assert back.state is S.RUNNING
    assert back.finished_at is None and back.error is None and back.started_at == 1.0
    # ...and a lost task may also learn how it ended
    await db.insert_tasks(
        [make_task(2, state=S.LOST, node="n1", finished_at=50.0, error="node n1 stopped heartbeating")]
    )
    done = await db.transition(2, S.COMPLETED, now=102.0, exit_code=0)
    assert (done.state, done.exit_code, done.error, done.finished_at) == (S.COMPLETED, 0, None, 102.0)
    # restoring from lost only moves LOST tasks
    assert await db.transition(1, S.RUNNING, now=103.0, allowed_from=LOST_ONLY) is None


async def test_transition_guards_and_arguments(db):
    await db.insert_tasks([make_task(1, state=S.RUNNING, node="n1")])
    assert await db.transition(999, S.KILLED, now=1.0) is None
    # explicit guard narrower than the default
    assert await db.transition(1, S.KILLED, now=1.0, allowed_from=frozenset({S.PAUSED})) is None
    assert (await db.get_task(1)).state is S.RUNNING
    with pytest.raises(TypeError, match="bogus"):
        await db.transition(1, S.KILLED, now=1.0, bogus=1)
    # nothing may enter PENDING
    assert await db.transition(1, S.PENDING, now=1.0) is None


async def test_concurrent_transitions_exactly_one_wins(db):
    await db.insert_tasks([make_task(1, state=S.RUNNING, node="n1")])
    finals = [S.KILLED, S.COMPLETED, S.FAILED, S.KILLED_OOM] * 25
    results = await asyncio.gather(*(db.transition(1, st, now=float(i), exit_code=i) for i, st in enumerate(finals)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    stored = await db.get_task(1)
    assert stored == winners[0]
    assert stored.state in FINALS


FINALS = {S.COMPLETED, S.FAILED, S.KILLED, S.KILLED_OOM}


async def test_assign_many_moves_only_pending(db):
    await db.insert_tasks([make_task(1), make_task(2), make_task(3), make_task(4)])
    await db.transition(2, S.KILLED, now=1.0)
    moved = await db.assign_many(
        [
            Placement(3, "n2", None, (0, 1)),
            (1, "n1", 0, ()),
            (2, "n1", None, ()),
            (99, "n1", None, ()),
            (3, "nX", None, ()),  # a repeat: the first placement counts
        ],
        now=5.0,
    )
    assert moved == [3, 1]
    t1, t2, t3, t4 = await db.get_tasks([1, 2, 3, 4])
    assert (t1.state, t1.node, t1.numa, t1.gpus, t1.assigned_at) == (S.ASSIGNING, "n1", 0, [], 5.0)
    assert (t3.state, t3.node, t3.gpus) == (S.ASSIGNING, "n2", [0, 1])
    assert t2.state is S.KILLED and t2.node is None
    assert t4.state is S.PENDING
    assert await db.assign_many([(1, "n1", None, ())], now=6.0) == []  # already assigning
    assert await db.assign_many([], now=6.0) == []


async def test_assign_many_large_batch(db):
    await db.insert_tasks([make_task(i) for i in range(1, 1201)])
    moved = await db.assign_many([(i, f"n{i % 7}", None, (i % 3,)) for i in range(1, 1201, 2)], now=1.0)
    assert moved == list(range(1, 1201, 2))
    counts = await db.count_tasks_by_state()
    assert counts[S.ASSIGNING] == 600 and counts[S.PENDING] == 600
    assert (await db.get_task(599)).gpus == [599 % 3]


# ---------------------------------------------------------------- nodes and liveness


async def test_nodes_register_heartbeat_and_reregister(db):
    res = node(
        "n1",
        numa=(NumaNode(0, (0, 1, 2, 3), 8 << 30), NumaNode(1, (4, 5, 6, 7), 0)),
        gpus=(GpuInfo(0, "A100", "GPU-x", 80 << 30),),
    )
    rec = await db.upsert_node(res, now=10.0)
    assert isinstance(rec, NodeRecord)
    assert rec.online and rec.registered_at == 10.0 and rec.last_heartbeat == 10.0 and rec.stats == {}
    assert rec.resources == res

    assert await db.record_heartbeat("ghost", {"cpu": 1}, now=11.0) is None
    beat = await db.record_heartbeat("n1", {"cpu_percent": 12.5, "gpus": [{"util": 3}], "temp": None}, now=12.0)
    assert beat.last_heartbeat == 12.0 and beat.stats == {"cpu_percent": 12.5, "gpus": [{"util": 3}], "temp": None}

    smaller = node("n1", cores=4, memory=1 << 30)
    rec2 = await db.upsert_node(smaller, now=20.0)
    assert rec2.resources == smaller and rec2.registered_at == 20.0
    assert rec2.stats == beat.stats  # a re-registration keeps the last stats
    await db.upsert_node(node("a0"), now=20.0)
    assert [n.hostname for n in await db.list_nodes()] == ["a0", "n1"]
    assert await db.get_node("ghost") is None


async def test_mark_nodes_offline_only_touches_the_named_nodes_holding_tasks(db):
    await db.upsert_node(node("stale"), now=10.0)
    await db.upsert_node(node("fresh"), now=10.0)
    await db.record_heartbeat("fresh", {}, now=50.0)
    await db.insert_tasks(
        [
            make_task(1, state=S.ASSIGNING, node="stale"),
            make_task(2, state=S.RUNNING, node="stale"),
            make_task(3, state=S.PAUSED, node="stale"),
            make_task(4, state=S.COMPLETED, node="stale", finished_at=5.0, exit_code=0),
            make_task(5, state=S.PENDING, target="stale"),
            make_task(6, state=S.RUNNING, node="fresh"),
            make_task(7, state=S.KILLED, node="stale", finished_at=6.0),
        ]
    )
    result = await db.mark_nodes_offline(["stale"], now=60.0)
    assert result == [("stale", [1, 2, 3])]
    tasks = {t.id: t for t in await db.get_tasks(range(1, 8))}
    for i in (1, 2, 3):
        assert tasks[i].state is S.LOST
        assert tasks[i].finished_at == 60.0
        assert tasks[i].error == "node stale stopped heartbeating"
    assert tasks[4].state is S.COMPLETED and tasks[4].finished_at == 5.0 and tasks[4].error is None
    assert tasks[5].state is S.PENDING
    assert tasks[6].state is S.RUNNING
    assert tasks[7].state is S.KILLED
    assert not (await db.get_node("stale")).online
    assert (await db.get_node("fresh")).online
    assert [n.hostname for n in await db.list_nodes(online=True)] == ["fresh"]

    # already offline: not reported again
    assert await db.mark_nodes_offline(["stale"], now=61.0) == []
    # a node that went offline with nothing running is still reported; an unknown name is no node
    await db.upsert_node(node("idle"), now=0.0)
    assert await db.mark_nodes_offline(["idle", "stale", "nobody"], now=62.0) == [("idle", [])]
    # a heartbeat brings it back online
    assert (await db.record_heartbeat("stale", {}, now=70.0)).online


# ---------------------------------------------------------------- listing


async def test_list_paging_and_filters(db):
    tasks = []
    for i in range(1, 26):
        st = [S.PENDING, S.RUNNING, S.COMPLETED][i % 3]
        tasks.append(make_task(i, state=st, node=None if st is S.PENDING else f"n{i % 2}", batch_id=100 + i % 4))
    await db.insert_tasks(tasks)

    seen: list[int] = []
    before = None
    pages = 0
    while True:
        page = await db.list_tasks(limit=10, before_id=before)
        if not page:
            break
        pages += 1
        ids = [t.id for t in page]
        assert ids == sorted(ids, reverse=True)
        seen += ids
        before = ids[-1]
    assert pages == 3
    assert seen == list(range(25, 0, -1))

    running = await db.list_tasks(states={S.RUNNING}, limit=100)
    assert [t.id for t in running] == [i for i in range(25, 0, -1) if i % 3 == 1]
    both = await db.list_tasks(states={S.RUNNING, S.COMPLETED}, node="n1", limit=100)
    assert [t.id for t in both] == [i for i in range(25, 0, -1) if i % 3 != 0 and i % 2 == 1]
    assert await db.list_tasks(states=set()) == []
    assert [t.id for t in await db.list_tasks(states={S.PENDING}, limit=3, before_id=20)] == [18, 15, 12]
    assert [t.id for t in await db.list_tasks(batch_id=101, limit=100)] == [i for i in range(25, 0, -1) if i % 4 == 1]
    assert await db.list_tasks(limit=0) == []


async def test_load_pending_and_holding(db):
    await db.insert_tasks(
        [
            make_task(9),
            make_task(3),
            make_task(5, state=S.RUNNING, node="n1"),
            make_task(4, state=S.PAUSED, node="n1"),
            make_task(6, state=S.ASSIGNING, node="n2"),
            make_task(7, state=S.COMPLETED, node="n1"),
            make_task(8, state=S.LOST, node="n1"),
        ]
    )
    assert [t.id for t in await db.load_pending()] == [3, 9]
    assert [t.id for t in await db.load_holding()] == [4, 5, 6]
    counts = await db.count_tasks_by_state()
    assert counts[S.PENDING] == 2 and counts[S.RUNNING] == 1 and counts[S.FAILED] == 0


async def test_an_empty_existing_file_is_refused_not_started_as_an_empty_cluster(tmp_path):
    path = tmp_path / "host.db"
    path.write_bytes(b"")
    with pytest.raises(DatabaseError, match="exists but is empty"):
        await Database.open(path)
    assert path.stat().st_size == 0, "nothing was written into it"


async def test_a_database_with_damaged_pages_is_refused(tmp_path):
    path = tmp_path / "host.db"
    db = await Database.open(path)
    await db.insert_tasks([make_task(i) for i in range(1, 3000)])
    await db.close()
    with open(path, "r+b") as fh:  # garble pages in the middle (the header and schema stay)
        fh.seek(4096 * 8)
        fh.write(b"\xa5" * 4096 * 20)
    with pytest.raises(DatabaseError, match="integrity check|damaged|malformed"):
        await Database.open(path)


# ---------------------------------------------------------------- task dependencies


async def test_dependencies_are_stored_with_their_tasks_and_survive_a_reopen(tmp_path):
    path = tmp_path / "deps.db"
    database = await Database.open(path)
    try:
        await database.insert_tasks([make_task(1), make_task(2, S.COMPLETED)])
        waiter = make_task(3, after=[1], after_any=[2, 1])  # 1 in both lists: after
        await database.insert_tasks([waiter, make_task(4, after_any=[3])])
        # A dependency on a task that does not exist breaks the foreign key: nothing is stored.
        with pytest.raises(DatabaseError):
            await database.insert_tasks([make_task(5, after=[99])])
        assert await database.get_task(5) is None
        assert await database.transition(4, S.KILLED, now=2000.0) is not None
    finally:
        await database.close()
    database = await Database.open(path)
    try:
        assert await database.dependencies_of([3, 4, 1]) == {3: [(1, "after"), (2, "after_any")], 4: [(3, "after_any")]}
        # Only pending tasks' dependencies are loaded at start (4 was killed).
        assert await database.load_waiting_dependencies() == [(3, 1, "after"), (3, 2, "after_any")]
        assert await database.task_states([2, 3, 42]) == {2: S.COMPLETED, 3: S.PENDING}
    finally:
        await database.close()
    raw = sqlite3.connect(path)
    try:
        plan = " ".join(
            str(r[-1])
            for r in raw.execute("EXPLAIN QUERY PLAN SELECT task_id FROM task_dependencies WHERE depends_on=?", (1,))
        )
        assert "task_dependencies_on" in plan
    finally:
        raw.close()


async def test_cancelled_is_entered_from_pending_only(db):
    await db.insert_tasks([make_task(1), make_task(2)])
    assert (await db.transition(1, S.CANCELLED, now=2000.0, error="dependency 9 ended failed")).state is S.CANCELLED
    assert await db.transition(1, S.PENDING, now=2001.0) is None  # final
    await db.assign_many([(2, "n1", None, [])], now=2000.0)
    assert await db.transition(2, S.CANCELLED, now=2001.0) is None
    assert (await db.get_task(1)).error == "dependency 9 ended failed"
