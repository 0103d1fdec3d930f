"""host/waiting.py: the latest pass's positions, made once per pass and, for a
long queue, off the event loop; an answer never makes them itself."""

from __future__ import annotations

from hakuriver.host.scheduler import queue_order
from hakuriver.host.waiting import INLINE_ORDER, NOT_EXAMINED, WaitBoard

from .test_scheduler import task
from .test_scheduler_priority import owned


async def test_positions_follow_the_pass_short_and_long_queues() -> None:
    for n in (5, INLINE_ORDER + 500):
        board = WaitBoard()
        pending = [owned(task(i + 1), "heavy" if i % 2 else "light") for i in range(n)]
        walked = queue_order(pending, {"heavy": 10.0, "light": 1.0})
        board.record({}, walked)
        assert board.order_now().position(walked[0].id) is None  # not made on the answer's behalf
        order = await board.order()
        assert [order.position(t.id) for t in walked[:3]] == [1, 2, 3]
        assert order.position(walked[-1].id) == n
        # light's tasks all go first: each heavy task is passed by every later light one.
        first_heavy = next(t for t in walked if t.owner == "heavy")
        later_light = sum(1 for t in pending if t.owner == "light" and t.id > first_heavy.id)
        assert order.passed_by_fairshare(first_heavy.id) == later_light
        assert board.order_now() is order  # kept until the next pass
        board.record({}, walked[1:])
        assert board.order_now().position(walked[1].id) is None


def test_tasks_a_pass_stopped_before_keep_the_reasons_they_had() -> None:
    board = WaitBoard()
    walked = [task(i) for i in range(1, 6)]
    board.record({i: f"old {i}" for i in (1, 2, 3, 4)}, walked)
    # The next pass placed task 1, reached task 2 and stopped (every node full);
    # task 5 was new: nobody has looked at it yet, and it says so.
    board.record({2: "new 2"}, walked[1:], walked=1)
    assert [board.reason(i) for i in (2, 3, 4, 5)] == ["new 2", "old 3", "old 4", NOT_EXAMINED]
    # One that reached tasks 2 and 3 and gave them none (placed meanwhile, or
    # past the reasons' cap): they keep no older one.
    board.record({}, walked[1:], walked=2)
    assert [board.reason(i) for i in (2, 3, 4)] == [NOT_EXAMINED, NOT_EXAMINED, "old 4"]
    # A pass that walked the whole queue says only its own reasons.
    board.record({3: "new 3"}, walked[2:])
    assert [board.reason(i) for i in (3, 4)] == ["new 3", NOT_EXAMINED]


async def test_tasks_the_pass_passed_over_get_no_position() -> None:
    # Waiting for a dependency or a retry fence: in the pass's order, but
    # numbered as if they were not queued.
    board = WaitBoard()
    walked = [task(i) for i in range(1, 6)]
    board.record({}, walked, hidden=frozenset({2, 4}))
    order = await board.order()
    assert [order.position(i) for i in range(1, 6)] == [1, None, 2, None, 3]
