"""hakuriver.host.scheduler: accounting, placement, backfill, never-fits checks."""

from __future__ import annotations

import random
import time

import pytest

from hakuriver.errors import Unschedulable, ValidationError
from hakuriver.host.db import target_from_stored
from hakuriver.host.scheduler import Ledger, Placement, Scheduler, check_fits_ever
from hakuriver.models import Capability, GpuInfo, NodeCapabilities, NodeResources, NumaNode, Target, Task, TaskState
from hakuriver.parsing import parse_target

S = TaskState
G = 1 << 30


def node(name: str, cores: int = 8, memory: int = 16 * G, gpus: int = 0, numa: tuple = ()) -> NodeResources:
    return NodeResources(
        hostname=name,
        url=f"http://{name}:8001",
        cores=cores,
        memory=memory,
        numa=tuple(numa),
        gpus=tuple(GpuInfo(i) for i in range(gpus)),
    )


def two_numa(name: str, cores_each: int = 4, mem_each: int = 8 * G, gpus: int = 0) -> NodeResources:
    numa = (
        NumaNode(0, tuple(range(cores_each)), mem_each),
        NumaNode(1, tuple(range(cores_each, 2 * cores_each)), mem_each),
    )
    return node(name, cores=2 * cores_each, memory=2 * mem_each, gpus=gpus, numa=numa)


def task(
    task_id: int,
    cores: int = 1,
    memory: int | None = None,
    target: str | Target | None = None,
    gpu_count: int = 0,
    state: TaskState = S.PENDING,
    node_name: str | None = None,
    numa: int | None = None,
    gpus: list[int] | None = None,
    container: str | None = None,
) -> Task:
    return Task(
        id=task_id,
        batch_id=task_id,
        state=state,
        command=["true"],
        cores=cores,
        memory=memory,
        container=container,
        env={},
        mounts=[],
        privileged=False,
        target=target_from_stored(target) if isinstance(target, str) else target,
        node=node_name,
        numa=numa,
        gpus=list(gpus or []),
        gpu_count=gpu_count,
    )


def running(task_id, node_name, cores=1, memory=None, numa=None, gpus=None, state=S.RUNNING) -> Task:
    return task(task_id, cores=cores, memory=memory, state=state, node_name=node_name, numa=numa, gpus=gpus)


def placed_ids(placements: list[Placement]) -> list[int]:
    return [p.task_id for p in placements]


# ---------------------------------------------------------------- ledger


def test_ledger_counts_holding_tasks_and_paused_holds():
    n = two_numa("n1", gpus=2)
    ledger = Ledger.from_tasks(
        [
            running(1, "n1", cores=2, memory=G, numa=0, gpus=[1]),
            running(2, "n1", cores=3, memory=2 * G, state=S.PAUSED),
            running(3, "n1", cores=1, state=S.ASSIGNING),
            running(4, "n1", cores=8, state=S.COMPLETED),  # final: holds nothing
            task(5, cores=8),  # pending: holds nothing
        ]
    )
    free = ledger.free(n)
    assert (free.cores, free.memory, free.gpus) == (8 - 6, 16 * G - 3 * G, frozenset({0}))
    assert free.numa[0].cores == 2 and free.numa[0].memory == 7 * G
    assert free.numa[1].cores == 4 and free.numa[1].memory == 8 * G
    assert sorted(h.task_id for h in ledger.holds_on("n1")) == [1, 2, 3]


def test_paused_task_keeps_its_node_busy_for_the_scheduler():
    ledger = Ledger.from_tasks([running(1, "n1", cores=4, state=S.PAUSED)])
    assert Scheduler().schedule([task(2, cores=1)], [node("n1", cores=4)], ledger) == []


def test_release_is_idempotent_and_hold_is_not_double_counted():
    n = node("n1", cores=8, gpus=2)
    t = running(1, "n1", cores=3, memory=G, gpus=[0])
    ledger = Ledger()
    assert ledger.hold(t) is True
    assert ledger.hold(t) is False
    assert ledger.free(n).cores == 5
    assert ledger.release(t) is True
    assert ledger.release(t) is False
    assert ledger.release(1) is False
    free = ledger.free(n)
    assert (free.cores, free.memory, free.gpus) == (8, 16 * G, frozenset({0, 1}))
    assert 1 not in ledger and len(ledger) == 0


def test_release_frees_what_was_held_not_what_the_task_says_now():
    ledger = Ledger()
    t = running(1, "n1", cores=4, gpus=[1])
    ledger.hold(t)
    t.cores, t.gpus = 1, []  # the object changed meanwhile
    ledger.release(t)
    assert ledger.used("n1").cores == 0 and ledger.used("n1").gpus == frozenset()


def test_hold_needs_a_node():
    with pytest.raises(ValueError):
        Ledger().hold(task(1))


# ---------------------------------------------------------------- placement


def test_fifo_by_id_whatever_the_input_order():
    ledger = Ledger()
    out = Scheduler().schedule([task(2, cores=3), task(1, cores=3)], [node("n1", cores=4)], ledger)
    assert out == [Placement(1, "n1", None, ())]
    assert ledger.free(node("n1", cores=4)).cores == 1


def test_one_pass_never_overcommits():
    # the original accepted three 8-core tasks on one 8-core node
    ledger = Ledger()
    out = Scheduler().schedule([task(i, cores=8) for i in (1, 2, 3)], [node("n1", cores=8)], ledger)
    assert placed_ids(out) == [1]


def test_untargeted_tightest_fit():
    nodes = [node("big", cores=16), node("small", cores=4), node("mid", cores=8)]
    out = Scheduler().schedule([task(1, cores=3), task(2, cores=6), task(3, cores=8)], nodes, Ledger())
    assert out == [
        Placement(1, "small", None, ()),
        Placement(2, "mid", None, ()),
        Placement(3, "big", None, ()),
    ]


def test_cpu_task_prefers_nodes_without_gpus_and_gpu_task_tightest_gpu_fit():
    nodes = [node("gpu4", cores=4, gpus=4), node("gpu2", cores=32, gpus=2), node("cpu", cores=32)]
    out = Scheduler().schedule([task(1, cores=2), task(2, cores=2, gpu_count=1)], nodes, Ledger())
    assert out == [Placement(1, "cpu", None, ()), Placement(2, "gpu2", None, (0,))]


def test_gpu_count_gets_lowest_free_ids():
    n = node("g", cores=16, gpus=4)
    ledger = Ledger.from_tasks([running(1, "g", gpus=[0, 2])])
    out = Scheduler().schedule([task(2, gpu_count=1), task(3, gpu_count=1), task(4, gpu_count=1)], [n], ledger)
    assert out == [Placement(2, "g", None, (1,)), Placement(3, "g", None, (3,))]
    assert ledger.free(n).gpus == frozenset()


def test_targeted_numa_and_gpu_ids():
    n = two_numa("n1", gpus=4)
    ledger = Ledger()
    out = Scheduler().schedule(
        [
            task(1, cores=4, target="n1:1"),
            task(2, cores=1, target="n1:1"),  # NUMA 1 is full now
            task(3, cores=2, target="n1::3,1"),
            task(4, cores=1, target="n1:0::0"),
        ],
        [n],
        ledger,
    )
    assert out[0] == Placement(1, "n1", 1, ())
    assert out[1] == Placement(3, "n1", None, (3, 1))
    assert 2 not in placed_ids(out)
    # task 2's reservation needs NUMA 1 cores: task 4 on NUMA 0 does not touch them
    assert out[2] == Placement(4, "n1", 0, (0,))
    free = ledger.free(n)
    assert free.numa[1].cores == 0 and free.numa[0].cores == 3 and free.gpus == frozenset({2})


def test_targeted_task_waits_for_offline_node_without_blocking_others():
    out = Scheduler().schedule([task(1, target="gone"), task(2)], [node("n1")], Ledger())
    assert placed_ids(out) == [2]


def test_memory_none_always_fits_and_counts_zero():
    n = node("n1", cores=8, memory=4 * G)
    ledger = Ledger.from_tasks([running(1, "n1", memory=4 * G)])
    out = Scheduler().schedule([task(2, memory=G), task(3, memory=None)], [n], ledger)
    assert placed_ids(out) == [3]
    assert ledger.used("n1").memory == 4 * G


def test_placements_are_held_and_can_be_released_when_not_recorded():
    n = node("n1", cores=2)
    ledger = Ledger()
    sched = Scheduler()
    assert placed_ids(sched.schedule([task(1, cores=2), task(2, cores=2)], [n], ledger)) == [1]
    # a second pass with the same pending list places nothing new (task 1 is held)
    assert sched.schedule([task(1, cores=2), task(2, cores=2)], [n], ledger) == []
    ledger.release(1)  # e.g. killed before assign_many recorded it
    assert placed_ids(sched.schedule([task(2, cores=2)], [n], ledger)) == [2]


def test_malformed_stored_target_is_never_placed():
    out = Scheduler().schedule([task(1, target="bad::x"), task(2)], [node("n1")], Ledger())
    assert placed_ids(out) == [2]


# ---------------------------------------------------------------- backfill


def test_backfill_on_another_node_is_unrestricted():
    nodes = [node("a", cores=4), node("b", cores=4)]
    ledger = Ledger.from_tasks([running(1, "a", cores=3)])
    out = Scheduler().schedule(
        [task(2, cores=2, target="a"), task(3, cores=1), task(4, cores=1, target="b")], nodes, ledger
    )
    # task 2 is blocked on a; task 3 must not take a's last core (it would delay 2), so it goes to b
    assert out == [Placement(3, "b", None, ()), Placement(4, "b", None, ())]


def test_blocked_8_core_task_lets_no_core_taking_task_onto_its_node():
    nodes = [node("a", cores=8), node("b", cores=2)]
    ledger = Ledger.from_tasks([running(1, "a", cores=3)])
    sched = Scheduler()
    out = sched.schedule(
        [
            task(2, cores=8, target="a"),
            task(3, cores=1, target="a"),
            task(4, cores=1),
            task(5, cores=2),
            task(6, cores=1),
        ],
        nodes,
        ledger,
    )
    # 3 and 5 are blocked too and reserve in turn (5 fits a's free cores but not a's reservation)
    assert sched.last_stats.reserved == {2: "a", 3: "a", 5: "a"}
    # nothing lands on a; 4 goes to b, 5 cannot fit on b after 4 and must not take a's cores; 6 fills b
    assert out == [Placement(4, "b", None, ()), Placement(6, "b", None, ())]
    assert ledger.used("a").cores == 3


def test_task_waiting_for_gpu0_lets_cpu_work_use_spare_cores():
    n = node("a", cores=8, memory=16 * G, gpus=2)
    ledger = Ledger.from_tasks([running(1, "a", cores=1, memory=10 * G, gpus=[0])])
    out = Scheduler().schedule(
        [
            task(2, cores=2, memory=4 * G, target="a::0"),  # blocked: GPU 0 is busy
            task(3, cores=2),  # CPU only: 7 free -> 5 >= 2, fine
            task(4, cores=6),  # does not fit (5 free): blocked, reserves 6 cores in turn
            task(5, cores=1, gpu_count=1),  # takes GPU 1, not GPU 0; 5 -> 4 cores >= 2 but < 6: refused
            task(6, cores=1, memory=4 * G, target="a"),  # targeted: same rule, refused
        ],
        [n],
        ledger,
    )
    assert out == [Placement(3, "a", None, ())]

    ledger = Ledger.from_tasks([running(1, "a", cores=1, memory=10 * G, gpus=[0])])
    out = Scheduler().schedule(
        [
            task(2, cores=2, memory=4 * G, target="a::0"),  # blocked: GPU 0 is busy
            task(3, cores=2),  # CPU only: 7 free -> 5 >= 2, fine
            task(6, cores=1, gpu_count=1),  # takes GPU 1, not GPU 0: fine
            task(7, cores=1, target="a::1"),  # GPU 1 is taken now: blocked, reserves GPU 1
            task(8, cores=1, memory=G),  # 6G -> 5G >= 4G and 4 -> 3 cores >= 2: fine
            task(9, cores=1, memory=4 * G),  # memory: 5G free -> 1G < 4G: refused
            task(10, cores=4),  # does not fit (3 free)
        ],
        [n],
        ledger,
    )
    assert out == [Placement(3, "a", None, ()), Placement(6, "a", None, (1,)), Placement(8, "a", None, ())]
    free = ledger.free(n)
    assert free.cores >= 2 and free.memory >= 4 * G  # task 2 still fits once GPU 0 frees


def test_count_reservation_keeps_gpus_free_and_steers_ids():
    n = node("a", cores=16, gpus=4)
    ledger = Ledger.from_tasks([running(1, "a", gpus=[0, 1, 2])])
    out = Scheduler().schedule([task(2, gpu_count=2), task(3, gpu_count=1), task(4, cores=4)], [n], ledger)
    # 2 waits for two GPUs: 3 may not take the last free one; CPU-only 4 may run
    assert out == [Placement(4, "a", None, ())]

    ledger2 = Ledger.from_tasks([running(1, "a", gpus=[1])])
    out2 = Scheduler().schedule([task(2, cores=1, target="a::1,0"), task(3, gpu_count=1)], [n], ledger2)
    # 2 waits for GPU 1 (0 is free); 3 gets GPU 2, not the reserved GPU 0
    assert out2 == [Placement(3, "a", None, (2,))]


def test_numa_reservation_only_guards_its_numa_node():
    n = two_numa("a")
    ledger = Ledger.from_tasks([running(1, "a", cores=1, numa=0)])
    out = Scheduler().schedule(
        [
            task(2, cores=4, target="a:0"),  # blocked: NUMA 0 has 3 free
            task(3, cores=1, target="a:0"),  # would take NUMA 0 cores: refused
            task(4, cores=2, target="a:1"),  # other NUMA node; node keeps 5 >= 4
            task(5, cores=1),  # unpinned; node keeps 4 >= 4
            task(6, cores=1),  # would leave 3 < 4 on the node: refused
        ],
        [n],
        ledger,
    )
    assert placed_ids(out) == [4, 5]


def test_untargeted_blocked_task_reserves_the_closest_node():
    nodes = [node("a", cores=8), node("b", cores=8)]
    ledger = Ledger.from_tasks([running(1, "a", cores=6), running(2, "b", cores=2)])
    sched = Scheduler()
    out = sched.schedule([task(3, cores=7), task(4, cores=3), task(5, cores=2)], nodes, ledger)
    assert sched.last_stats.reserved[3] == "b"  # short by 1 on b, by 5 on a
    # 4 fits only on b, but b is reserved for 3; 5 fits on a (no reservation there)
    assert out == [Placement(5, "a", None, ())]


def test_task_that_can_never_fit_online_nodes_does_not_block():
    sched = Scheduler()
    out = sched.schedule([task(1, cores=64), task(2, cores=1, target="n1:5"), task(3, cores=2)], [node("n1")], Ledger())
    assert placed_ids(out) == [3]
    assert sched.last_stats.reserved == {}


def test_same_shape_is_evaluated_once_per_pass():
    sched = Scheduler()
    ledger = Ledger.from_tasks([running(1, "n1", cores=8)])
    out = sched.schedule([task(i, cores=2) for i in range(2, 1002)], [node("n1")], ledger)
    assert out == []
    assert sched.last_stats.examined == 1 and sched.last_stats.skipped_same_shape == 999
    assert sched.last_stats.reservations == 1


def test_pass_bounds():
    sched = Scheduler(max_examined=5)
    out = sched.schedule([task(i) for i in range(1, 11)], [node("n1", cores=64)], Ledger())
    assert placed_ids(out) == [1, 2, 3, 4, 5] and sched.last_stats.stopped_early

    sched = Scheduler(max_reservations=2)
    ledger = Ledger.from_tasks([running(1, "a", cores=8), running(9, "b", cores=7)])
    out = sched.schedule(
        [
            task(2, cores=2, target="a"),
            task(3, cores=3, target="b"),
            task(4, cores=4, target="a"),  # blocked past the cap: no reservation
            task(5, cores=1),  # b is reserved for 3 (needs 3, 1 free): goes to c
            task(6, cores=1, target="b"),  # would delay 3: refused
        ],
        [node("a"), node("b"), node("c", cores=1)],
        ledger,
    )
    assert out == [Placement(5, "c", None, ())]
    assert sched.last_stats.reserved == {2: "a", 3: "b"} and sched.last_stats.unreserved == 2
    assert not sched.last_stats.stopped_early


# ---------------------------------------------------------------- never fits


CLUSTER = [
    two_numa("n1", cores_each=4, mem_each=8 * G, gpus=2),
    node("n2", cores=16, memory=32 * G),
    NodeResources("n3", "http://n3", cores=4, memory=4 * G, numa=(NumaNode(0, (0, 1, 2, 3), 0),)),
]


def fits_ever(target: str | None, *args):
    """check_fits_ever on a target as the user writes it."""
    return check_fits_ever(None if target is None else parse_target(target), *args)


@pytest.mark.parametrize(
    "target,cores,memory,gpus,message",
    [
        (None, 1, None, 0, None),
        (None, 16, 32 * G, 0, None),
        (None, 2, None, 2, None),
        ("n1:1::0,1", 4, 8 * G, 0, None),
        ("n3:0", 4, 4 * G, 0, None),  # NUMA memory unknown: only the node's memory counts
        ("n2", 16, None, 0, None),
        (None, 17, None, 0, "task needs 17 cores but the largest node has 16"),
        (None, 1, 64 * G, 0, "task needs 64G of memory but the largest node has 32G"),
        (None, 1, None, 3, "task needs 3 GPUs but no node has more than 2"),
        (None, 9, None, 1, "no single node has 9 cores and 1 GPU"),
        (None, 10, 20 * G, 2, "no single node has 10 cores and 20G of memory and 2 GPUs"),
        ("nx", 1, None, 0, "unknown node 'nx'"),
        ("n2", 17, None, 0, "task needs 17 cores but node 'n2' has 16"),
        ("n1", 1, 17 * G, 0, "task needs 17G of memory but node 'n1' has 16G"),
        ("n1:2", 1, None, 0, "node 'n1' has no NUMA node 2 (its NUMA nodes: 0, 1)"),
        ("n3:1", 1, None, 0, "node 'n3' has no NUMA node 1 (its NUMA nodes: 0)"),
        ("n2:0", 1, None, 0, "node 'n2' has no NUMA node 0 (it reports no NUMA topology)"),
        ("n1:0", 5, None, 0, "task needs 5 cores but NUMA node 0 of 'n1' has 4"),
        ("n1:0", 1, 9 * G, 0, "task needs 9G of memory but NUMA node 0 of 'n1' has 8G"),
        ("n1::2", 1, None, 0, "node 'n1' has no GPU 2 (its GPUs: 0, 1)"),
        ("n2::0", 1, None, 0, "node 'n2' has no GPUs"),
        ("n2", 1, None, 1, "node 'n2' has no GPUs"),
        ("n1", 1, None, 3, "task needs 3 GPUs but node 'n1' has 2"),
    ],
)
def test_check_fits_ever(target, cores, memory, gpus, message):
    if message is None:
        fits_ever(target, cores, memory, gpus, CLUSTER)
    else:
        with pytest.raises(Unschedulable) as info:
            fits_ever(target, cores, memory, gpus, CLUSTER)
        assert info.value.message == message
        assert info.value.status == 400 and info.value.code == "unschedulable"


def test_check_fits_ever_edge_cases():
    with pytest.raises(Unschedulable, match="^no nodes are registered$"):
        check_fits_ever(None, 1, None, 0, [])
    with pytest.raises(Unschedulable, match="^task needs 1 GPU but no node has GPUs$"):
        check_fits_ever(None, 1, None, 1, [node("a")])
    with pytest.raises(ValidationError):
        fits_ever("bad::", 1, None, 0, [node("a")])
    # plural/singular
    with pytest.raises(Unschedulable, match="^task needs 1 core but node 'z' has 0$"):
        fits_ever("z", 1, None, 0, [node("z", cores=0)])


def test_sizes_in_refusals_are_the_nodes_tables_units():
    """A node's odd memory (bytes from /proc/meminfo) reads as `client nodes` shows it, not as 24683652K."""
    odd = node("vm", memory=24683652 * 1024)
    with pytest.raises(Unschedulable) as info:
        check_fits_ever(None, 1, 999 * (1 << 40), 0, [odd])
    assert info.value.message == "task needs 999T of memory but the largest node has 23.5G"
    with pytest.raises(Unschedulable) as info:
        fits_ever("vm", 1, 24 * G, 0, [odd])
    assert info.value.message == "task needs 24G of memory but node 'vm' has 23.5G"


# ---------------------------------------------------------------- capabilities

NO_SYSTEMD = NodeCapabilities(docker=Capability(True), null=Capability(False, "systemd is not PID 1"))
NO_DOCKER = NodeCapabilities(docker=Capability(False, "cannot reach the Docker engine"), null=Capability(True))
BOTH = NodeCapabilities(docker=Capability(True), null=Capability(True))


def able(name: str, caps: NodeCapabilities | None, **kw) -> NodeResources:
    n = node(name, **kw)
    return NodeResources(n.hostname, n.url, n.cores, n.memory, n.numa, n.gpus, capabilities=caps)


def test_a_null_task_no_node_can_run_is_refused_with_each_nodes_reason():
    nodes = [able("vm", NO_SYSTEMD), able("vm2", NodeCapabilities(null=Capability(False, "launcher missing")))]
    with pytest.raises(Unschedulable) as info:
        check_fits_ever(None, 1, None, 0, nodes, "NULL")
    assert info.value.message == (
        "no node can run --container NULL tasks (node 'vm' cannot run --container NULL tasks: systemd is not PID 1; "
        "node 'vm2' cannot run --container NULL tasks: launcher missing)"
    )
    check_fits_ever(None, 1, None, 0, nodes, "python")  # Docker tasks still go
    check_fits_ever(None, 1, None, 0, nodes)


def test_a_task_targeted_at_a_node_that_cannot_run_its_kind_is_refused():
    nodes = [able("vm", NO_SYSTEMD), able("box", NO_DOCKER), able("both", BOTH)]
    with pytest.raises(Unschedulable, match=r"^node 'vm' cannot run --container NULL tasks: systemd is not PID 1$"):
        fits_ever("vm", 1, None, 0, nodes, "NULL")
    with pytest.raises(Unschedulable, match=r"^node 'box' cannot run Docker tasks: cannot reach the Docker engine$"):
        fits_ever("box", 1, None, 0, nodes, "python")
    fits_ever("vm", 1, None, 0, nodes, "python")
    fits_ever("box", 1, None, 0, nodes, "NULL")
    fits_ever("both", 1, None, 0, nodes, "NULL")
    check_fits_ever(None, 1, None, 0, nodes, "NULL")  # "box" and "both" can


def test_a_node_that_does_not_say_is_treated_as_able():
    """An older runner registers without capabilities: nothing is refused on a guess."""
    old = able("old", None)
    fits_ever("old", 1, None, 0, [old], "NULL")
    check_fits_ever(None, 1, None, 0, [old], "NULL")
    partial = able("p", NodeCapabilities(docker=Capability(True)))  # says nothing of NULL
    fits_ever("p", 1, None, 0, [partial], "NULL")


def test_sizes_are_compared_with_the_nodes_that_can_run_the_kind():
    nodes = [able("big", NO_SYSTEMD, cores=64), able("small", BOTH, cores=4)]
    with pytest.raises(Unschedulable, match="^task needs 8 cores but the largest node has 4$"):
        check_fits_ever(None, 8, None, 0, nodes, "NULL")
    check_fits_ever(None, 8, None, 0, nodes, "python")


def test_placement_skips_nodes_that_cannot_run_the_kind():
    nodes = [able("a", NO_SYSTEMD, cores=4), able("b", BOTH, cores=16), able("c", NO_DOCKER, cores=2)]
    pending = [
        task(1, container="NULL"),  # tightest fit is "a" or "c", but only "b"/"c" run NULL
        task(2),  # Docker: "a" is the tightest that runs it ("c" would be tighter but cannot)
        task(3, target="a", container="NULL"),  # waits: "a" cannot run it (yet)
    ]
    ledger = Ledger()
    placements = Scheduler().schedule(pending, nodes, ledger)
    assert {p.task_id: p.node for p in placements} == {1: "c", 2: "a"}
    assert 3 not in ledger


# ---------------------------------------------------------------- properties


def _random_cluster(rng: random.Random) -> list[NodeResources]:
    nodes = []
    for i in range(rng.randint(1, 6)):
        cores = rng.choice([2, 4, 8, 16])
        memory = rng.choice([4, 8, 16]) * G
        numa = ()
        if rng.random() < 0.6:
            half = cores // 2
            mem = rng.choice([0, memory // 2])
            numa = (NumaNode(0, tuple(range(half)), mem), NumaNode(1, tuple(range(half, cores)), mem))
        nodes.append(node(f"n{i}", cores=cores, memory=memory, gpus=rng.choice([0, 0, 1, 2, 4]), numa=numa))
    return nodes


def _random_task(rng: random.Random, task_id: int, nodes: list[NodeResources]) -> Task:
    cores = rng.choice([1, 1, 1, 2, 2, 3, 4, 8])
    memory = rng.choice([None, None, G, 2 * G, 3 * G, 6 * G])
    if rng.random() < 0.35:
        n = rng.choice(nodes)
        spec = n.hostname
        if n.numa and rng.random() < 0.5:
            spec += f":{rng.choice(n.numa).id}"
        if n.gpus and rng.random() < 0.5:
            ids = rng.sample(sorted(n.gpu_ids()), rng.randint(1, len(n.gpus)))
            spec += "::" + ",".join(map(str, ids))
        return task(task_id, cores=cores, memory=memory, target=spec)
    return task(task_id, cores=cores, memory=memory, gpu_count=rng.choice([0, 0, 0, 1, 2]))


def _check_capacity(nodes, active: dict[int, tuple[Task, Placement]]):
    by_name = {n.hostname: n for n in nodes}
    for n in nodes:
        mine = [(t, p) for t, p in active.values() if p.node == n.hostname]
        assert sum(t.cores for t, _ in mine) <= n.cores
        assert sum(t.memory or 0 for t, _ in mine) <= n.memory
        gpu_ids = [g for _, p in mine for g in p.gpus]
        assert len(gpu_ids) == len(set(gpu_ids)), "a GPU given to two tasks"
        assert set(gpu_ids) <= n.gpu_ids()
        for numa in n.numa:
            pinned = [t for t, p in mine if p.numa == numa.id]
            assert sum(t.cores for t in pinned) <= len(numa.cpus)
            if numa.memory:
                assert sum(t.memory or 0 for t in pinned) <= numa.memory
    for t, p in active.values():
        assert p.node in by_name
        if t.target:
            tg = t.target
            assert p.node == tg.node and p.numa == tg.numa
            assert p.gpus == tg.gpus if tg.gpus else len(p.gpus) == t.gpu_count
        else:
            assert p.numa is None and len(p.gpus) == t.gpu_count


def _check_reservations_respected(sched, nodes, ledger, tasks_by_id, placements):
    """For each reservation (H on N) and each dimension some later placement on N
    took, what is free on N after the pass still covers H's need."""
    by_name = {n.hostname: n for n in nodes}
    for hid, nname in sched.last_stats.reserved.items():
        h = tasks_by_id[hid]
        ht = h.target
        later = [tasks_by_id[p.task_id] for p in placements if p.node == nname and p.task_id > hid]
        later_p = [p for p in placements if p.node == nname and p.task_id > hid]
        free = ledger.free(by_name[nname])
        if later:
            assert free.cores >= h.cores
        if h.memory and any(t.memory for t in later):
            assert free.memory >= h.memory
        if ht and ht.numa is not None:
            pinned = [t for t, p in zip(later, later_p) if p.numa == ht.numa]
            if pinned:
                assert free.numa[ht.numa].cores >= h.cores
        if ht and ht.gpus:
            for p in later_p:
                assert not set(p.gpus) & set(ht.gpus)
        elif h.gpu_count and any(p.gpus for p in later_p):
            assert len(free.gpus) >= h.gpu_count


@pytest.mark.parametrize("seed", range(40))
def test_randomized_never_overcommits_and_respects_reservations(seed):
    rng = random.Random(seed)
    nodes = _random_cluster(rng)
    sched = Scheduler()
    ledger = Ledger()
    pending: dict[int, Task] = {}
    active: dict[int, tuple[Task, Placement]] = {}
    all_tasks: dict[int, Task] = {}
    next_id = 1
    for _round in range(25):
        for _ in range(rng.randint(0, 15)):
            t = _random_task(rng, next_id, nodes)
            pending[next_id] = all_tasks[next_id] = t
            next_id += 1
        placements = sched.schedule(list(pending.values()), nodes, ledger)
        assert [p.task_id for p in placements] == sorted(p.task_id for p in placements)
        for p in placements:
            active[p.task_id] = (pending.pop(p.task_id), p)
        _check_capacity(nodes, active)
        _check_reservations_respected(sched, nodes, ledger, all_tasks, placements)
        # the ledger agrees with an independent count
        for n in nodes:
            used = ledger.used(n.hostname)
            mine = [(t, p) for t, p in active.values() if p.node == n.hostname]
            assert used.cores == sum(t.cores for t, _ in mine)
            assert used.gpus == frozenset(g for _, p in mine for g in p.gpus)
        # some tasks finish (released twice: the second must be a no-op)
        for tid in rng.sample(sorted(active), k=len(active) // 3):
            assert ledger.release(tid) is True
            assert ledger.release(tid) is False
            del active[tid]
    # whatever is still pending and fits on an empty cluster gets placed eventually
    for tid in list(active):
        ledger.release(tid)
        del active[tid]
    for _ in range(200):
        if not pending:
            break
        placements = sched.schedule(list(pending.values()), nodes, ledger)
        if not placements:
            break
        for p in placements:
            active[p.task_id] = (pending.pop(p.task_id), p)
        _check_capacity(nodes, active)
        for tid in list(active):
            ledger.release(tid)
            del active[tid]
    for t in pending.values():
        with pytest.raises(Unschedulable):
            check_fits_ever(t.target, t.cores, t.memory, t.gpu_count, nodes)


def test_pass_speed_10k_pending_100_nodes():
    rng = random.Random(7)
    nodes = [
        node(
            f"n{i:03d}",
            cores=rng.choice([16, 32, 64]),
            memory=rng.choice([64, 128, 256]) * G,
            gpus=rng.choice([0, 0, 4, 8]),
        )
        for i in range(100)
    ]
    pending = []
    for i in range(1, 10_001):
        if rng.random() < 0.1:
            pending.append(task(i, cores=rng.choice([1, 2, 4]), target=rng.choice(nodes).hostname))
        else:
            shape = dict(cores=rng.choice([1, 2, 4, 8]), memory=rng.choice([None, 2 * G, 8 * G]))
            pending.append(task(i, gpu_count=rng.choice([0, 0, 0, 1]), **shape))
    timings = []
    ledger = Ledger()
    sched = Scheduler()
    for _ in range(3):
        started = time.perf_counter()
        placements = sched.schedule(pending, nodes, ledger)
        timings.append((time.perf_counter() - started) * 1000)
        pending = [t for t in pending if t.id not in ledger]
        stats = sched.last_stats
        print(
            f"\npass: {timings[-1]:.1f} ms, placed {len(placements)}, examined {stats.examined}, "
            f"same-shape skips {stats.skipped_same_shape}, reservations {stats.reservations}"
        )
    # full cluster: the pass must still have looked at everything cheaply
    assert sched.last_stats.examined + sched.last_stats.skipped_same_shape <= 10_000


def test_a_pass_asked_to_stop_when_full_ends_at_the_last_free_core():
    nodes = [node("a", cores=2), node("b", cores=2)]
    ledger = Ledger()
    ledger.hold(running(100, "a"))  # 3 cores free in all
    pending = [task(i) for i in range(1, 11)]
    sched = Scheduler()
    placements = sched.schedule(pending, nodes, ledger, stop_when_full=True)
    assert placed_ids(placements) == [1, 2, 3]
    stats = sched.last_stats
    assert stats.stopped_full and stats.walked == 3
    assert [t.id for t in stats.order] == list(range(1, 11))  # positions still cover the whole queue
    assert stats.reasons == {}  # nobody reached, nothing said: the caller keeps the earlier reasons
    # Without it the same pass places the same tasks and says why each other waits.
    ledger = Ledger()
    ledger.hold(running(100, "a"))
    again = Scheduler()
    assert placed_ids(again.schedule(pending, nodes, ledger)) == [1, 2, 3]
    assert not again.last_stats.stopped_full and again.last_stats.walked == 10
    assert set(again.last_stats.reasons) == set(range(4, 11))


def test_a_pass_with_a_core_free_goes_on_past_a_head_that_cannot_use_it():
    # Stopping is only for "nothing more can start": one free core anywhere
    # keeps the pass going, past a head too big for it, to a task it fits.
    nodes = [node("a", cores=1), node("b", cores=4)]
    ledger = Ledger()
    ledger.hold(running(100, "b", cores=4))
    sched = Scheduler()
    placements = sched.schedule([task(1, cores=4), task(2), task(3)], nodes, ledger, stop_when_full=True)
    assert {p.task_id: p.node for p in placements} == {2: "a"}
    stats = sched.last_stats
    assert stats.reserved == {1: "b"} and stats.stopped_full and stats.walked == 2
    # Full from the start: nothing is looked at.
    assert sched.schedule([task(3)], nodes, ledger, stop_when_full=True) == []
    assert sched.last_stats.walked == 0 and sched.last_stats.examined == 0


def test_skipped_tasks_are_passed_over_never_the_head():
    # Task 1 (waiting for a dependency) could not start anyway; passed over,
    # it reserves nothing, so task 2 takes the node's last cores and task 3 is the head.
    nodes = [node("a", cores=4)]
    ledger = Ledger()
    ledger.hold(running(100, "a", cores=2))
    sched = Scheduler()
    pending = [task(1, cores=4), task(2, cores=2), task(3)]
    assert placed_ids(sched.schedule(pending, nodes, ledger, skip={1})) == [2]
    stats = sched.last_stats
    assert [t.id for t in stats.order] == [1, 2, 3] and stats.reserved == {3: "a"} and set(stats.reasons) == {3}


def test_a_pass_stops_once_the_smallest_request_finds_no_place():
    # Cores are free, but held back for the head (task 1, 4 cores, reserved
    # on b): a one-core task finds no place, so no later task can either.
    nodes = [node("a", cores=2), node("b", cores=6)]
    ledger = Ledger()
    ledger.hold(running(100, "a", cores=2))
    ledger.hold(running(101, "b", cores=3))
    pending = [task(1, cores=4), task(2), task(3, cores=2), task(4)]
    sched = Scheduler()
    assert sched.schedule(pending, nodes, ledger, stop_when_full=True) == []
    stats = sched.last_stats
    assert stats.stopped_full and stats.walked == 2 and set(stats.reasons) == {1, 2}
    # A one-core task that asks for more than a core (memory), or that only
    # some nodes may run (a kind one node refuses), is no such proof.
    nodes = [able("a", NO_SYSTEMD, cores=1), able("b", BOTH, cores=1)]
    ledger = Ledger()
    ledger.hold(running(100, "b"))
    pending = [task(11, memory=64 * G), task(12, container="NULL"), task(13)]
    placements = sched.schedule(pending, nodes, ledger, stop_when_full=True)
    assert {p.task_id: p.node for p in placements} == {13: "a"}
    assert sched.last_stats.walked == 3


@pytest.mark.parametrize("seed", range(40))
def test_randomized_stopping_when_full_places_exactly_what_a_full_walk_places(seed):
    rng = random.Random(seed)
    nodes = _random_cluster(rng)
    ledgers, scheds = (Ledger(), Ledger()), (Scheduler(), Scheduler())
    pending: dict[int, Task] = {}
    active: list[int] = []
    next_id = 1
    for _round in range(25):
        for _ in range(rng.randint(0, 15)):
            pending[next_id] = _random_task(rng, next_id, nodes)
            next_id += 1
        full, stopped = (
            sched.schedule(list(pending.values()), nodes, ledger, stop_when_full=stop)
            for sched, ledger, stop in zip(scheds, ledgers, (False, True), strict=True)
        )
        assert stopped == full
        stats = scheds[1].last_stats
        if stats.stopped_full:
            # Every node full, or the last task reached is the smallest
            # request there is (one core, nothing else) and found no place.
            last = stats.order[stats.walked - 1] if stats.walked else None
            smallest = last is not None and (last.cores, last.memory, last.target, last.gpu_count) == (1, None, None, 0)
            assert all(ledgers[1].used(n.hostname).cores >= n.cores for n in nodes) or (
                smallest and last.id in stats.reasons
            )
        # What it did reach, it says the same about.
        reached = {t.id for t in stats.order[: stats.walked]}
        assert {k: v for k, v in scheds[0].last_stats.reasons.items() if k in reached} == stats.reasons
        for p in full:
            pending.pop(p.task_id)
            active.append(p.task_id)
        for tid in rng.sample(active, k=len(active) // 3):
            for ledger in ledgers:
                ledger.release(tid)
            active.remove(tid)


def test_a_pass_ended_by_its_examination_cap_counts_as_walked_to_the_end():
    # The tasks past `max_examined` must not keep an older pass's reason for
    # good: only a pass that stopped because every node was full hands them on.
    nodes = [node("a", cores=1)]
    ledger = Ledger()
    ledger.hold(running(100, "a"))
    sched = Scheduler(max_examined=1)
    pending = [task(1, cores=1), task(2, cores=1, memory=G), task(3, cores=1, memory=2 * G)]
    assert sched.schedule(pending, nodes, ledger) == []
    stats = sched.last_stats
    assert stats.stopped_early and not stats.stopped_full and stats.walked == 3
