"""A Host that cannot trust its database refuses to start, says so in one line, and
exits at once (a process that hangs instead is never restarted by systemd)."""

from __future__ import annotations

import gc
import sqlite3
import subprocess
from pathlib import Path

import pytest
import toml

from hakuriver.host.db import Database
from tests.harness.procs import child_env, free_port, host_argv, loopback_config

from .test_db import make_task


def _start_host(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "shared").mkdir(exist_ok=True)
    config = loopback_config(
        tmp_path, port=free_port(), token="startup-test-token-0001", heartbeat_interval=1, heartbeat_timeout_factor=3
    )
    path = tmp_path / "host.toml"
    path.write_text(toml.dumps(config))
    return subprocess.run(
        host_argv(path), env=child_env(tmp_path), capture_output=True, text=True, timeout=30, check=False
    )


def test_an_empty_database_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "host.db").write_bytes(b"")
    run = _start_host(tmp_path)
    assert run.returncode == 1, run
    assert run.stderr.strip().splitlines()[-1].startswith("hakuriver.host: error: database "), run.stderr
    assert "exists but is empty" in run.stderr


@pytest.mark.parametrize("offset_pages", [8, 40])
async def test_a_damaged_database_is_refused_and_the_host_exits(tmp_path: Path, offset_pages: int) -> None:
    db = await Database.open(tmp_path / "host.db")
    await db.insert_tasks([make_task(i) for i in range(1, 3000)])
    await db.close()
    with open(tmp_path / "host.db", "r+b") as fh:
        fh.seek(4096 * offset_pages)
        fh.write(b"\x5a" * 4096 * 12)
    run = _start_host(tmp_path)  # the timeout fails the test if the Host hangs
    assert run.returncode == 1, run
    assert "hakuriver.host: error: database " in run.stderr and "restore it from a backup" in run.stderr, run.stderr


async def test_a_failure_after_the_database_opened_still_ends_the_process(tmp_path: Path) -> None:
    """A row the Host cannot read fails its start after the database is open (its
    worker thread alive): the process still exits, non-zero, within seconds."""
    db = await Database.open(tmp_path / "host.db")
    await db.insert_tasks([make_task(1)])
    await db.close()
    conn = sqlite3.connect(tmp_path / "host.db")
    with conn:
        conn.execute("UPDATE tasks SET command_json = 'not json' WHERE id = 1")
    conn.close()
    run = _start_host(tmp_path)
    assert run.returncode == 1, run


async def test_the_host_process_freezes_its_start_up_heap_while_it_serves(tmp_path: Path) -> None:
    """The Host CLI's app moves what start-up made out of the collector's sight
    (shorter full-collection pauses of the event loop), and lets it go at stop."""
    from aiohttp import web

    from hakuriver.cli.host import _create_app
    from hakuriver.config import config_from_dict

    (tmp_path / "shared").mkdir()
    config = config_from_dict(
        {
            "paths": {"shared_dir": str(tmp_path / "shared")},
            "database": {"db_file": str(tmp_path / "host.db")},
            "auth": {"admin_token": "freeze-test-admin-0001", "runner_token": "freeze-test-runner-0001"},
        }
    )
    gc.unfreeze()
    runner = web.AppRunner(_create_app(config))
    await runner.setup()
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await runner.cleanup()
    assert gc.get_freeze_count() == 0
