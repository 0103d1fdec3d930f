"""How a batch is cut into requests, on both sides: at most `MAX_BATCH_ITEMS`
items and about `BATCH_BODY_BYTES` of JSON per request, in order, and an item
larger than that alone (so the peer's body limit refuses only that one)."""

from __future__ import annotations

from hakuriver.host.runner_client import _chunks as order_chunks
from hakuriver.jsoncodec import dumps_bytes
from hakuriver.models import RunnerReport, TaskState
from hakuriver.runner.hostlink import _chunks as report_chunks
from hakuriver.webapi import BATCH_BODY_BYTES, MAX_BATCH_ITEMS, MAX_BODY_BYTES


def test_reports_are_cut_by_count_in_order() -> None:
    reports = [RunnerReport(i, TaskState.COMPLETED, exit_code=0) for i in range(1, 2 * MAX_BATCH_ITEMS + 2)]
    chunks = report_chunks(reports)
    assert [len(c) for c in chunks] == [MAX_BATCH_ITEMS, MAX_BATCH_ITEMS, 1]
    assert [r for c in chunks for r in c] == reports


def test_reports_are_cut_by_size_and_a_huge_one_goes_alone() -> None:
    text = "x" * (BATCH_BODY_BYTES // 3)
    huge = RunnerReport(9, TaskState.FAILED, error="y" * BATCH_BODY_BYTES)
    reports = [RunnerReport(i, TaskState.FAILED, error=text) for i in range(1, 5)] + [
        huge,
        RunnerReport(10, TaskState.RUNNING),
    ]
    chunks = report_chunks(reports)
    assert [[r.task_id for r in c] for c in chunks] == [[1, 2], [3, 4], [9], [10]]
    for chunk in chunks[:2]:
        body = dumps_bytes({"hostname": "n1", "reports": [r.to_json(with_id=True) for r in chunk]})
        assert len(body) < MAX_BODY_BYTES


def test_a_report_says_only_what_it_has() -> None:
    assert RunnerReport(5, TaskState.RUNNING).to_json(with_id=True) == {"task_id": "5", "state": "running"}
    full = RunnerReport(5, TaskState.FAILED, 3, "exited with code 3", "stdout: ENOSPC", 2).to_json(with_id=False)
    assert full == {
        "state": "failed",
        "exit_code": 3,
        "error": "exited with code 3",
        "output_error": "stdout: ENOSPC",
        "attempt": 2,
    }


def test_run_requests_are_cut_by_count_and_size() -> None:
    small = [dumps_bytes({"task_id": str(i)}) for i in range(MAX_BATCH_ITEMS + 1)]
    assert [len(c) for c in order_chunks(small)] == [MAX_BATCH_ITEMS, 1]
    big = dumps_bytes({"task_id": "1", "env": {"A": "x" * (BATCH_BODY_BYTES // 2)}})
    huge = dumps_bytes({"task_id": "2", "env": {"A": "x" * BATCH_BODY_BYTES}})
    chunks = order_chunks([big, small[0], huge, small[1], big])
    assert chunks == [[big, small[0]], [huge], [small[1], big]]
    assert order_chunks([]) == []
