"""Node probes against synthetic sysfs/cgroup trees, and stats on this machine."""

from __future__ import annotations

import collections
import os

import psutil
import pytest

from hakuriver.models import NumaNode
from hakuriver.runner import probe


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ------------------------------------------------------------------------ NUMA


def numa_tree(root):
    write(root / "node0" / "cpulist", "0-3,8-11\n")
    write(
        root / "node0" / "meminfo",
        "Node 0 MemTotal:       65536000 kB\nNode 0 MemFree:        1000 kB\n",
    )
    write(root / "node1" / "cpulist", "4-7,12-15\n")
    write(root / "node1" / "meminfo", "Node 1 MemTotal:       32768000 kB\n")
    write(root / "online", "0-1\n")  # not a node dir
    (root / "power").mkdir()


def test_two_node_topology(tmp_path):
    numa_tree(tmp_path)
    assert probe.read_numa_topology(str(tmp_path)) == (
        NumaNode(id=0, cpus=(0, 1, 2, 3, 8, 9, 10, 11), memory=65536000 * 1024),
        NumaNode(id=1, cpus=(4, 5, 6, 7, 12, 13, 14, 15), memory=32768000 * 1024),
    )


def test_topology_root_from_env(tmp_path, monkeypatch):
    numa_tree(tmp_path)
    monkeypatch.setenv(probe.NUMA_SYSFS_ENV, str(tmp_path))
    assert [n.id for n in probe.read_numa_topology()] == [0, 1]


def test_memory_only_node_and_missing_meminfo(tmp_path):
    write(tmp_path / "node0" / "cpulist", "0\n")
    write(tmp_path / "node2" / "cpulist", "\n")
    assert probe.read_numa_topology(str(tmp_path)) == (
        NumaNode(id=0, cpus=(0,), memory=0),
        NumaNode(id=2, cpus=(), memory=0),
    )


def test_missing_numa_dir_gives_nothing(tmp_path):
    assert probe.read_numa_topology(str(tmp_path / "nope")) == ()


def test_this_machine_has_node_zero():
    if not os.path.isdir(probe.NUMA_SYSFS):
        pytest.skip("no NUMA sysfs here")
    nodes = probe.read_numa_topology(probe.NUMA_SYSFS)
    assert nodes and nodes[0].id == 0 and nodes[0].cpus


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3,8-11", (0, 1, 2, 3, 8, 9, 10, 11)), ("5", (5,)), ("", ()), ("0-6:2", (0, 2, 4, 6)), ("1,0", (0, 1))],
)
def test_parse_cpulist(text, cpus):
    assert probe.parse_cpulist(text) == cpus


# --------------------------------------------------------------------- cgroups


def v1_tree(root, proc, *, quota="-1", period="100000", mem="9223372036854771712", parent_quota=None):
    write(proc, "12:memory:/job/42\n11:cpu,cpuacct:/job/42\n0::/\n")
    cpu = root / "cpu,cpuacct"
    write(cpu / "cpu.cfs_quota_us", "-1\n")
    write(cpu / "cpu.cfs_period_us", "100000\n")
    write(cpu / "job" / "cpu.cfs_quota_us", f"{parent_quota or -1}\n")
    write(cpu / "job" / "cpu.cfs_period_us", "100000\n")
    write(cpu / "job" / "42" / "cpu.cfs_quota_us", f"{quota}\n")
    write(cpu / "job" / "42" / "cpu.cfs_period_us", f"{period}\n")
    write(root / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(root / "memory" / "job" / "42" / "memory.limit_in_bytes", f"{mem}\n")


def test_cgroup_v1_limits(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    v1_tree(root, proc, quota="150000", mem=str(1 << 30))
    assert probe.cgroup_cpu_limit(str(root), str(proc)) == 1.5
    assert probe.detect_cores(str(root), str(proc)) == min(len(os.sched_getaffinity(0)), 2)
    assert probe.cgroup_memory_limit(str(root), str(proc)) == 1 << 30
    assert probe.detect_memory(str(root), str(proc)) == min(psutil.virtual_memory().total, 1 << 30)


def test_cgroup_v1_parent_limit_counts(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    v1_tree(root, proc, quota="-1", parent_quota="100000")
    assert probe.cgroup_cpu_limit(str(root), str(proc)) == 1.0
    assert probe.detect_cores(str(root), str(proc)) == 1


def test_cgroup_v1_unlimited(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    v1_tree(root, proc)
    assert probe.cgroup_cpu_limit(str(root), str(proc)) is None
    assert probe.cgroup_memory_limit(str(root), str(proc)) is None
    assert probe.detect_cores(str(root), str(proc)) == len(os.sched_getaffinity(0))
    assert probe.detect_memory(str(root), str(proc)) == psutil.virtual_memory().total


def test_cgroup_v1_namespaced_path_falls_back_to_the_mount_root(tmp_path):
    # Inside a container /proc/self/cgroup names the host path, but the mount root is ours.
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "4:memory:/docker/abc\n2:cpu:/docker/abc\n")
    write(root / "cpu" / "cpu.cfs_quota_us", "50000\n")
    write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    write(root / "memory" / "memory.limit_in_bytes", f"{256 << 20}\n")
    assert probe.cgroup_cpu_limit(str(root), str(proc)) == 0.5
    assert probe.detect_cores(str(root), str(proc)) == 1
    assert probe.cgroup_memory_limit(str(root), str(proc)) == 256 << 20


def test_cgroup_v2_limits(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "0::/system.slice/hakuriver-runner.service\n")
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "system.slice" / "cpu.max", "max 100000\n")
    write(root / "system.slice" / "memory.max", "max\n")
    svc = root / "system.slice" / "hakuriver-runner.service"
    write(svc / "cpu.max", "250000 100000\n")
    write(svc / "memory.max", f"{2 << 30}\n")
    assert probe.cgroup_cpu_limit(str(root), str(proc)) == 2.5
    assert probe.detect_cores(str(root), str(proc)) == min(len(os.sched_getaffinity(0)), 3)
    assert probe.cgroup_memory_limit(str(root), str(proc)) == 2 << 30


def test_cgroup_v2_unlimited_and_missing(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    write(proc, "0::/\n")
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "cpu.max", "max 100000\n")
    write(root / "memory.max", "max\n")
    assert probe.cgroup_cpu_limit(str(root), str(proc)) is None
    assert probe.cgroup_memory_limit(str(root), str(proc)) is None
    assert probe.cgroup_cpu_limit(str(tmp_path / "none"), str(tmp_path / "none")) is None


def test_detect_on_this_machine():
    cores = probe.detect_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    assert 0 < probe.detect_memory() <= psutil.virtual_memory().total


# ----------------------------------------------------------------------- stats


def test_stats_without_sensors_do_not_crash(monkeypatch):
    stats = probe.collect_stats()
    assert set(stats) == {
        "cpu_percent",
        "memory_used",
        "memory_total",
        "memory_percent",
        "temperatures",
        "load_average",
    }
    assert isinstance(stats["temperatures"], dict)
    assert 0 < stats["memory_used"] <= stats["memory_total"]
    assert len(stats["load_average"]) == 3

    def broken():
        raise RuntimeError("sensor driver exploded")

    monkeypatch.setattr(psutil, "sensors_temperatures", broken)
    assert probe.collect_stats()["temperatures"] == {}
    monkeypatch.setattr(psutil, "sensors_temperatures", lambda: {})
    assert probe.collect_stats()["temperatures"] == {}
    monkeypatch.delattr(psutil, "sensors_temperatures")
    assert probe.collect_stats()["temperatures"] == {}


def test_this_machine_has_no_sensors():
    if psutil.sensors_temperatures():
        pytest.skip("this machine has temperature sensors")
    assert probe.collect_stats()["temperatures"] == {}


def test_temperatures_are_flattened(monkeypatch):
    shwtemp = collections.namedtuple("shwtemp", "label current high critical")  # psutil's shape
    monkeypatch.setattr(
        psutil,
        "sensors_temperatures",
        lambda: {"coretemp": [shwtemp("Package id 0", 45.0, 80.0, 100.0), shwtemp("", 40.0, None, None)]},
    )
    assert probe.read_temperatures() == {"coretemp/Package id 0": 45.0, "coretemp/1": 40.0}
