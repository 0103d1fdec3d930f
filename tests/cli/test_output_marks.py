"""How `hakuriver.task` shows a task whose output files are incomplete."""

from __future__ import annotations

import re

from hakuriver.cli.task import _summary, describe_task, shown_state

FLAG = "stdout: No space left on device (ENOSPC) after 1M written"


def task(**fields: object) -> dict[str, object]:
    return {"task_id": "7", "state": "completed", "exit_code": 0, "node": "n1", "error": None, **fields}


def fields(text: str) -> dict[str, str]:
    return {k: v for k, v in (re.match(r"^(\S.*?)\s{2,}(.*)$", line).groups() for line in text.splitlines())}  # type: ignore[union-attr]


def test_status_shows_the_flag_and_the_real_state() -> None:
    shown = fields(describe_task(task(output_error=FLAG)))
    assert (shown["state"], shown["exit code"], shown["output"]) == ("completed", "0", f"INCOMPLETE: {FLAG}")
    assert fields(describe_task(task(output_error=None)))["output"] == "-"


def test_tables_mark_the_state() -> None:
    assert shown_state(task(output_error=FLAG)) == "completed!"
    assert shown_state(task(output_error=None)) == "completed"
    summary = _summary([task(state="failed", exit_code=3, error="exited with code 3", output_error=FLAG)])
    assert f"failed!  3     n1    exited with code 3; output: {FLAG}" in summary


def test_status_and_wait_show_a_time_limit_and_timeout() -> None:
    ended = task(state="timeout", exit_code=143, error="time limit 1h30m reached", time_limit=5400)
    shown = fields(describe_task(ended))
    assert (shown["state"], shown["time limit"], shown["error"]) == ("timeout", "1h30m", "time limit 1h30m reached")
    assert fields(describe_task(task()))["time limit"] == "-"
    assert "timeout  143   n1    time limit 1h30m reached" in _summary([ended])
