"""hakuriver.host.scheduler with drained nodes: no placement, no reservation there,
running tasks keep their holds; unit cases and hypothesis properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hakuriver.errors import Unschedulable
from hakuriver.host.scheduler import Ledger, Placement, Scheduler, check_fits_ever
from hakuriver.models import NodeResources, Task

from .test_scheduler import (
    _check_capacity,
    _check_reservations_respected,
    _random_cluster,
    _random_task,
    node,
    running,
    task,
)

# ---------------------------------------------------------------- cases


def test_a_drained_node_gets_no_task_and_keeps_its_holds():
    nodes = [node("a", cores=8), node("b", cores=2)]
    ledger = Ledger.from_tasks([running(1, "a", cores=2)])
    sched = Scheduler()
    out = sched.schedule([task(2), task(3), task(4)], nodes, ledger, drained={"a"})
    # a is the tightest fit for nobody now: everything goes to b while it has room
    assert out == [Placement(2, "b", None, ()), Placement(3, "b", None, ())]
    assert ledger.used("a").cores == 2, "the drained node's running task still holds its cores"
    assert sched.last_stats.reserved == {4: "b"}


def test_a_task_targeted_at_a_drained_node_waits_and_says_why():
    nodes = [node("a"), node("b")]
    sched = Scheduler()
    out = sched.schedule(
        [task(1, target="a"), task(2, target="a"), task(3, target="b")], nodes, Ledger(), drained={"a"}
    )
    assert out == [Placement(3, "b", None, ())]
    assert sched.last_stats.drained == {1: "a", 2: "a"}
    assert sched.last_stats.reserved == {}, "no reservation on a node nobody may use"
    # resumed: the same queue starts there, FIFO
    out = sched.schedule([task(1, target="a"), task(2, target="a")], nodes, Ledger())
    assert out == [Placement(1, "a", None, ()), Placement(2, "a", None, ())]
    assert sched.last_stats.drained == {}


def test_the_head_of_the_queue_reserves_past_a_drained_node():
    # H (4 cores) fits now only on the drained a; it must reserve b instead, and
    # then a later 1-core task can use neither a (drained) nor b (H's reservation).
    nodes = [node("a", cores=8), node("b", cores=4)]
    ledger = Ledger.from_tasks([running(1, "b", cores=3)])
    sched = Scheduler()
    out = sched.schedule([task(2, cores=4), task(3, cores=1)], nodes, ledger, drained={"a"})
    assert out == []
    assert sched.last_stats.reserved == {2: "b", 3: "b"}
    # not drained, H goes to a at once
    assert Scheduler().schedule([task(2, cores=4)], nodes, Ledger.from_tasks([running(1, "b", cores=3)])) == [
        Placement(2, "a", None, ())
    ]


def test_a_task_only_a_drained_node_could_hold_blocks_nobody():
    # H needs 8 cores: only a (drained) has them. Reserving b would hold back
    # b for a task that can never start there, so H reserves nothing.
    nodes = [node("a", cores=16), node("b", cores=4)]
    sched = Scheduler()
    out = sched.schedule([task(1, cores=8), task(2, cores=1), task(3, cores=2)], nodes, Ledger(), drained={"a"})
    assert out == [Placement(2, "b", None, ()), Placement(3, "b", None, ())]
    assert sched.last_stats.reserved == {}


def test_every_node_drained_places_nothing():
    nodes = [node("a"), node("b")]
    ledger = Ledger()
    assert Scheduler().schedule([task(1), task(2, target="b")], nodes, ledger, drained={"a", "b"}) == []
    assert len(ledger) == 0


# ---------------------------------------------------------------- properties


def _drained_subset(rng: random.Random, nodes: list[NodeResources]) -> set[str]:
    return {n.hostname for n in nodes if rng.random() < 0.35}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_drained_nodes_never_get_a_placement_or_a_reservation(rng: random.Random) -> None:
    """Rounds of submits, finishes, drains and resumes. In every pass: nothing is
    placed on or reserved for a drained node; each task targeted at a drained node
    that the pass looked at is named in `stats.drained`; capacity and reservations
    hold as without drains. Once every node is resumed, what can ever fit is placed."""
    nodes = _random_cluster(rng)
    sched = Scheduler()
    ledger = Ledger()
    pending: dict[int, Task] = {}
    active: dict[int, tuple[Task, Placement]] = {}
    all_tasks: dict[int, Task] = {}
    drained: set[str] = set()
    next_id = 1
    for _round in range(15):
        for _ in range(rng.randint(0, 10)):
            t = _random_task(rng, next_id, nodes)
            pending[next_id] = all_tasks[next_id] = t
            next_id += 1
        if rng.random() < 0.5:
            drained = _drained_subset(rng, nodes)
        held_on_drained = {n: ledger.used(n).cores for n in drained}
        placements = sched.schedule(list(pending.values()), nodes, ledger, drained=frozenset(drained))
        stats = sched.last_stats
        for p in placements:
            assert p.node not in drained, f"task {p.task_id} placed on drained {p.node}"
        for hid, on in stats.reserved.items():
            assert on not in drained, f"task {hid} reserved drained {on}"
        assert {n: ledger.used(n).cores for n in drained} == held_on_drained
        for tid, on in stats.drained.items():
            tg = all_tasks[tid].target
            assert tg is not None and tg.node == on and on in drained
        for t in pending.values():
            if t.target is not None and t.target.node in drained:
                assert t.id in stats.drained or stats.stopped_early, f"task {t.id} waits unnamed"
        for p in placements:
            active[p.task_id] = (pending.pop(p.task_id), p)
        _check_capacity(nodes, active)
        _check_reservations_respected(sched, nodes, ledger, all_tasks, placements)
        # running tasks end normally, on drained nodes too
        for tid in rng.sample(sorted(active), k=len(active) // 2):
            assert ledger.release(tid) is True
            del active[tid]

    # everyone resumed, the cluster emptied: whatever waited for a drained node runs
    for tid in list(active):
        ledger.release(tid)
        del active[tid]
    for _ in range(200):
        placements = sched.schedule(list(pending.values()), nodes, ledger)
        if not placements:
            break
        for p in placements:
            pending.pop(p.task_id)
            ledger.release(p.task_id)
    for t in pending.values():
        with pytest.raises(Unschedulable):
            check_fits_ever(t.target, t.cores, t.memory, t.gpu_count, nodes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_draining_is_placing_as_if_the_node_were_not_there(rng: random.Random) -> None:
    """For placement, a drained node is exactly a node that is not online: the
    same queue and holds give the same placements and reservations."""
    nodes = _random_cluster(rng)
    on = [n.hostname for n in nodes for _ in range(rng.randint(0, n.cores))]
    holds = [running(10_000 + i, name, cores=1) for i, name in enumerate(on)]
    queue = [_random_task(rng, i, nodes) for i in range(1, rng.randint(1, 30))]
    drained = _drained_subset(rng, nodes)
    a, b = Scheduler(), Scheduler()
    with_drain = a.schedule(queue, nodes, Ledger.from_tasks(holds), drained=drained)
    without = b.schedule(queue, [n for n in nodes if n.hostname not in drained], Ledger.from_tasks(holds))
    assert with_drain == without
    assert a.last_stats.reserved == b.last_stats.reserved
