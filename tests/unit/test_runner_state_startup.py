"""A Runner that cannot trust its state store refuses to start, in one line,
within seconds: an empty file that is not new, a file that is not SQLite, a
damaged one, a newer schema, a symbolic link. A real Runner process each time."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import toml

from hakuriver.runner.state import MIGRATIONS, RunnerState, StateError
from tests.harness.procs import child_env, free_port, loopback_config, runner_argv, runner_config

NAME = "state-test-node"


def _config(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "shared").mkdir(exist_ok=True)
    (tmp_path / "scratch").mkdir(exist_ok=True)
    host = loopback_config(
        tmp_path, port=free_port(), token="state-test-token-000001", heartbeat_interval=1, heartbeat_timeout_factor=3
    )
    cfg = runner_config(host, NAME, port=free_port(), local_temp=tmp_path / "scratch")
    path = tmp_path / "runner.toml"
    path.write_text(toml.dumps(cfg))
    state_dir = Path(cfg["runner"]["state_dir"])
    state_dir.mkdir(mode=0o700, exist_ok=True)
    return path, state_dir / f"runner-{NAME}.db"


def _store_with_tasks(path: Path) -> None:
    async def make() -> None:
        state = await RunnerState.open(str(path))
        await state.secret("node_key")
        # Fill pages for the damage below.
        await state._write(
            *[
                (
                    "INSERT INTO tasks (task_id, handle, task, saved_at) VALUES (?, ?, ?, ?)",
                    (i, "{}", "x" * 3000, 1.0),
                )
                for i in range(1, 400)
            ]
        )
        await state.close()

    asyncio.run(make())


@pytest.mark.parametrize("case", ["empty", "not_sqlite", "damaged", "too_new", "symlink"])
def test_a_state_store_that_cannot_be_trusted_stops_the_runner_in_one_line(tmp_path: Path, case: str) -> None:
    config, store = _config(tmp_path)
    expected = {
        "empty": "exists but is empty",
        "not_sqlite": "not a database",
        "damaged": "runner state",
        "too_new": "newer than this HakuRiver",
        "symlink": "cannot open runner state",
    }[case]
    if case == "empty":
        store.write_bytes(b"")
    elif case == "not_sqlite":
        store.write_bytes(b"definitely not sqlite\n" * 500)
    elif case == "damaged":
        _store_with_tasks(store)
        with open(store, "r+b") as fh:
            fh.seek(4096 * 4)
            fh.write(b"\x5a" * 4096 * 20)
    elif case == "too_new":
        _store_with_tasks(store)
        conn = sqlite3.connect(store)
        conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
        conn.close()
    elif case == "symlink":
        target = tmp_path / "elsewhere.db"
        _store_with_tasks(target)
        store.symlink_to(target)
    before = store.read_bytes() if case != "symlink" else b""
    started = time.monotonic()
    run = subprocess.run(
        runner_argv(config), env=child_env(tmp_path), capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 1, run
    assert time.monotonic() - started < 30
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("hakuriver.runner: error: "), run.stderr
    assert expected in last, last
    assert "Traceback" not in run.stderr
    if case != "symlink":
        assert store.read_bytes() == before, "the refused store was changed"


async def test_a_new_store_and_a_sound_one_open(tmp_path: Path) -> None:
    path = tmp_path / "state" / "runner.db"
    state = await RunnerState.open(str(path))
    key = await state.secret("node_key")
    await state.close()
    state = await RunnerState.open(str(path))
    assert await state.secret("node_key") == key
    await state.close()


async def test_the_error_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / "runner.db"
    path.write_bytes(b"")
    with pytest.raises(StateError, match="exists but is empty"):
        await RunnerState.open(str(path))
