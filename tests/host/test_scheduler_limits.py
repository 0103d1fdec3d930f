"""hakuriver.host.scheduler: per-user limits and the reasons pending tasks wait.

The property tests drive the pure scheduler over random clusters, users,
limits and task streams (hypothesis), with tasks ending between passes, and
check after every pass: no node over-committed; no user above any limit; a
task held back by a limit changes nothing for anyone else (the pass without
it places exactly the same tasks); within one user the queue stays FIFO; the
head of the queue (the first task not held back) holds a reservation whose
node backfill never ate into; every task left waiting says why.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakuriver.errors import Unschedulable
from hakuriver.host.scheduler import (
    UNLIMITED,
    Ledger,
    OwnerUsage,
    Placement,
    Scheduler,
    UserLimits,
    check_fits_limits,
    limit_refusal,
)
from hakuriver.models import NodeResources, Task, TaskState

from .test_scheduler import G, _check_capacity, _check_reservations_respected, node, running, task


def owned(t: Task, owner: str | None) -> Task:
    return dataclasses.replace(t, owner=owner)


def limits_from(table: dict[str, UserLimits]):
    return lambda owner: table.get(owner or "", UNLIMITED)


# ---------------------------------------------------------------- examples


def test_ledger_counts_each_owner_while_tasks_hold_resources():
    ledger = Ledger.from_tasks([owned(running(1, "a", cores=2, gpus=[0]), "alice"), owned(running(2, "a"), "bob")])
    assert ledger.owner_usage("alice") == OwnerUsage(cores=2, gpus=1, running=1)
    assert ledger.hold(owned(running(1, "a", cores=2, gpus=[0]), "alice")) is False  # not counted twice
    assert ledger.owner_usage("alice").running == 1
    assert ledger.release(1) and not ledger.release(1)
    assert ledger.owner_usage("alice") == OwnerUsage()
    assert ledger.owner_usage("bob") == OwnerUsage(cores=1, gpus=0, running=1)


def test_a_limited_task_waits_and_another_users_same_task_runs():
    nodes = [node("a", cores=8, gpus=2)]
    ledger = Ledger.from_tasks([owned(running(1, "a", gpus=[0]), "alice")])
    pending = [owned(task(2, gpu_count=1), "alice"), owned(task(3, gpu_count=1), "bob")]
    sched = Scheduler()
    placements = sched.schedule(pending, nodes, ledger, limits=limits_from({"alice": UserLimits(max_gpus=1)}))
    assert [p.task_id for p in placements] == [3]
    assert sched.last_stats.reasons == {2: "limit: max-gpus (1 of 1 in use, task needs 1)"}
    assert 2 not in sched.last_stats.reserved  # not the protected head: it blocks nobody


def test_within_one_user_the_queue_stays_fifo():
    nodes = [node("a", cores=8)]
    ledger = Ledger.from_tasks([owned(running(1, "a", cores=3), "alice")])
    pending = [owned(task(2, cores=2), "alice"), owned(task(3, cores=1), "alice"), owned(task(4), "bob")]
    sched = Scheduler()
    placements = sched.schedule(pending, nodes, ledger, limits=limits_from({"alice": UserLimits(max_cores=4)}))
    # Task 3 would fit alice's limit, but it waits behind her task 2.
    assert [p.task_id for p in placements] == [4]
    assert sched.last_stats.reasons[2] == "limit: max-cores (3 of 4 in use, task needs 2)"
    assert sched.last_stats.reasons[3] == "limit: max-cores (behind task 2 of the same user)"


def test_max_running_counts_paused_and_placements_of_the_same_pass():
    nodes = [node("a", cores=8)]
    ledger = Ledger.from_tasks([owned(running(1, "a", state=TaskState.PAUSED), "alice")])
    pending = [owned(task(i), "alice") for i in (2, 3, 4)]
    sched = Scheduler()
    placements = sched.schedule(pending, nodes, ledger, limits=limits_from({"alice": UserLimits(max_running=2)}))
    assert [p.task_id for p in placements] == [2]
    assert sched.last_stats.reasons[3] == "limit: max-running (2 of 2 running)"
    assert sched.last_stats.reasons[4].startswith("limit: max-running (behind task 3")


def test_without_limits_nobody_is_limited_and_tasks_without_owner_never_are():
    nodes = [node("a", cores=8)]
    pending = [owned(task(1), None), owned(task(2), None)]
    strict = UserLimits(max_running=1)
    placements = Scheduler().schedule(pending, nodes, Ledger(), limits=lambda owner: strict if owner else UNLIMITED)
    assert [p.task_id for p in placements] == [1, 2]
    assert [p.task_id for p in Scheduler().schedule([owned(task(3), "x")], nodes, Ledger())] == [3]


def test_check_fits_limits_refuses_a_task_that_alone_exceeds_a_limit():
    check_fits_limits(4, 2, UserLimits(max_cores=4, max_gpus=2), "alice")
    check_fits_limits(64, 8, UNLIMITED, "alice")
    with pytest.raises(Unschedulable, match=r"task needs 5 cores but user 'alice' may hold at most 4 .*max-cores"):
        check_fits_limits(5, 0, UserLimits(max_cores=4), "alice")
    with pytest.raises(Unschedulable, match=r"task needs 3 GPUs .* at most 2 at once \(limit max-gpus\)"):
        check_fits_limits(1, 3, UserLimits(max_gpus=2), "alice")
    # max-running 1 never refuses one task alone
    check_fits_limits(1, 0, UserLimits(max_running=1), "alice")


def test_limit_refusal_names_the_limit():
    usage = OwnerUsage(cores=6, gpus=1, running=2)
    assert limit_refusal(UserLimits(max_cores=8), usage, 2, 0) is None
    assert limit_refusal(UserLimits(max_cores=8), usage, 3, 0) == "limit: max-cores (6 of 8 in use, task needs 3)"
    assert limit_refusal(UserLimits(max_gpus=1), usage, 1, 0) is None  # a CPU task under a GPU limit
    assert limit_refusal(UserLimits(max_gpus=1), usage, 1, 1).startswith("limit: max-gpus")
    assert limit_refusal(UserLimits(max_running=2), usage, 1, 0) == "limit: max-running (2 of 2 running)"


def test_reasons_say_why_each_task_waits():
    nodes = [node("a", cores=4, gpus=2), node("b", cores=2)]
    ledger = Ledger.from_tasks([running(1, "a", cores=2, gpus=[0, 1]), running(2, "b", cores=2)])
    pending = [
        task(3, gpu_count=2),  # the head: reserved on a
        task(4, gpu_count=2),  # same request: behind 3
        task(5, target="gone"),  # its node is not online
        task(6, cores=2, target="b"),  # b is full
        task(7, cores=3),  # a has 2 free cores, b none
        task(8, cores=16),  # larger than any online node (an offline one may be)
        task(9, cores=2),  # fits on a, but a is kept for task 3
    ]
    sched = Scheduler()
    assert sched.schedule(pending, nodes, ledger) == []
    reasons = sched.last_stats.reasons
    assert reasons[3] == "reserved: head of queue on a (waiting for 2 free GPUs)"
    assert reasons[4] == "position: behind task 3 (same request)"
    assert reasons[5] == "node gone offline"
    assert reasons[6].startswith("reserved: head of queue on b (waiting for 2 free cores)")
    assert reasons[7].startswith("reserved: head of queue on ")
    assert reasons[8] == "resources: no online node is large enough (a node that is offline may be)"
    assert reasons[9] == "reserved: fits on a, which is kept for an earlier task"


def test_reasons_without_a_reservation_and_their_bound():
    nodes = [node("a", cores=2)]
    ledger = Ledger.from_tasks([running(1, "a", cores=2)])
    sched = Scheduler(max_reservations=0, max_reasons=2)
    sched.schedule([task(2), task(3, cores=2), task(4, target="a", cores=2, memory=G)], nodes, ledger)
    assert sched.last_stats.reasons == {
        2: "resources: no node has 1 core free",
        3: "resources: no node has 2 cores free",
    }  # task 4 is past max_reasons: the API says "position: not examined yet"


def test_a_limited_task_is_not_counted_as_examined():
    nodes = [node("a", cores=64)]
    ledger = Ledger.from_tasks([owned(running(1, "a"), "alice")])
    pending = [owned(task(i), "alice") for i in range(2, 12)] + [owned(task(20), "bob")]
    sched = Scheduler(max_examined=1)
    placements = sched.schedule(pending, nodes, ledger, limits=limits_from({"alice": UserLimits(max_running=1)}))
    assert [p.task_id for p in placements] == [20]
    assert sched.last_stats.limited == 10


# ---------------------------------------------------------------- properties

USERS = ("u0", "u1", "u2")

node_spec = st.tuples(
    st.sampled_from([2, 4, 8]), st.sampled_from([4 * G, 8 * G, 16 * G]), st.sampled_from([0, 1, 2, 4])
)
limit_spec = st.builds(
    UserLimits,
    max_cores=st.sampled_from([0, 0, 1, 2, 4, 8]),
    max_gpus=st.sampled_from([0, 0, 1, 2]),
    max_running=st.sampled_from([0, 0, 1, 2, 3]),
)
task_spec = st.tuples(
    st.integers(0, len(USERS) - 1),  # owner
    st.sampled_from([1, 1, 2, 3, 4]),  # cores
    st.sampled_from([None, None, G, 2 * G, 6 * G]),  # memory
    st.sampled_from([0, 0, 0, 1, 2]),  # GPU count
    st.one_of(st.none(), st.none(), st.none(), st.integers(0, 3)),  # target node (index), mostly none
)


def _make_task(task_id: int, spec: tuple, nodes: list[NodeResources]) -> Task:
    owner, cores, memory, gpus, target = spec
    if target is not None:
        t = task(task_id, cores=cores, memory=memory, target=nodes[target % len(nodes)].hostname)
    else:
        t = task(task_id, cores=cores, memory=memory, gpu_count=gpus)
    return owned(t, USERS[owner])


def _ledger_of(active: dict[int, tuple[Task, Placement]]) -> Ledger:
    ledger = Ledger()
    for t, p in active.values():
        ledger.hold_placement(t.id, p.node, cores=t.cores, memory=t.memory, numa=p.numa, gpus=p.gpus, owner=t.owner)
    return ledger


def _check_limits(active: dict[int, tuple[Task, Placement]], limits: dict[str, UserLimits]) -> None:
    for user, lim in limits.items():
        mine = [(t, p) for t, p in active.values() if t.owner == user]
        if lim.max_running:
            assert len(mine) <= lim.max_running, f"{user} runs {len(mine)} > {lim.max_running}"
        if lim.max_cores:
            assert sum(t.cores for t, _ in mine) <= lim.max_cores, f"{user} over max_cores"
        if lim.max_gpus:
            assert sum(len(p.gpus) for _, p in mine) <= lim.max_gpus, f"{user} over max_gpus"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nodes_spec=st.lists(node_spec, min_size=1, max_size=4),
    user_limits=st.lists(limit_spec, min_size=len(USERS), max_size=len(USERS)),
    rounds=st.lists(
        st.tuples(st.lists(task_spec, max_size=8), st.lists(st.booleans(), max_size=16)), min_size=1, max_size=8
    ),
)
def test_limits_never_exceeded_never_overcommitted_head_never_delayed(nodes_spec, user_limits, rounds):
    nodes = [node(f"n{i}", cores=c, memory=m, gpus=g) for i, (c, m, g) in enumerate(nodes_spec)]
    limits = dict(zip(USERS, user_limits, strict=True))
    limits_of = limits_from(limits)
    sched = Scheduler()
    ledger = Ledger()
    pending: dict[int, Task] = {}
    active: dict[int, tuple[Task, Placement]] = {}
    all_tasks: dict[int, Task] = {}
    next_id = 1
    for arrivals, endings in rounds:
        for spec in arrivals:
            t = _make_task(next_id, spec, nodes)
            pending[next_id] = all_tasks[next_id] = t
            next_id += 1
        before = dict(active)
        placements = sched.schedule(list(pending.values()), nodes, ledger, limits=limits_of)
        stats = sched.last_stats
        reasons = dict(stats.reasons)
        placed = {p.task_id for p in placements}
        for p in placements:
            active[p.task_id] = (pending.pop(p.task_id), p)

        _check_capacity(nodes, active)
        _check_limits(active, limits)
        _check_reservations_respected(sched, nodes, ledger, all_tasks, placements)
        for user in USERS:  # the ledger's per-owner count agrees with an independent one
            mine = [(t, p) for t, p in active.values() if t.owner == user]
            assert ledger.owner_usage(user) == OwnerUsage(
                sum(t.cores for t, _ in mine), sum(len(p.gpus) for _, p in mine), len(mine)
            )

        # Every task left waiting says why; a placed one does not.
        assert set(reasons) == set(pending) and not placed & set(reasons)
        held = {tid for tid, why in reasons.items() if why.startswith("limit: ")}
        for tid in held:
            assert tid not in stats.reserved, "a task held back by a limit is never the protected head"
            t = all_tasks[tid]
            if "behind task" not in reasons[tid]:
                # The reason is true: starting it would take its owner over that limit.
                gpus = len(t.target.gpus) if t.target and t.target.gpus else t.gpu_count
                assert limit_refusal(limits[t.owner or ""], ledger.owner_usage(t.owner), t.cores, gpus) is not None
            # FIFO within one user: nothing of theirs after it started in this pass.
            assert not any(all_tasks[p].owner == t.owner and p > tid for p in placed)

        # A held-back task changes nothing for anyone else: without the held
        # tasks the same pass places exactly the same tasks.
        queue = {**pending, **{p.task_id: all_tasks[p.task_id] for p in placements}}
        others = [t for tid, t in sorted(queue.items()) if tid not in held]
        again = Scheduler().schedule(others, nodes, _ledger_of(before), limits=limits_of)
        assert again == placements

        # The head of the queue (its first task not held back) is protected:
        # it holds a reservation, unless no online node could ever take it.
        waiting = sorted(set(pending) - held)
        if waiting:
            head = waiting[0]
            why = reasons[head]
            assert head in stats.reserved or why.startswith("resources: no online node is large enough"), why
            if head in stats.reserved:
                assert why.startswith(f"reserved: head of queue on {stats.reserved[head]}")

        # Some tasks end (released twice: the second is a no-op).
        for tid, ends in zip(sorted(active), endings, strict=False):
            if ends:
                assert ledger.release(tid) is True
                assert ledger.release(tid) is False
                del active[tid]
