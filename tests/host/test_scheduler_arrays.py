"""hakuriver.host.scheduler: an array's `%N` (`Task.array_max_running`).

Examples, then a property test (hypothesis) over random clusters and streams
of array batches with tasks ending between passes: after every pass no batch
holds more than its N, no node is over-committed, the head of the queue
keeps its reservation unharmed, and a held task says so and is never the
protected head.
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakuriver.host.scheduler import Ledger, Placement, Scheduler
from hakuriver.models import Task

from .test_scheduler import _check_capacity, _check_reservations_respected, node, running, task


def member(t: Task, batch: int, limit: int, index: int = 0) -> Task:
    return dataclasses.replace(t, batch_id=batch, array_index=index, array_max_running=limit)


def test_at_most_n_of_a_batch_start_and_the_rest_say_why():
    sched = Scheduler()
    ledger = Ledger()
    pending = [member(task(i), 100, 2, i) for i in range(1, 6)] + [task(9)]
    placements = sched.schedule(pending, [node("a", cores=8)], ledger)
    assert sorted(p.task_id for p in placements) == [1, 2, 9]  # another batch's task is not held up
    assert ledger.batch_running(100) == 2
    for held in (3, 4, 5):
        assert sched.last_stats.reasons[held] == "limit: array max-running (2 of batch 100 running)"
        assert held not in sched.last_stats.reserved


def test_running_members_count_and_an_ended_one_makes_room():
    ledger = Ledger.from_tasks([member(running(1, "a"), 100, 1)])
    assert ledger.batch_running(100) == 1
    sched = Scheduler()
    assert sched.schedule([member(task(2), 100, 1, 1)], [node("a")], ledger) == []
    ledger.release(1)
    assert ledger.batch_running(100) == 0
    assert [p.task_id for p in sched.schedule([member(task(2), 100, 1, 1)], [node("a")], ledger)] == [2]


def test_a_held_member_is_not_the_head_that_blocks_others():
    # Batch 100 is at its limit; its next task would need the whole node, but
    # as a held task it reserves nothing, so the 1-core task behind it starts.
    ledger = Ledger.from_tasks([member(running(1, "a"), 100, 1)])
    pending = [member(task(2, cores=8), 100, 1, 1), task(3)]
    placements = Scheduler().schedule(pending, [node("a", cores=8)], ledger)
    assert [p.task_id for p in placements] == [3]


# ---------------------------------------------------------------- property

node_spec = st.tuples(st.sampled_from([1, 2, 4, 8]), st.sampled_from([0, 1, 2]))
batch_spec = st.tuples(
    st.integers(1, 6),  # tasks in the batch
    st.sampled_from([0, 1, 1, 2, 3]),  # %N (0: none)
    st.sampled_from([1, 1, 2, 3]),  # cores of each
    st.sampled_from([0, 0, 1]),  # GPUs of each
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes_spec=st.lists(node_spec, min_size=1, max_size=3),
    rounds=st.lists(
        st.tuples(st.lists(batch_spec, max_size=3), st.lists(st.booleans(), max_size=12)), min_size=1, max_size=8
    ),
)
def test_a_batch_never_holds_more_than_its_max_running(nodes_spec, rounds):
    nodes = [node(f"n{i}", cores=c, gpus=g) for i, (c, g) in enumerate(nodes_spec)]
    sched = Scheduler()
    ledger = Ledger()
    pending: dict[int, Task] = {}
    active: dict[int, tuple[Task, Placement]] = {}
    all_tasks: dict[int, Task] = {}
    next_id = 1
    for arrivals, endings in rounds:
        for size, limit, cores, gpus in arrivals:
            batch = next_id
            next_id += 1
            for index in range(size):
                t = member(task(next_id, cores=cores, gpu_count=gpus), batch, limit, index)
                pending[next_id] = all_tasks[next_id] = t
                next_id += 1
        placements = sched.schedule(list(pending.values()), nodes, ledger)
        stats = sched.last_stats
        for p in placements:
            active[p.task_id] = (pending.pop(p.task_id), p)

        _check_capacity(nodes, active)
        _check_reservations_respected(sched, nodes, ledger, all_tasks, placements)
        per_batch: dict[int, int] = {}
        for t, _ in active.values():
            per_batch[t.batch_id] = per_batch.get(t.batch_id, 0) + 1
        for batch, count in per_batch.items():
            limit = next(t.array_max_running for t, _ in active.values() if t.batch_id == batch)
            assert not limit or count <= limit, f"batch {batch} holds {count} > {limit}"
            assert ledger.batch_running(batch) == count
        for tid, why in stats.reasons.items():
            if why.startswith("limit: array max-running"):
                t = all_tasks[tid]
                assert per_batch.get(t.batch_id, 0) >= t.array_max_running, "held back below its limit"
                assert tid not in stats.reserved, "a held member is never the protected head"

        for tid, ends in zip(sorted(active), endings, strict=False):
            if ends:
                assert ledger.release(tid) is True
                del active[tid]
