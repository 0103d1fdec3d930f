"""What this node offers and how busy it is: cores, memory, NUMA, live stats.

Plain synchronous functions: the runner calls them through `asyncio.to_thread`.
GPUs live in `gpu.py` (the only module that touches NVML).

Cores and memory are *cgroup-aware*: a runner inside a container or a systemd
slice with a CPU quota or memory limit must not offer the whole machine. The
limit of every ancestor cgroup counts too (both cgroup v1 and v2 enforce limits
hierarchically), so we take the smallest one on the way up.

Every path is injectable (`cgroup_root`, `proc_cgroup`, `root`) so the tests
run against synthetic trees.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import re

import psutil

from ..models import NumaNode

log = logging.getLogger(__name__)

CGROUP_ROOT = "/sys/fs/cgroup"
PROC_SELF_CGROUP = "/proc/self/cgroup"
NUMA_SYSFS = "/sys/devices/system/node"
NUMA_SYSFS_ENV = "HAKURIVER_NUMA_SYSFS"

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX; anything this large is unlimited.
_UNLIMITED = 1 << 60

_MEMTOTAL = re.compile(r"MemTotal:\s*(\d+)\s*kB", re.IGNORECASE)
_NODE_DIR = re.compile(r"^node(\d+)\Z")


# --------------------------------------------------------------------- cgroups


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _own_cgroups(proc_cgroup: str) -> tuple[dict[str, str], str | None]:
    """Parse /proc/self/cgroup: ({v1 controller: path}, v2 path or None)."""
    v1: dict[str, str] = {}
    v2: str | None = None
    text = _read(proc_cgroup) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        if hier == "0" and controllers == "":
            v2 = path
            continue
        for c in controllers.split(","):
            if c:
                v1[c] = path
    return v1, v2


def _chain(mount_dir: str, path: str) -> list[str]:
    """The cgroup directory of `path` under `mount_dir` and its ancestors up to the mount.

    When our path does not exist under the mount (a cgroup namespace or a container
    that sees its own cgroup mounted at the root), the mount root *is* our cgroup.
    """
    rel = path.strip("/")
    dirs: list[str] = []
    while rel:
        candidate = os.path.join(mount_dir, rel)
        if os.path.isdir(candidate):
            dirs.append(candidate)
        rel = os.path.dirname(rel)
    dirs.append(mount_dir)
    return dirs


def _v1_mount(cgroup_root: str, controller: str) -> str | None:
    """The v1 hierarchy holding `controller`: `cpu`, or a co-mount such as `cpu,cpuacct`."""
    d = os.path.join(cgroup_root, controller)
    if os.path.isdir(d):
        return d
    for d in sorted(glob.glob(os.path.join(cgroup_root, "*"))):
        if controller in os.path.basename(d).split(",") and os.path.isdir(d):
            return d
    return None


def _v2_mount(cgroup_root: str) -> str | None:
    for d in (cgroup_root, os.path.join(cgroup_root, "unified")):
        if os.path.exists(os.path.join(d, "cgroup.controllers")):
            return d
    return None


def _cgroup_dirs(controller: str, cgroup_root: str, proc_cgroup: str) -> tuple[str, list[str]] | None:
    """('v1' | 'v2', directories from our own cgroup up to the root) for a controller."""
    v1, v2 = _own_cgroups(proc_cgroup)
    if controller in v1:
        mount = _v1_mount(cgroup_root, controller)
        if mount:
            return "v1", _chain(mount, v1[controller])
    if v2 is not None:
        mount = _v2_mount(cgroup_root)
        if mount:
            return "v2", _chain(mount, v2)
    return None


def cgroup_cpu_limit(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_SELF_CGROUP) -> float | None:
    """The tightest CPU quota (in cores) on our cgroup and its ancestors, or None."""
    found = _cgroup_dirs("cpu", cgroup_root, proc_cgroup)
    if not found:
        return None
    version, dirs = found
    best: float | None = None
    for d in dirs:
        if version == "v1":
            quota, period = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
        else:
            text = _read(os.path.join(d, "cpu.max"))
            quota, _, period = (text or "").partition(" ")
        try:
            q, p = int(quota or ""), int(period or "")
        except ValueError:
            continue  # "max", missing or unreadable: no limit here
        if q > 0 and p > 0:
            best = q / p if best is None else min(best, q / p)
    return best


def cgroup_memory_limit(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_SELF_CGROUP) -> int | None:
    """The tightest memory limit in bytes on our cgroup and its ancestors, or None."""
    found = _cgroup_dirs("memory", cgroup_root, proc_cgroup)
    if not found:
        return None
    version, dirs = found
    name = "memory.limit_in_bytes" if version == "v1" else "memory.max"
    best: int | None = None
    for d in dirs:
        text = _read(os.path.join(d, name))
        try:
            value = int(text or "")
        except ValueError:
            continue  # "max" or missing
        if 0 < value < _UNLIMITED:
            best = value if best is None else min(best, value)
    return best


def detect_cores(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_SELF_CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit(cgroup_root, proc_cgroup)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


def detect_memory(cgroup_root: str = CGROUP_ROOT, proc_cgroup: str = PROC_SELF_CGROUP) -> int:
    """Bytes of memory this process may use: physical memory capped by the cgroup limit."""
    total = int(psutil.virtual_memory().total)
    limit = cgroup_memory_limit(cgroup_root, proc_cgroup)
    return min(total, limit) if limit is not None else total


# ------------------------------------------------------------------------ NUMA


def parse_cpulist(text: str) -> tuple[int, ...]:
    """Parse a kernel cpulist such as `0-3,8-11,16` (empty text: no CPUs)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if sep:
            hi, _, stride = hi.partition(":")  # `0-15:2` style strides exist too
            cpus.update(range(int(lo), int(hi) + 1, int(stride) if stride else 1))
        else:
            cpus.add(int(lo))
    return tuple(sorted(cpus))


def read_numa_topology(root: str | None = None) -> tuple[NumaNode, ...]:
    """NUMA nodes from sysfs (`<root>/node*/cpulist`, `<root>/node*/meminfo`).

    `root` defaults to `$HAKURIVER_NUMA_SYSFS`, then /sys/devices/system/node.
    A missing directory (no NUMA support) gives an empty tuple.
    """
    root = root or os.environ.get(NUMA_SYSFS_ENV) or NUMA_SYSFS
    try:
        entries = os.listdir(root)
    except OSError:
        return ()
    nodes: list[NumaNode] = []
    for entry in entries:
        m = _NODE_DIR.match(entry)
        if not m:
            continue
        node_dir = os.path.join(root, entry)
        try:
            cpus = parse_cpulist(_read(os.path.join(node_dir, "cpulist")) or "")
        except ValueError:
            log.warning("unreadable cpulist in %s; reporting no CPUs for this NUMA node", node_dir)
            cpus = ()
        mem = _MEMTOTAL.search(_read(os.path.join(node_dir, "meminfo")) or "")
        nodes.append(NumaNode(id=int(m.group(1)), cpus=cpus, memory=int(mem.group(1)) * 1024 if mem else 0))
    return tuple(sorted(nodes, key=lambda n: n.id))


# ----------------------------------------------------------------------- stats


def read_temperatures() -> dict[str, float]:
    """`{"<chip>/<label>": °C}`; {} on nodes without sensors or without psutil support.

    The original's health loop died on the first node without a sensor: this never raises.
    """
    fn = getattr(psutil, "sensors_temperatures", None)
    if fn is None:
        return {}
    try:
        sensors = fn() or {}
    except Exception as exc:  # noqa: BLE001 - sensor drivers fail in many creative ways
        log.debug("reading temperatures failed: %s", exc)
        return {}
    out: dict[str, float] = {}
    try:
        for chip, readings in sensors.items():
            for i, r in enumerate(readings or ()):
                current = getattr(r, "current", None)
                if current is None:
                    continue
                label = getattr(r, "label", "") or str(i)
                out[f"{chip}/{label}"] = float(current)
    except Exception as exc:  # noqa: BLE001
        log.debug("unexpected temperature data: %s", exc)
    return out


def collect_stats() -> dict:
    """One heartbeat's worth of node stats.

    Keys: cpu_percent (since the previous call; 0.0 on the first), memory_used,
    memory_total, memory_percent (bytes / %), temperatures ({} when none),
    load_average ([1, 5, 15] minutes, or None where unsupported).
    """
    vm = psutil.virtual_memory()
    try:
        load: list[float] | None = [round(x, 2) for x in psutil.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_used": int(vm.total - vm.available),
        "memory_total": int(vm.total),
        "memory_percent": float(vm.percent),
        "temperatures": read_temperatures(),
        "load_average": load,
    }
