"""A backlog's wait reasons end to end: a pass that fills the last free core
stops there (`Scheduler.schedule(stop_when_full=True)`), and the tasks behind
keep the reason the latest pass that reached them gave, never "not examined"."""

from __future__ import annotations

import pytest

from hakuriver.host import dispatch
from hakuriver.host.waiting import NOT_EXAMINED

from .cluster import InProcCluster


async def test_tasks_behind_a_pass_that_filled_the_node_keep_their_reasons(
    inproc: InProcCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every pass after the first is then one that may stop when full, however
    # slow the machine: the test does not depend on timing.
    monkeypatch.setattr(dispatch, "SATURATED_PASS_SECONDS", 1e6)
    await inproc.add_runner("a")
    cores = (await inproc.client.node("a"))["cores"]
    # One request, one pass over all three: the first runs, the others wait.
    first, second, third = (await inproc.client.submit(["fake", "hang"], cores=cores, array="0-2"))["task_ids"]
    await inproc.wait_state(first, "running")
    before = await inproc.client.get_task(third)
    assert before["pending_reason"] == f"position: behind task {second} (same request)"

    await inproc.client.kill(first)
    await inproc.wait_state(second, "running")
    after = await inproc.client.get_task(third)
    # The pass that started the second stopped there: the node had no core left.
    assert after["pending_reason"] not in (None, NOT_EXAMINED)
    assert after["pending_reason"] == before["pending_reason"]
    assert after["position"] is not None  # positions cover the whole queue, walked or not
    await inproc.client.kill(second)
    await inproc.client.kill(third)
