"""`--array` specs (parsing.parse_array)."""

from __future__ import annotations

import json

import pytest

from hakuriver.errors import ValidationError
from hakuriver.parsing import (
    MAX_ARRAY_TASKS,
    ArraySpec,
    expand_sweep,
    format_array,
    parse_array,
    parse_sweep_limit,
)
from hakuriver.runner.executors.base import LaunchSpec
from hakuriver.runrequest import RunRequest


@pytest.mark.parametrize(
    ("spec", "indices", "limit"),
    [
        ("0-3", (0, 1, 2, 3), 0),
        ("7", (7,), 0),
        ("0-9:3", (0, 3, 6, 9), 0),
        ("1,3,5", (1, 3, 5), 0),
        ("0-5%2", (0, 1, 2, 3, 4, 5), 2),
        ("10-12,1", (10, 11, 12, 1), 0),
        (" 0-1%1 ", (0, 1), 1),
    ],
)
def test_parses(spec: str, indices: tuple[int, ...], limit: int) -> None:
    assert parse_array(spec) == ArraySpec(indices, limit)


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "a",
        "-1",
        "5-3",
        "0-4:0",
        "3:2",
        "1,1",
        "0-3,2",
        "0-3%0",
        "0-3%",
        "%2",
        "0-3%x",
        "1,,2",
        "\u0661-\u0663",  # Arabic-Indic digits: int() reads them, the parser must not
        "0-99999999",
        f"0-{MAX_ARRAY_TASKS}",  # one too many
        "1" * 5000,
    ],
)
def test_refuses(spec: str) -> None:
    with pytest.raises(ValidationError, match="array"):
        parse_array(spec)


def test_bounded_count() -> None:
    assert len(parse_array(f"0-{MAX_ARRAY_TASKS - 1}").indices) == MAX_ARRAY_TASKS
    with pytest.raises(ValidationError, match="more than"):
        parse_array(f"0-{MAX_ARRAY_TASKS - 1},{MAX_ARRAY_TASKS + 5}")


def test_format_round_trips() -> None:
    for spec in ("0-3,5,7-8%2", "1,3,5", "0-99"):
        assert format_array(parse_array(spec)) == spec


def test_a_sweep_expands_every_combination_first_span_slowest() -> None:
    assert expand_sweep(["run", "span:[a,b]", "--n", "span:{1..2}"]) == [
        ["run", "a", "--n", "1"],
        ["run", "a", "--n", "2"],
        ["run", "b", "--n", "1"],
        ["run", "b", "--n", "2"],
    ]
    assert expand_sweep(["run", "x"]) == [["run", "x"]]
    assert expand_sweep(["span:{-1..1}"]) == [["-1"], ["0"], ["1"]]
    assert expand_sweep(["span:[only]", "span:rest"]) == [["only", "span:rest"]]


@pytest.mark.parametrize(
    ("command", "words"),
    [
        (["span:{2..1}"], "ends before it starts"),
        (["span:[a,,b]"], "no empty value"),
        (["span:{1..x}"], "expected span"),
        (["span:{0..99}", "span:{0..99}", "span:[a,b]"], "more than 10000 combinations"),
        (["span:{0..20000}"], "more than 10000 values"),
    ],
)
def test_bad_sweeps_are_refused(command: list[str], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        expand_sweep(command)


def test_a_sweep_limit_is_only_percent_n() -> None:
    assert parse_sweep_limit("%3") == 3
    for bad in ("3", "0-3%2", "%0", "%x"):
        with pytest.raises(ValidationError):
            parse_sweep_limit(bad)


def test_run_requests_carry_the_array_as_version_3() -> None:
    plain = RunRequest(task_id=5, command=("true",), container="env")
    assert plain.to_json()["version"] == 1 and "array_index" not in plain.to_json()
    array = RunRequest(task_id=5, command=("true",), container="env", batch_id=4, array_index=7)
    data = json.loads(json.dumps(array.to_json()))
    assert (data["version"], data["array_index"], data["batch_id"]) == (3, 7, "4")
    back = RunRequest.from_json(data)
    assert (back.batch_id, back.array_index) == (4, 7)
    for bad, words in (
        ({**data, "version": 2}, "version 3"),
        ({**data, "array_index": -1}, "array_index"),
        ({**data, "array_index": "7"}, "array_index"),
        ({**data, "batch_id": "x"}, "x"),
    ):
        with pytest.raises(ValidationError, match=words):
            RunRequest.from_json(bad)


def test_the_runner_sets_the_array_variables_after_the_users_env() -> None:
    spec = LaunchSpec(
        task_id=7,
        command=("true",),
        env={"A": "1"},
        stdout_path="/s/o",
        stderr_path="/s/e",
        shared_dir="/s",
        local_temp_dir="/t",
        batch_id=3,
        array_index=0,
    )
    assert spec.task_env() == {
        "A": "1",
        "HAKURIVER_TASK_ID": "7",
        "HAKURIVER_ARRAY_INDEX": "0",
        "HAKURIVER_BATCH_ID": "3",
    }
