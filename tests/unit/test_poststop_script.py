"""The unit's poststop hook, a dash script: what it records, and how it travels.

Its home is a real unit (tests/systemd run it under systemd in a node, OOM kills and
signals included); here it runs in dash on this machine, with the three words systemd
gives it, after the two decodings systemd applies to the ExecStopPost= value."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from hakuriver import launcher as L
from hakuriver.models import TaskState
from hakuriver.runner.executors.systemd import exit_result_from_record


def as_systemd_runs_it(value: str) -> list[str]:
    """The argv systemd runs for `value`: systemd-run's unquoting of the one quoted
    word (`\\\\` and `\\"`), then the manager's `$$` -> `$`. Only what the value uses."""
    assert value.startswith('+/bin/sh -c "')
    quoted, rest = value[len('+/bin/sh -c "') :].split('" hakuriver-poststop ', 1)
    script, i = [], 0
    while i < len(quoted):
        if quoted[i] == "\\":
            assert quoted[i + 1] in '\\"', 'only \\\\ and \\" are escaped'
            i += 1
        else:
            assert quoted[i] != '"', "an unescaped quote would end the word"
        script.append(quoted[i])
        i += 1
    words = "".join(script)
    assert "$" not in words.replace("$$", ""), "a lone $ would be expanded by systemd"
    return ["/bin/sh", "-c", words.replace("$$", "$"), "hakuriver-poststop", *rest.split(" ")]


def run_hook(state: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = as_systemd_runs_it(L.poststop_command(41, str(state)))
    assert argv[2] == L.POSTSTOP_SCRIPT
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_the_value_has_no_specifier_and_names_its_tools_by_path() -> None:
    value = L.poststop_command(41, "/var/lib/hakuriver/task-status")
    assert "%" not in value  # systemd's specifiers
    assert value.endswith('" hakuriver-poststop 41 /var/lib/hakuriver/task-status')
    for tool in ("mv", "sync", "mkdir"):
        assert f" {tool} " not in L.POSTSTOP_SCRIPT and f"/bin/{tool} " in L.POSTSTOP_SCRIPT


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
    assert sorted(os.listdir(tmp_path)) == ["41.json"]  # renamed in, nothing left aside
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
    assert os.listdir(tmp_path) == []


def test_an_existing_record_is_replaced_whole(tmp_path: Path) -> None:
    (tmp_path / "41.json").write_text("{}")
    r = run_hook(tmp_path, {"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"})
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "41.json").read_text())["result"] == "success"
