"""The long-lived task launcher (`launcher serve`) and the runner's session with it.

Real processes throughout: the launcher's own `cmd_serve` in a child Python, and
a stand-in serve (a small script) where a test needs it to hold, die or refuse."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver import launcher as L
from hakuriver.errors import ExecutorError
from hakuriver.runner.executors import systemd as systemd_mod
from hakuriver.runner.executors.launcher_session import Call, LauncherSession
from hakuriver.runner.executors.systemd import SystemdExecutor
from tests.runner.dockerfix import eventually

CONFIG = {"version": 1, "task_users": ["nobody"], "shared_dirs": ["/srv/s"], "local_temp_dirs": ["/srv/t"]}


@pytest.fixture
def owned_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a launcher copy runs its real paths: as root, the launcher acts only from
    directories only root may write, which no temporary directory is, so a directory
    in root's home; otherwise `tmp_path`."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="hkr-launcher-test-", dir=os.path.expanduser("~")))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _launcher_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the launcher and a config beside it (the copy can be changed)."""
    copy = tmp_path / "launcher.py"
    shutil.copyfile(L.__file__, copy)
    config = tmp_path / "launcher.json"
    config.write_text(json.dumps({**CONFIG, "state_dir": str(tmp_path / "state")}))
    return copy, config


def _python(copy: Path, config: Path, call: str) -> list[str]:
    """A child Python that loads the launcher copy and runs `call` (main or cmd_serve)."""
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("hrl", {str(copy)!r})
        L = importlib.util.module_from_spec(spec); spec.loader.exec_module(L)
        sys.exit({call})
        """
    )
    return [sys.executable, "-IS", "-c", code]


def _serve(copy: Path, config: Path, sudoers: tuple[str, ...] = (), lifetime: float = 600.0) -> list[str]:
    # cmd_serve itself: main(["serve"]) as root first checks that the launcher's
    # directories are root's, which a temporary directory is not.
    streams = "sys.stdin.buffer, sys.stdout.buffer"
    return _python(
        copy,
        config,
        f"L.cmd_serve({str(copy)!r}, {str(config)!r}, {streams}, authority_paths={sudoers!r}, lifetime={lifetime!r})",
    )


def _one_shot(copy: Path, config: Path, args: list[str], data: bytes | None) -> Call:
    argv = _python(copy, config, f"L.main({args!r}, config_path={str(config)!r})")
    r = subprocess.run(argv, input=data or b"", capture_output=True, timeout=60)
    return Call(r.returncode, r.stdout.decode(), r.stderr.decode())


async def test_a_session_answers_exactly_what_the_one_shot_launcher_prints(owned_dir: Path) -> None:
    copy, config = _launcher_copy(owned_dir)
    session = LauncherSession(_serve(copy, config))
    try:
        info = await session.call(["info"], input=None, timeout=60)
        assert info is not None and info.rc == 0 and json.loads(info.stdout)["task_users"] == ["nobody"], info
        for args, data in (
            (["info"], None),
            (["kill", "1", "SIGBOGUS"], None),
            (["cleanup", "../1"], None),
            (["start"], b'{"task_id": "1", "user": "root"'),
            (["start"], '{"task_id": "1", "user": "nobody", "command": ["é\\udcff"]}'.encode("utf-8", "surrogatepass")),
            (["bogus"], None),
        ):
            got = await session.call(args, input=data, timeout=60)
            assert got == _one_shot(copy, config, args, data), args
        first_pid = session.pid
        assert first_pid and (await session.call(["info"], input=None, timeout=60)) is not None
        assert session.pid == first_pid, "one process answered every call"
        for sub in ("exec", "poststop", "serve"):
            got = await session.call([sub, "1"], input=None, timeout=60)
            assert got is not None and got.rc == 2 and f"{sub} is never run through serve" in got.stderr
    finally:
        await session.close()


async def test_a_changed_launcher_hands_over_to_a_new_session(tmp_path: Path) -> None:
    copy, config = _launcher_copy(tmp_path)
    session = LauncherSession(_serve(copy, config))
    try:
        assert await session.call(["info"], input=None, timeout=60) is not None
        old = session.pid
        copy.write_text(copy.read_text() + "\n# upgraded\n")
        # The old one runs nothing and ends: the caller runs this request one-shot.
        assert await session.call(["info"], input=None, timeout=60) is None
        assert await session.call(["info"], input=None, timeout=60) is not None
        assert session.pid not in (None, old)
    finally:
        await session.close()


async def test_a_session_sudo_started_ends_when_sudo_rules_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revoked sudoers rule stops a runner's NULL tasks at its next call: the session
    runs nothing more, and the one-shot call meets sudo's current rules."""
    copy, config = _launcher_copy(tmp_path)
    rules = tmp_path / "sudoers.d"
    rules.mkdir()
    (rules / "hakuriver").write_text("runner ALL=(root) NOPASSWD: /launcher\n")
    monkeypatch.setenv("SUDO_UID", "1000")  # what sudo sets: the session was started through it
    session = LauncherSession(_serve(copy, config, (str(rules),)))
    try:
        assert await session.call(["info"], input=None, timeout=60) is not None
        assert await session.call(["info"], input=None, timeout=60) is not None
        (rules / "hakuriver").rename(tmp_path / "sudoers.away")
        assert await session.call(["info"], input=None, timeout=60) is None
    finally:
        await session.close()


STAND_IN = textwrap.dedent(
    """
    import json, os, sys, time
    log, hello = sys.argv[1], sys.argv[2] == "hello"
    with open(log, "a") as fh:
        fh.write("started\\n")
    if not hello:
        sys.stderr.write("hakuriver-task-launcher: unknown subcommand 'serve'\\n")
        sys.exit(2)
    print(json.dumps({"serve": 1, "version": 1, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        argv = json.loads(line)["argv"]
        if argv[0] == "die":
            sys.exit(1)
        if argv[0] == "hold":
            open(log + ".holding", "w").close()
            deadline = time.monotonic() + 30
            while not os.path.exists(log + ".release") and time.monotonic() < deadline:
                time.sleep(0.01)  # the stand-in waits for the test's file, with a deadline
        print(json.dumps({"rc": 0, "stdout": " ".join(argv), "stderr": ""}), flush=True)
    """
)


def _stand_in(tmp_path: Path, *, hello: bool = True) -> tuple[list[str], Path]:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    log = tmp_path / "starts.log"
    return [sys.executable, str(script), str(log), "hello" if hello else "refuse"], log


async def _hold(session: LauncherSession, log: Path) -> asyncio.Future[Call | None]:
    """A `hold` request the stand-in is holding (the session busy until `.release`)."""
    holding = asyncio.ensure_future(session.call(["hold"], input=None, timeout=60))
    await eventually(lambda: Path(f"{log}.holding").exists(), what="the stand-in to hold the session")
    return holding


async def test_a_busy_session_sends_the_caller_one_shot_and_a_dead_one_is_replaced(tmp_path: Path) -> None:
    argv, log = _stand_in(tmp_path)
    session = LauncherSession(argv)
    try:
        holding = await _hold(session, log)
        assert await session.call(["info"], input=None, timeout=60) is None, "busy: one-shot instead of a queue"
        Path(f"{log}.release").touch()
        assert (await holding) == Call(0, "hold", "")
        # Dying mid-request fails that request (it may have run), and only that one.
        with pytest.raises(ExecutorError, match="session ended during die"):
            await session.call(["die"], input=None, timeout=60)
        assert await session.call(["info"], input=None, timeout=60) == Call(0, "info", "")
        assert log.read_text().count("started") == 2
    finally:
        await session.close()


async def test_a_session_asks_for_a_restart_after_its_lifetime(tmp_path: Path) -> None:
    """What serve cannot watch (an LDAP rule, a PAM lock) applies within its lifetime."""
    copy, config = _launcher_copy(tmp_path)
    session = LauncherSession(_serve(copy, config, lifetime=0.0))
    try:
        assert await session.call(["info"], input=None, timeout=60) is None
    finally:
        await session.close()


async def test_close_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    argv, log = _stand_in(tmp_path)
    session = LauncherSession(argv)
    holding = await _hold(session, log)
    closing = asyncio.ensure_future(session.close())
    Path(f"{log}.release").touch()
    await closing
    assert (await holding) == Call(0, "hold", "")
    assert await session.call(["info"], input=None, timeout=60) is None, "closed: one-shot from now on"


async def test_a_cancelled_call_never_leaves_its_answer_for_the_next(tmp_path: Path) -> None:
    argv, log = _stand_in(tmp_path)
    session = LauncherSession(argv)
    try:
        holding = await _hold(session, log)
        holding.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holding
        Path(f"{log}.release").touch()  # the old session answers "hold" now, to nobody
        assert await session.call(["info"], input=None, timeout=60) == Call(0, "info", "")
        assert log.read_text().count("started") == 2
    finally:
        await session.close()


async def test_a_launcher_without_serve_is_asked_again_only_after_a_while(tmp_path: Path) -> None:
    argv, log = _stand_in(tmp_path, hello=False)
    now = [1000.0]
    session = LauncherSession(argv, retry_after=60.0, clock=lambda: now[0])
    try:
        assert await session.call(["info"], input=None, timeout=60) is None
        assert await session.call(["info"], input=None, timeout=60) is None
        assert log.read_text().count("started") == 1
        now[0] += 61
        assert await session.call(["info"], input=None, timeout=60) is None
        assert log.read_text().count("started") == 2
    finally:
        await session.close()


async def test_the_executor_answers_from_its_session_and_falls_back_to_one_shot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launcher the executor runs: a stand-in that answers `info` one-shot with
    {"via": "one-shot"} and, as `serve`, each request with {"via": "serve"}."""
    fake = tmp_path / "launcher"
    fake.write_text(
        "#!"
        + sys.executable
        + "\n"
        + textwrap.dedent(
            """
            import json, os, sys
            if sys.argv[1] != "serve":
                print(json.dumps({"via": "one-shot"}))
                sys.exit(0)
            if os.path.exists(sys.argv[0] + ".no-serve"):
                sys.exit(2)
            print(json.dumps({"serve": 1, "version": 1, "pid": os.getpid()}), flush=True)
            for line in sys.stdin:
                print(json.dumps({"rc": 0, "stdout": json.dumps({"via": "serve"}), "stderr": ""}), flush=True)
            """
        )
    )
    fake.chmod(0o755)
    monkeypatch.setattr(systemd_mod, "launcher_problem", lambda path: None)
    ex = SystemdExecutor("n1", service_user="hkr", launcher_path=str(fake), use_sudo=False)
    try:
        assert await ex._launcher("info") == {"via": "serve"}
    finally:
        await ex.close()
    Path(f"{fake}.no-serve").touch()
    ex = SystemdExecutor("n1", service_user="hkr", launcher_path=str(fake), use_sudo=False)
    try:
        assert await ex._launcher("info") == {"via": "one-shot"}
    finally:
        await ex.close()
