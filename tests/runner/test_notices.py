"""`Notices`: a start while its order is being answered goes in the answer,
exactly once, and is queued for a report of its own in every other case (a
start after the answer, a task the order did not newly accept, an answer
that never goes out). A start is never lost and never told twice."""

from __future__ import annotations

import asyncio

import pytest

from hakuriver.runner.supervisor import Notices


async def test_a_start_while_held_goes_in_the_answer_only() -> None:
    notices = Notices()
    held = notices.hold([1, 2])
    loop = asyncio.get_running_loop()
    loop.call_soon(notices.task_started, 1)
    loop.call_soon(notices.task_started, 2)
    assert await notices.release(held, [1, 2], wait=5.0) == {1, 2}
    assert notices.take_started() == [] and not notices.new_start.is_set()


async def test_the_answer_waits_at_most_the_bound_and_a_later_start_is_queued() -> None:
    notices = Notices()
    held = notices.hold([1, 2])
    notices.task_started(1)
    assert await notices.release(held, [1, 2], wait=0.0) == {1}  # 2 had not started
    notices.task_started(2)
    assert notices.take_started() == [2] and notices.new_start.is_set()


async def test_a_start_the_order_did_not_newly_accept_is_queued() -> None:
    notices = Notices()
    held = notices.hold([1, 2])
    notices.task_started(1)
    notices.task_started(2)  # "already_accepted" in this order: its own order answers for it, or a report
    assert await notices.release(held, [1], wait=0.0) == {1}
    assert notices.take_started() == [2]


async def test_an_id_another_answer_holds_stays_with_that_answer() -> None:
    notices = Notices()
    first = notices.hold([1])
    second = notices.hold([1])  # a second copy of the order, sent meanwhile
    assert second == {}
    notices.task_started(1)
    assert await notices.release(second, [1], wait=0.0) == set()
    assert await notices.release(first, [1], wait=0.0) == {1}
    assert notices.take_started() == []


async def test_an_answer_that_never_goes_out_queues_its_starts() -> None:
    notices = Notices()
    held = notices.hold([1, 2])
    waiting = asyncio.ensure_future(notices.release(held, [1, 2], wait=60.0))
    await asyncio.sleep(0)
    notices.task_started(1)  # 2 never starts: the answer is still waiting when its request is dropped
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert notices.take_started() == [1]
    notices.task_started(2)  # no longer held
    assert notices.take_started() == [2]


async def test_abandon_queues_what_started() -> None:
    notices = Notices()
    held = notices.hold([3, 1])
    notices.task_started(3)
    notices.abandon(held)  # the order was refused as a whole after the hold
    assert notices.take_started() == [3]


async def test_a_task_that_ends_while_held_has_its_start_queued_before_its_end() -> None:
    """Its result goes out through the report queue, starts first; the answer,
    which may still wait for other tasks, would come after it."""
    notices = Notices()
    held = notices.hold([1, 2])
    notices.task_started(1)
    notices.ending(1)  # 1 ran and ended before the answer: its start is queued now
    assert notices.take_started() == [1]
    notices.ending(2)  # 2 failed to start: nothing to queue, and the answer stops waiting for it
    assert await notices.release(held, [1, 2], wait=60.0) == set()
    assert notices.take_started() == []
