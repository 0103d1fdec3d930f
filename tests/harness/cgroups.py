"""Read the resource limits of a process' own cgroup, cgroup v1 or v2.

``PROBE_SCRIPT`` is Python source to run *inside* a container or scope
(``["python3", "-c", PROBE_SCRIPT]``); it prints one JSON line. ``parse_probe`` finds that line
in the output. Fields: ``version`` (1 or 2), ``memory_path``/``cpu_path`` (from
/proc/self/cgroup), ``memory_limit`` (bytes, None when unlimited), ``cpu_quota`` and
``cpu_period`` (microseconds, quota None when unlimited), ``files`` (which files were read).

The probe handles both views a process can have: the whole hierarchy mounted at
/sys/fs/cgroup (systemd nodes, cgroupns=host plus a bind mount) and only its own cgroup mounted
there (a plain docker container).
"""

from __future__ import annotations

import json
from typing import Any

PROBE_MARKER = "HKR-CGROUP-PROBE"

PROBE_SCRIPT = r"""
import json, os

def read(p):
    try:
        with open(p) as fh:
            return fh.read().strip()
    except OSError:
        return None

paths, unified = {}, None
with open("/proc/self/cgroup") as fh:
    for line in fh.read().splitlines():
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            unified = path
        for c in ctrls.split(","):
            if c:
                paths[c] = path

def pick(mount, path, leaf):
    # whole hierarchy mounted: mount + path; only our own cgroup mounted: mount itself.
    for d in (mount.rstrip("/") + (path or "/"), mount):
        f = os.path.join(d, leaf)
        if os.path.exists(f):
            return f
    return None

out = {"files": {}}
if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
    out["version"] = 2
    out["memory_path"] = out["cpu_path"] = unified
    mf = pick("/sys/fs/cgroup", unified or "/", "memory.max")
    cf = pick("/sys/fs/cgroup", unified or "/", "cpu.max")
    mem = read(mf) if mf else None
    cpu = read(cf) if cf else None
    out["files"] = {"memory": mf, "cpu": cf}
    out["memory_limit"] = None if mem in (None, "max") else int(mem)
    if cpu:
        q, p = cpu.split()
        out["cpu_quota"] = None if q == "max" else int(q)
        out["cpu_period"] = int(p)
    else:
        out["cpu_quota"] = out["cpu_period"] = None
else:
    out["version"] = 1
    out["memory_path"] = paths.get("memory")
    out["cpu_path"] = paths.get("cpu")
    mf = pick("/sys/fs/cgroup/memory", paths.get("memory", "/"), "memory.limit_in_bytes")
    qf = pick("/sys/fs/cgroup/cpu", paths.get("cpu", "/"), "cpu.cfs_quota_us")
    pf = pick("/sys/fs/cgroup/cpu", paths.get("cpu", "/"), "cpu.cfs_period_us")
    out["files"] = {"memory": mf, "cpu_quota": qf, "cpu_period": pf}
    mem = read(mf) if mf else None
    # v1 reports "unlimited" as a huge page-aligned number.
    out["memory_limit"] = None if mem is None or int(mem) >= 2**62 else int(mem)
    q = read(qf) if qf else None
    p = read(pf) if pf else None
    out["cpu_quota"] = None if q is None or int(q) < 0 else int(q)
    out["cpu_period"] = None if p is None else int(p)
print("HKR-CGROUP-PROBE " + json.dumps(out, sort_keys=True), flush=True)
"""


def parse_probe(output: str | bytes) -> dict[str, Any]:
    """The JSON object printed by ``PROBE_SCRIPT`` (raises ValueError if absent)."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    for line in output.splitlines():
        if line.startswith(PROBE_MARKER + " "):
            return json.loads(line[len(PROBE_MARKER) + 1 :])
    raise ValueError(f"no {PROBE_MARKER} line in output: {output!r}")
