"""hakuriver.host.scheduler.pending: the pending queue hands each pass the
queue in exactly the order a sort of every task (`queue_order`) gives, after
any history of submits, retries of older ids, placements and priority
changes, with and without fair-share usage (owners tied on it included)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hakuriver.host.scheduler import PendingQueue, queue_order

from .test_scheduler import task

OWNERS = ["ann", "bob", "cyd", None]


def owned(task_id: int, owner: str | None, priority: int):
    return dataclasses.replace(task(task_id), owner=owner, priority=priority)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(OWNERS), st.integers(-2, 2)),
        st.tuples(st.just("retry"), st.sampled_from(OWNERS), st.integers(-2, 2)),
        st.tuples(st.just("place"), st.integers(0, 10**6)),
        st.tuples(st.just("priority"), st.integers(0, 10**6), st.integers(-2, 2)),
    ),
    max_size=80,
)
usages = st.one_of(
    st.just({}),
    # Few distinct values, so that owners tie on usage as well.
    st.dictionaries(st.sampled_from(OWNERS), st.sampled_from([0.0, 1.5, 7.0]), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(steps, usages)
def test_the_queue_comes_out_in_queue_order_after_any_history(history, usage) -> None:
    queue = PendingQueue()
    next_id = 1000
    retried = 1
    for step in history:
        if step[0] == "submit":
            queue.add(owned(next_id, step[1], step[2]))
            next_id += 1
        elif step[0] == "retry":  # an older task back in the queue
            if retried not in queue:
                queue.add(owned(retried, step[1], step[2]))
            retried += 1
        elif queue:
            ids = sorted(queue)
            chosen = ids[step[1] % len(ids)]
            if step[0] == "place":
                assert queue.pop(chosen).id == chosen
            else:
                queue.set_priority(chosen, step[2])
                assert queue[chosen].priority == step[2]
        assert queue.ordered(usage) == queue_order(queue.values(), usage)
    assert len(queue) == len(set(queue)) == len(queue.ordered(usage))


def test_reads_like_a_mapping_and_lets_nothing_in_twice() -> None:
    queue = PendingQueue([owned(3, "ann", 0), owned(1, "bob", 0)])
    assert 3 in queue and 2 not in queue and len(queue) == 2
    assert queue.get(2) is None and queue[1].owner == "bob"
    queue.add(owned(3, "cyd", 1))  # the same id again replaces it
    assert len(queue) == 2 and [t.owner for t in queue.ordered()] == ["cyd", "bob"]
    assert queue.pop(3).owner == "cyd" and queue.pop(3) is None
    assert [t.id for t in queue.ordered()] == [1]
    assert queue.pop(1) is not None and not queue and queue.ordered() == []
