"""The unit's poststop hook, a dash script: what it records, and how it travels.

Its home is a real unit (tests/systemd run it under systemd in a node, OOM kills and
signals included, and across a daemon-reload); here it runs in dash on this machine, as
the unit's ExecStopPost= runs it, with the three words systemd gives it."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hakuriver import launcher as L
from hakuriver.models import TaskState
from hakuriver.runner.executors.systemd import exit_result_from_record


def run_hook(state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert L.ensure_poststop_script(L._StateDirOnly(str(state))) == str(state / L.POSTSTOP_NAME)
    return subprocess.run(L.poststop_argv(41, str(state)), env=env, capture_output=True, text=True, timeout=30)


def records(state: Path) -> list[str]:
    return sorted(set(os.listdir(state)) - {L.POSTSTOP_NAME})


def test_the_command_is_plain_words_and_the_script_names_its_tools_by_path() -> None:
    argv = L.poststop_argv(41, "/var/lib/hakuriver/task-status")
    assert argv == ["/bin/sh", "/var/lib/hakuriver/task-status/.poststop.sh", "41", "/var/lib/hakuriver/task-status"]
    # Nothing systemd expands ($), specifies (%), unquotes or escapes, in either form.
    assert not any(c in w for w in argv for c in "$%\\\"' ;")
    assert L.poststop_command(41, "/var/lib/hakuriver/task-status") == " ".join(argv)
    with pytest.raises(L.Refused):
        L.poststop_argv(41, "/var/lib/a b")
    for tool in ("mv", "sync", "mkdir"):
        assert f" {tool} " not in L.POSTSTOP_SCRIPT and f"/bin/{tool} " in L.POSTSTOP_SCRIPT


def test_the_script_file_is_remade_when_it_is_not_roots_own_copy(tmp_path: Path) -> None:
    cfg = L._StateDirOnly(str(tmp_path))
    path = tmp_path / L.POSTSTOP_NAME
    want = L.POSTSTOP_SCRIPT + "\n"
    L.ensure_poststop_script(cfg)
    assert path.read_text() == want and (path.stat().st_mode & 0o777) == 0o644
    first = path.stat().st_ino
    L.ensure_poststop_script(cfg)
    assert path.stat().st_ino == first  # kept: nothing to write
    for spoil in ("truncated", "longer", "writable", "link"):
        if spoil == "truncated":
            path.write_text(want[:-10])
        elif spoil == "longer":
            path.write_text(want + "touch /tmp/hkr-poststop-extra\n")
        elif spoil == "writable":
            path.chmod(0o666)
        else:
            target = tmp_path / "elsewhere"
            target.write_text(want)
            path.unlink()
            path.symlink_to(target)
        L.ensure_poststop_script(cfg)
        assert not path.is_symlink() and path.read_text() == want, spoil
        assert (path.stat().st_mode & 0o777) == 0o644, spoil
    assert (tmp_path / "elsewhere").read_text() == want  # the link was replaced, not followed
    assert sorted(os.listdir(tmp_path)) == sorted([L.POSTSTOP_NAME, "elsewhere"])  # nothing left aside


@pytest.mark.parametrize(
    ("code", "status", "result", "state", "exit_code"),
    [
        ("exited", "0", "success", TaskState.COMPLETED, 0),
        ("exited", "3", "exit-code", TaskState.FAILED, 3),
        ("killed", "TERM", "signal", TaskState.FAILED, 143),
    ],
)
def test_the_record_is_what_the_runner_reads(tmp_path: Path, code, status, result, state, exit_code) -> None:
    r = run_hook(tmp_path, {"SERVICE_RESULT": result, "EXIT_CODE": code, "EXIT_STATUS": status})
    assert r.returncode == 0, r.stderr
    assert records(tmp_path) == ["41.json"]  # renamed in, nothing left aside
    record = json.loads((tmp_path / "41.json").read_text())
    assert record == {
        "task_id": "41",
        "unit": "hakuriver-task-41.service",
        "result": result,
        "exit_code": code,
        "exit_status": status,
        "oom_kills": record["oom_kills"],
    }
    assert isinstance(record["oom_kills"], int) and record["oom_kills"] >= 0
    assert L.read_status(L._StateDirOnly(str(tmp_path)), 41) == record
    got = exit_result_from_record(record)
    assert (got.state, got.exit_code) == (state, exit_code)


def test_odd_words_are_recorded_as_unknown_never_as_json(tmp_path: Path) -> None:
    r = run_hook(tmp_path, {"SERVICE_RESULT": 'x", "oom_kills": 9, "y', "EXIT_CODE": "exited", "EXIT_STATUS": "0"})
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "41.json").read_text())
    assert (record["result"], record["exit_code"], record["exit_status"]) == ("unknown", "", "")
    assert exit_result_from_record(record).state is TaskState.FAILED


def test_outside_a_unit_it_records_nothing(tmp_path: Path) -> None:
    r = run_hook(tmp_path, {"EXIT_CODE": "exited"})
    assert r.returncode == 2 and "only as the ExecStopPost" in r.stderr
    assert records(tmp_path) == []


def test_an_existing_record_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / "41.json").write_text("{}")
    r = run_hook(tmp_path, {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "41.json").read_text())["result"] == "success"
