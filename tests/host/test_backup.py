"""Backup and restore on real Host processes.

- `hakuriver.admin backup` while a thread submits tasks: the copy holds every
  task acknowledged before the backup started, and is sound; restored into a
  new Host with `hakuriver.host --restore`, that Host starts and serves them.
- The restore refuses what it must (not SQLite, damaged, too new, in use),
  each in one line, and leaves the current database as it was.
- The Host killed -9 in the middle of a backup: nothing is left at PATH, the
  live database is intact, the Host starts again and the next backup cleans up.
- CLI errors are one line: not an admin, PATH exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import toml

from hakuriver.cli.admin import prune_backups
from hakuriver.host.backup import check_backup_file, take_snapshot
from hakuriver.host.db import SCHEMA_VERSION, Database
from tests.harness.hostapi import BlockingHostApi
from tests.harness.polling import poll
from tests.harness.procs import Proc, child_env, free_port, host_argv, loopback_config

ADMIN = "backup-test-admin-token-000001"
RUNNER = "backup-test-runner-token-00001"


@dataclass
class Host(BlockingHostApi):
    root: Path
    config_path: Path
    url: str = ""
    token: str = ADMIN
    proc: Proc | None = None
    logs: list[Path] = field(default_factory=list)

    def debug_logs(self) -> str:
        return self.proc.tail() if self.proc else ""

    @property
    def db(self) -> Path:
        return self.root / "host.db"

    def start(self) -> None:
        n = len(self.logs)
        log = self.root / f"host-{n}.log"
        self.logs.append(log)
        self.proc = Proc("host", host_argv(self.config_path), log, child_env(self.root))
        self.proc.start()

        def healthy() -> bool:
            assert self.proc is not None
            if not self.proc.alive:
                raise AssertionError(f"the Host exited:\n{self.proc.tail()}")
            try:
                return self.api("GET", "/api/health", timeout=2)[0] == 200
            except OSError:
                return False

        poll(healthy, timeout=30, interval=0.1, what="the Host answers", on_timeout=self.debug_logs)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.stop(sig)

    def cli(self, module: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", f"hakuriver.cli.{module}", "--config", str(self.config_path), *args]
        return subprocess.run(argv, env=child_env(self.root), capture_output=True, text=True, timeout=timeout)


def _make_host(root: Path) -> Host:
    root.mkdir(parents=True, exist_ok=True)
    (root / "shared").mkdir(exist_ok=True)
    port = free_port()
    config = loopback_config(root, port=port, token="", heartbeat_interval=1, heartbeat_timeout_factor=30)
    config["auth"] = {"admin_token": ADMIN, "runner_token": RUNNER}
    path = root / "host.toml"
    path.write_text(toml.dumps(config))
    return Host(root=root, config_path=path, url=f"http://127.0.0.1:{port}")


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[list[Host]]:
    made: list[Host] = []
    try:
        yield made
    finally:
        for h in made:
            h.stop(signal.SIGKILL)


def _prefill(db: Path, rows: int, env_chars: int) -> None:
    """A database with `rows` finished tasks, each with `env_chars` of environment."""

    async def schema() -> None:
        await (await Database.open(db)).close()

    asyncio.run(schema())
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(
            """WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)
               INSERT INTO tasks (id, batch_id, state, command_json, cores, env_json, submitted_at,
                                  finished_at, exit_code, updated_at)
               SELECT 1000000 + i, 1000000 + i, 'completed', '["true"]', 1,
                      '{"K":"' || hex(randomblob(?)) || '"}', 1.0, 2.0, 0, 2.0 FROM n""",
            (rows, env_chars // 2),
        )
    conn.close()


def _register(host: Host, cores: int = 64) -> None:
    body = {
        "hostname": "n1",
        "url": f"http://127.0.0.1:{free_port()}",  # nothing listens: placed tasks stay where dispatch leaves them
        "cores": cores,
        "memory": 64 << 30,
        "node_key": "node-key-of-the-backup-test-01",
        "order_token": "order-token-of-the-backup-test",
    }
    status, reply = host.api("POST", "/api/runner/register", body, token=RUNNER)
    assert status == 200, reply


def _ids(db: Path) -> set[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM tasks")}
    finally:
        conn.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _one_error_line(run: subprocess.CompletedProcess[str], prog: str) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


# --------------------------------------------------------------------------- backup while submitting


class Submitter(threading.Thread):
    """Submits tasks one after another; records each id with when its 201 arrived."""

    def __init__(self, host: Host) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.stop_event = threading.Event()
        self.acked: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop_event.is_set():
                i += 1
                status, reply = self.host.api("POST", "/api/tasks", {"command": ["echo", str(i)], "cores": 1})
                assert status == 201, reply
                now = time.monotonic()
                with self.lock:
                    self.acked += [(now, int(t["task_id"])) for t in reply["tasks"]]
        except BaseException as e:
            self.error = e

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def acked_before(self, t: float) -> set[int]:
        with self.lock:
            return {i for at, i in self.acked if at < t}


def test_backup_while_submitting_then_restore_holds_every_acknowledged_task(tmp_path: Path, hosts: list[Host]) -> None:
    host = _make_host(tmp_path / "a")
    hosts.append(host)
    _prefill(host.db, rows=4000, env_chars=4000)  # ~17 MB: the copy takes many steps
    host.start()
    _register(host)
    submitter = Submitter(host)
    submitter.start()
    try:
        poll(lambda: submitter.count() >= 30 or submitter.error, timeout=60, what="30 submissions")
        started = time.monotonic()
        before = submitter.acked_before(started)
        backup = tmp_path / "out" / "host-backup.db"
        backup.parent.mkdir()
        run = host.cli("admin", "backup", str(backup))
        ended = time.monotonic()
        assert run.returncode == 0, run
        count_at_end = submitter.count()
        poll(lambda: submitter.count() >= count_at_end + 10 or submitter.error, timeout=60, what="more submissions")
    finally:
        submitter.stop_event.set()
        submitter.join(30)
    assert submitter.error is None, submitter.error
    during = submitter.acked_before(ended) - before
    assert run.stdout.startswith(f"wrote {backup} ("), run.stdout
    assert "keep it private" in run.stdout
    assert backup.stat().st_mode & 0o777 == 0o600
    assert not [p for p in backup.parent.iterdir() if p != backup], "a temporary file was left beside PATH"
    assert not [p for p in host.root.iterdir() if ".backup-" in p.name], "the Host left its copy behind"
    assert check_backup_file(str(backup)) == SCHEMA_VERSION

    in_backup = _ids(backup)
    missing = before - in_backup
    assert not missing, f"{len(missing)} tasks acknowledged before the backup are not in it"
    print(
        f"\nbackup while submitting: {len(before)} tasks acknowledged before it, {len(during)} during it "
        f"({len(during & in_backup)} of those in the copy), {submitter.count()} in all; "
        f"copy {backup.stat().st_size} bytes in {ended - started:.2f}s"
    )

    # Restore into a new Host.
    other = _make_host(tmp_path / "b")
    hosts.append(other)
    restored = other.cli("host", "--restore", str(backup))
    assert restored.returncode == 0, restored
    assert restored.stdout.count("\n") == 1 and restored.stdout.startswith(f"restored {other.db} from {backup}")
    assert other.db.stat().st_mode & 0o777 == 0o600
    other.start()
    last = max(before)
    status, task = other.api("GET", f"/api/tasks/{last}")
    assert status == 200 and task["command"] == task["command"] and task["task_id"] == str(last), task
    assert before <= _ids(other.db)
    # The restored Host takes new work.
    _register(other)
    status, reply = other.api("POST", "/api/tasks", {"command": ["echo", "after"], "cores": 1})
    assert status == 201, reply
    assert int(reply["tasks"][0]["task_id"]) not in in_backup


# --------------------------------------------------------------------------- restore refuses


@pytest.fixture
def stopped_host_with_backup(tmp_path: Path, hosts: list[Host]) -> tuple[Host, Path]:
    host = _make_host(tmp_path / "live")
    hosts.append(host)
    _prefill(host.db, rows=300, env_chars=4000)
    backup = tmp_path / "good.db"
    snap = take_snapshot(str(host.db))
    try:
        backup.write_bytes(Path(snap.path).read_bytes())
    finally:
        snap.close()
    return host, backup


def _assert_untouched(host: Host, sha: str) -> None:
    assert _sha(host.db) == sha
    assert not [p for p in host.root.iterdir() if "before-restore" in p.name or ".restore-" in p.name]


@pytest.mark.parametrize("case", ["not_sqlite", "damaged", "too_new", "empty_sqlite", "missing"])
def test_restore_refuses_a_bad_backup_in_one_line(
    tmp_path: Path, stopped_host_with_backup: tuple[Host, Path], case: str
) -> None:
    host, good = stopped_host_with_backup
    bad = tmp_path / "bad.db"
    if case == "not_sqlite":
        bad.write_bytes(b"this is a tarball, honest\n" * 1000)
    elif case == "damaged":
        data = bytearray(good.read_bytes())
        data[4096 * 3 : 4096 * 30] = b"\x5a" * (4096 * 27)
        bad.write_bytes(bytes(data))
    elif case == "too_new":
        bad.write_bytes(good.read_bytes())
        conn = sqlite3.connect(bad)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        conn.close()
    elif case == "empty_sqlite":
        conn = sqlite3.connect(bad)
        conn.execute("CREATE TABLE t (x)")
        conn.close()
    sha = _sha(host.db)
    run = host.cli("host", "--restore", str(bad), timeout=30)
    assert run.returncode == 1, run
    line = _one_error_line(run, "hakuriver.host")
    expected = {
        "not_sqlite": "not an SQLite database",
        "damaged": "damaged",
        "too_new": "newer than this HakuRiver",
        "empty_sqlite": "not a HakuRiver Host's",
        "missing": "cannot read",
    }[case]
    assert expected in line, line
    _assert_untouched(host, sha)


def test_restore_refuses_while_the_host_runs_on_the_database(stopped_host_with_backup: tuple[Host, Path]) -> None:
    host, good = stopped_host_with_backup
    host.start()
    sha_before = _ids(host.db)
    run = host.cli("host", "--restore", str(good), timeout=30)
    assert run.returncode == 1, run
    assert "is in use" in _one_error_line(run, "hakuriver.host")
    assert not [p for p in host.root.iterdir() if "before-restore" in p.name or ".restore-" in p.name]
    assert host.api("GET", "/api/health")[0] == 200
    assert _ids(host.db) == sha_before


def test_restore_keeps_the_current_database_aside(stopped_host_with_backup: tuple[Host, Path]) -> None:
    host, good = stopped_host_with_backup
    host.start()
    _register(host)
    status, reply = host.api("POST", "/api/tasks", {"command": ["echo", "newer"], "cores": 1})
    assert status == 201
    newer = int(reply["tasks"][0]["task_id"])
    host.stop()  # SIGTERM: the -wal may still hold the newest commits
    run = host.cli("host", "--restore", str(good), timeout=30)
    assert run.returncode == 0, run
    [aside] = [p for p in host.root.iterdir() if ".before-restore-" in p.name]
    assert str(aside) in run.stdout
    assert newer in _ids(aside), "the database kept aside lost its newest commits"
    assert newer not in _ids(host.db)
    assert not [p for p in host.root.iterdir() if p.name.startswith("host.db-")]
    host.start()
    assert host.api("GET", f"/api/tasks/{newer}")[0] == 404


# --------------------------------------------------------------------------- kill -9 during a backup


def test_kill_9_during_a_backup_leaves_nothing_at_path_and_the_host_restarts(tmp_path: Path, hosts: list[Host]) -> None:
    host = _make_host(tmp_path / "k")
    hosts.append(host)
    _prefill(host.db, rows=8000, env_chars=8000)  # ~70 MB: more than the socket buffers hold
    rows = len(_ids(host.db))
    host.start()
    out = tmp_path / "out"
    out.mkdir()
    path = out / "host.db"
    argv = [sys.executable, "-m", "hakuriver.cli.admin", "--config", str(host.config_path), "backup", str(path)]

    def receiving() -> bool:
        return any(p.suffix == ".part" and p.stat().st_size > 0 for p in out.iterdir())

    with subprocess.Popen(
        argv, env=child_env(host.root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as cli:
        try:
            # The answer has begun: bytes reach the client's temporary file. Stop the
            # client so the Host stays blocked mid-answer, its copy open; kill the Host.
            poll(receiving, timeout=60, interval=0.005, what="the download", ignore=(FileNotFoundError,))
            cli.send_signal(signal.SIGSTOP)
            assert [p for p in host.root.iterdir() if ".backup-" in p.name], "the Host's copy should exist mid-answer"
            host.stop(signal.SIGKILL)
            cli.send_signal(signal.SIGCONT)
            _stdout, stderr = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.send_signal(signal.SIGCONT)
                cli.kill()
                cli.wait(10)
    assert cli.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hakuriver.admin: error: "), stderr
    assert "nothing was written" in lines[0], lines[0]
    assert not path.exists() and not list(out.iterdir()), list(out.iterdir())

    conn = sqlite3.connect(host.db)
    assert conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    conn.close()
    assert len(_ids(host.db)) == rows
    stale = [p for p in host.root.iterdir() if ".backup-" in p.name]
    assert stale, "the killed Host's copy is what the next backup must clean up"

    host.start()
    run = host.cli("admin", "backup", str(path))
    assert run.returncode == 0, run
    assert not [p for p in host.root.iterdir() if ".backup-" in p.name], "stale copies were not removed"
    assert len(_ids(path)) == rows


# --------------------------------------------------------------------------- CLI errors


def test_cli_errors_are_one_line(tmp_path: Path, hosts: list[Host]) -> None:
    host = _make_host(tmp_path / "c")
    hosts.append(host)
    host.start()
    status, reply = host.api("POST", "/api/users", {"name": "alice"})
    assert status == 201, reply
    user_config = tmp_path / "alice.toml"
    config = toml.loads(host.config_path.read_text())
    config["auth"] = {"token": reply["token"]}
    user_config.write_text(toml.dumps(config))
    path = tmp_path / "b.db"

    argv = [sys.executable, "-m", "hakuriver.cli.admin", "--config", str(user_config), "backup", str(path)]
    run = subprocess.run(argv, env=child_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "only an admin may take backups" in _one_error_line(run, "hakuriver.admin")
    assert not path.exists() and not list(tmp_path.glob(".b.db.*"))

    path.write_bytes(b"precious")
    run = host.cli("admin", "backup", str(path))
    assert run.returncode == 2 and "exists; pass --force" in _one_error_line(run, "hakuriver.admin")
    assert path.read_bytes() == b"precious"
    run = host.cli("admin", "backup", str(path), "--force")
    assert run.returncode == 0, run
    assert check_backup_file(str(path)) == SCHEMA_VERSION

    run = host.cli("admin", "backup", "--into", str(tmp_path / "nowhere"))
    assert run.returncode == 2 and "no such directory" in _one_error_line(run, "hakuriver.admin")
    run = host.cli("admin", "backup")
    assert run.returncode == 2 and "PATH" in _one_error_line(run, "hakuriver.admin")

    # The API answers JSON reasons.
    status, body = host.api("GET", "/api/backup", token=reply["token"])
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = host.api("GET", "/api/backup", token="wrong")
    assert status == 401


def test_backup_into_a_directory_keeps_the_newest_and_never_follows_links(tmp_path: Path, hosts: list[Host]) -> None:
    host = _make_host(tmp_path / "t")
    hosts.append(host)
    host.start()
    into = tmp_path / "backups"
    into.mkdir(mode=0o700)
    outside = tmp_path / "outside.db"
    outside.write_bytes(b"not ours")
    (into / "host-19990101T000000Z.db").symlink_to(outside)  # older than all: would be pruned first
    for stamp in ("20000101T000000Z", "20000102T000000Z", "20000103T000000Z"):
        (into / f"host-{stamp}.db").write_bytes(b"old")
    (into / "notes.txt").write_text("mine")
    run = host.cli("admin", "backup", "--into", str(into), "--keep", "2")
    assert run.returncode == 0, run
    assert "removed 2 older" in run.stdout
    names = sorted(p.name for p in into.iterdir())
    assert names[0] == "host-19990101T000000Z.db" and (into / names[0]).is_symlink()
    assert "host-20000103T000000Z.db" in names and "notes.txt" in names
    assert len([n for n in names if n.startswith("host-")]) == 3  # the link, the newest old one, the new one
    assert outside.read_bytes() == b"not ours"
    [new] = [p for p in into.iterdir() if p.name.startswith("host-2") and p.name > "host-2001"]
    assert check_backup_file(str(new)) == SCHEMA_VERSION
    assert prune_backups(str(into), 1) == [str(into / "host-20000103T000000Z.db")]


def test_snapshot_of_a_host_in_memory_is_refused(tmp_path: Path) -> None:
    from hakuriver.errors import Conflict

    with pytest.raises(Conflict):
        take_snapshot(":memory:")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage", ["damaged", "empty"])
def test_restore_over_a_database_the_host_refuses(stopped_host_with_backup: tuple[Host, Path], damage: str) -> None:
    """The usual reason to restore: the Host will not start on its database."""
    host, good = stopped_host_with_backup
    if damage == "empty":
        host.db.write_bytes(b"")
    else:
        with open(host.db, "r+b") as fh:
            fh.seek(4096 * 5)
            fh.write(b"\x5a" * 4096 * 40)
    broken = host.db.read_bytes()
    refused = host.cli("host", timeout=30)  # serving, not restoring: refused at start
    assert refused.returncode == 1 and "restore it from a backup" in refused.stderr.lower(), refused
    run = host.cli("host", "--restore", str(good), timeout=30)
    assert run.returncode == 0, run
    [aside] = [p for p in host.root.iterdir() if p.name.startswith("host.db.before-restore-")]
    assert aside.read_bytes() == broken, "the file kept aside must be the one replaced, as it was"
    host.start()
    assert _ids(host.db) == _ids(good)


def test_a_client_that_leaves_mid_answer_costs_one_log_line(tmp_path: Path, hosts: list[Host]) -> None:
    import socket

    host = _make_host(tmp_path / "d")
    hosts.append(host)
    _prefill(host.db, rows=4000, env_chars=8000)  # ~33 MB: more than the socket buffers hold
    host.start()
    port = int(host.url.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"GET /api/backup HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 200"), "the answer should begin"
    poll(
        lambda: "the client left after" in host.debug_logs(),
        timeout=60,
        what="the Host noticing",
        on_timeout=host.debug_logs,
    )
    poll(lambda: not [p for p in host.root.iterdir() if ".backup-" in p.name], timeout=30, what="the copy removed")
    assert "Traceback" not in host.debug_logs()
    assert host.api("GET", "/api/health")[0] == 200
