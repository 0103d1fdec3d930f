"""Time limits in the records that carry them: the RunRequest (versioned), the
launcher's start request and unit argv (RuntimeMaxSec), and how a unit's
`timeout` result reads. Pure."""

from __future__ import annotations

import json

import pytest

from hakuriver import launcher as L
from hakuriver.errors import ValidationError
from hakuriver.launcher import DEFAULT_LAUNCHER_PATH
from hakuriver.models import FINAL_STATES, TRANSITIONS, TaskState, predecessors
from hakuriver.runner.executors.systemd import exit_result_from_record, exit_result_from_unit, launch_request
from hakuriver.runrequest import RUN_REQUEST_VERSION, RunRequest
from tests.unit.test_systemd_builders import ACCOUNTS, CFG, plan, spec


def test_timeout_is_a_final_state_entered_from_every_state_a_runner_holds() -> None:
    assert TaskState.TIMEOUT in FINAL_STATES and TaskState.TIMEOUT.is_final
    assert TRANSITIONS[TaskState.TIMEOUT] == frozenset()
    assert predecessors(TaskState.TIMEOUT) == {
        TaskState.ASSIGNING,
        TaskState.RUNNING,
        TaskState.PAUSED,
        TaskState.LOST,
    }


def test_a_run_request_without_a_limit_keeps_the_first_shape() -> None:
    """An older runner still runs it: version 1, no time_limit field."""
    data = RunRequest(task_id=5, command=("true",), container="env").to_json()
    assert data["version"] == 1 and "time_limit" not in data
    assert RunRequest.from_json(data).time_limit is None


def test_a_run_request_with_a_limit_is_version_2_and_reads_back() -> None:
    request = RunRequest(task_id=5, command=("true",), container="env", time_limit=7200)
    data = json.loads(json.dumps(request.to_json()))
    assert (data["version"], data["time_limit"]) == (2, 7200)
    assert RUN_REQUEST_VERSION >= 2
    assert RunRequest.from_json(data).time_limit == 7200


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"version": 1, "time_limit": 60}, "version 2"),
        ({"version": 2, "time_limit": 0}, "between 1 and"),
        ({"version": 2, "time_limit": 31 * 86400}, "between 1 and"),
        ({"version": 2, "time_limit": "2h"}, "whole seconds"),
        ({"version": 2, "time_limit": True}, "whole seconds"),
        ({"version": RUN_REQUEST_VERSION + 1}, "newer than this runner"),
    ],
)
def test_bad_limits_in_run_requests_are_refused(fields: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        RunRequest.from_json({"task_id": "5", "command": ["true"], "container": "env", **fields})


def test_the_launcher_gives_the_unit_runtime_max_sec_and_the_grace_as_stop_timeout() -> None:
    argv = L.systemd_run_argv(plan(time_limit=5400, timeout_grace=30), CFG, DEFAULT_LAUNCHER_PATH)
    options = argv[: argv.index("--")]
    assert "--property=RuntimeMaxSec=5400" in options and "--property=TimeoutStopSec=30s" in options
    plain = L.systemd_run_argv(plan(), CFG, DEFAULT_LAUNCHER_PATH)
    assert not [a for a in plain if "RuntimeMaxSec" in a]
    assert f"--property=TimeoutStopSec={L.TIMEOUT_STOP}" in plain


@pytest.mark.parametrize(
    "fields",
    [{"time_limit": 0}, {"time_limit": 31 * 86400}, {"time_limit": "1h"}, {"timeout_grace": 0}, {"timeout_grace": 1.5}],
)
def test_the_launcher_refuses_odd_limits(fields: dict) -> None:
    with pytest.raises(L.Refused, match="whole number"):
        plan(**fields)


def test_the_executor_sends_the_limit_only_when_there_is_one() -> None:
    req = launch_request(spec(time_limit=60, timeout_grace=0.3), user="alice", runner_name="n1", numactl=None)
    assert (req["time_limit"], req["timeout_grace"]) == (60, 1)  # whole seconds, at least one
    p = L.validate_request(req, CFG, accounts=ACCOUNTS)
    assert (p.time_limit, p.timeout_grace) == (60, 1)
    # Without a limit the request is what a launcher from before limits reads.
    assert not {"time_limit", "timeout_grace"} & set(launch_request(spec(), user="alice", runner_name="", numactl=None))


def test_a_unit_stopped_by_runtime_max_sec_reads_timeout() -> None:
    record = {"result": "timeout", "exit_code": "killed", "exit_status": "TERM", "oom_kills": 0}
    assert (exit_result_from_record(record).state, exit_result_from_record(record).exit_code) == (
        TaskState.TIMEOUT,
        143,
    )
    unit = exit_result_from_unit({"ExecMainCode": "2", "ExecMainStatus": "9", "Result": "timeout"})
    assert (unit.state, unit.exit_code) == (TaskState.TIMEOUT, 137)
    # Memory wins: an OOM kill during the stop is still an OOM kill.
    oom = {"result": "timeout", "exit_code": "killed", "exit_status": "KILL", "oom_kills": 1}
    assert exit_result_from_record(oom).state is TaskState.KILLED_OOM
