"""`hakuriver.task submit --retries N [--retry-on-exit]` and how `status` shows attempts."""

from __future__ import annotations

import re

import pytest

from hakuriver.cli import task as task_cli
from hakuriver.cli.common import EXIT_USAGE
from hakuriver.cli.task import describe_task
from hakuriver.host.retries import MAX_RETRIES

from .fakehost import _isolated_env, write_config  # noqa: F401 - autouse fixture


def request(*flags: str) -> dict[str, object]:
    args = task_cli.build_parser().parse_args(["submit", *flags, "--", "true"])
    return task_cli.submit_request(args)


def test_retry_flags_are_sent() -> None:
    assert (request()["retries"], request()["retry_on_exit"]) == (None, None)
    assert (request("--retries", "3")["retries"], request("--retries", "3")["retry_on_exit"]) == (3, None)
    both = request("--retries", "2", "--retry-on-exit", "--array", "0-3")
    assert (both["retries"], both["retry_on_exit"], both["array"]) == (2, True, "0-3")
    assert request("--retries", "0")["retries"] is None  # 0 is the default: not sent


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--retries", "-1"], f"--retries must be a whole number from 0 to {MAX_RETRIES}, not -1"),
        (["--retries", str(MAX_RETRIES + 1)], f"from 0 to {MAX_RETRIES}, not {MAX_RETRIES + 1}"),
        (["--retries", "two"], "not 'two'"),
        (["--retry-on-exit"], "--retry-on-exit needs --retries N"),
        (["--retries", "0", "--retry-on-exit"], "--retry-on-exit needs --retries N"),
    ],
)
def test_bad_retry_flags_are_one_line_and_exit_2(flags, message, capsys, tmp_path) -> None:
    config = write_config(tmp_path / "c.toml", 9)  # nobody listens: nothing may be sent
    code = task_cli.main(["--config", str(config), "submit", *flags, "--", "true"])
    out, err = capsys.readouterr()
    assert (code, out) == (EXIT_USAGE, "")
    [line] = err.splitlines()
    assert line.startswith("hakuriver.task: error: ") and message in line, line


def fields(text: str) -> dict[str, str]:
    return {k: v for k, v in (re.match(r"^(\S.*?)\s{2,}(.*)$", line).groups() for line in text.splitlines())}  # type: ignore[union-attr]


def test_status_shows_the_attempt_and_every_earlier_one() -> None:
    task = {
        "task_id": "7",
        "state": "running",
        "node": "n2",
        "retries": 2,
        "retry_on_exit": True,
        "attempt": 3,
        "attempts": [
            {"attempt": 1, "node": "n1", "started_at": 1.0, "finished_at": 60.0, "state": "lost",
             "exit_code": None, "error": "node n1 stopped heartbeating"},
            {"attempt": 2, "node": "n3", "started_at": 70.0, "finished_at": 80.0, "state": "failed",
             "exit_code": 3, "error": "exited with code 3"},
        ],
    }  # fmt: skip
    text = describe_task(task)
    shown = fields(text)
    assert (shown["attempt"], shown["retries"]) == ("3 of 3", "2 (non-zero exits too)")
    assert shown["attempt 1"].startswith("lost on n1, ") and shown["attempt 1"].endswith(
        ": node n1 stopped heartbeating"
    )
    assert shown["attempt 2"].startswith("failed (exit code 3) on n3, ")
    lines = text.splitlines()
    assert lines.index(next(line for line in lines if line.startswith("attempt "))) == 3  # right after the state


def test_status_of_a_task_without_retries_is_as_before() -> None:
    shown = fields(describe_task({"task_id": "7", "state": "completed", "retries": 0, "attempt": 1, "attempts": []}))
    assert "attempt" not in shown and "retries" not in shown
