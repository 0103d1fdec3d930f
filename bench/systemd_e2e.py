"""End-to-end latency of `--container NULL` tasks, inside one real systemd node.

A Host (root) and an unprivileged Runner run in a node booted from the test
harness's systemd image, with the task launcher and sudoers rule installed from
the package (the same setting as tests/systemd). No-op tasks (`true`) go one
after another; beside them, in the same node, the bare `systemd-run --scope true`
that the original guide used and `systemd-run --wait true` (a transient service,
which is what HakuRiver starts), timed inside the node so no `docker exec`
overhead counts.

Then the stages of one task, timed in the node too (`STAGE_TIMER`, p50 of `n` each):
a bare Python start (`python3 -IS -c pass`), the launcher's imports and the compile of
its source (what the unit's stages skip by running its compiled code), `sudo -n` (the
launcher's `info` with and without it, as the runner user), `systemctl show`,
`systemd-run --no-block` of a bare transient service, the launcher's whole `start`
through sudo, and from its return to the unit's status record (the unit's set-up by
systemd, the `exec` stage, `true`, the poststop hook).

And each task's own timeline from systemd's journal (`journal_timeline`): where the
time between the Host's submit and its `finished_at` went, on either side of the unit.
"""

from __future__ import annotations

import json
import time
from typing import Any

BARE_TIMER = r"""
import json, subprocess, sys, time
n = int(sys.argv[1])
out = {"scope": [], "service": []}
for _ in range(n):
    t = time.perf_counter(); subprocess.run(["systemd-run", "--scope", "--quiet", "--collect", "true"], check=True)
    out["scope"].append(time.perf_counter() - t)
    t = time.perf_counter(); subprocess.run(["systemd-run", "--wait", "--quiet", "--collect", "true"], check=True)
    out["service"].append(time.perf_counter() - t)
print(json.dumps(out))
"""


STAGE_TIMER = r"""
import json, os, subprocess, sys, time
n, base = int(sys.argv[1]), int(sys.argv[2])
L = "/usr/local/libexec/hakuriver/hakuriver-task-launcher"
STATE = "/var/lib/hakuriver/task-status"
RUNNER = ["runuser", "-u", "runner", "--"]
out = {}
def timed(name, argv):
    out[name] = []
    for _ in range(n):
        t = time.perf_counter(); subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        out[name].append(time.perf_counter() - t)
timed("python3 -IS -c pass", ["/usr/bin/python3", "-IS", "-c", "pass"])
timed("python3 -IS, the launcher's imports", ["/usr/bin/python3", "-IS", "-c", "import json, re, grp, pwd, signal, stat, errno, fcntl, time, select"])
timed("python3 -IS, compile the launcher", ["/usr/bin/python3", "-IS", "-c", f"compile(open({L!r}, 'rb').read(), 'l', 'exec')"])
timed("runuser -u runner -- true (counted in the two below)", RUNNER + ["/bin/true"])
timed("runner: launcher info", RUNNER + [L, "info"])
timed("runner: sudo -n launcher info", RUNNER + ["sudo", "-n", L, "info"])
timed("systemctl show (one unit)", ["systemctl", "--no-pager", "show", "--property=Id,LoadState,ActiveState", "--", "hakuriver-task-1.service"])
out["systemd-run --no-block (bare service)"] = []
for i in range(n):
    t = time.perf_counter()
    subprocess.run(["systemd-run", "--quiet", "--no-block", f"--unit=bench-bare-{base}-{i}", "--property=Type=exec", "--property=User=alice", "--", "/bin/true"], check=True)
    out["systemd-run --no-block (bare service)"].append(time.perf_counter() - t)
out["runner: sudo -n launcher start"], out["start returned -> status record"] = [], []
for i in range(n):
    tid = base + i
    req = json.dumps({"task_id": str(tid), "user": "alice", "command": ["true"], "shared_dir": "/srv/hkr/shared", "local_temp_dir": "/srv/hkr/temp"}).encode()
    t = time.perf_counter()
    subprocess.run(RUNNER + ["sudo", "-n", L, "start"], input=req, check=True, stdout=subprocess.DEVNULL)
    a = time.perf_counter()
    deadline = a + 30
    while not os.path.exists(f"{STATE}/{tid}.json"):
        if time.perf_counter() > deadline:
            raise SystemExit(f"no status record for {tid}")
        time.sleep(0.0005)  # polling with a deadline: the stage being timed
    out["runner: sudo -n launcher start"].append(a - t)
    out["start returned -> status record"].append(time.perf_counter() - a)
    subprocess.run([L, "cleanup", str(tid)], check=True, stdout=subprocess.DEVNULL)
print(json.dumps(out))
"""
"""Times each stage of a NULL task in the node (run as root there): see the module docstring."""


def journal_timeline(records: list[dict[str, Any]], task: dict[str, Any]) -> dict[str, float] | None:
    """One task's timeline from systemd's journal (`journalctl -o json` lines of
    its unit) beside the Host's timestamps: submit -> "Started" (systemd ran the
    unit's first process: the `exec` stage begins), "Started" -> "Deactivated"
    (the `exec` stage, the command and the poststop hook), and "Deactivated" ->
    the Host's `finished_at` (the runner seeing the record, its durable outbox,
    the report). Seconds; None when the journal lacks either message. Pure."""
    started = ended = None
    for rec in records:
        message = str(rec.get("MESSAGE", ""))
        when = int(rec.get("__REALTIME_TIMESTAMP", 0)) / 1e6
        if message.startswith("Started ") and started is None:
            started = when
        elif "Deactivated successfully" in message:
            ended = when
    if started is None or ended is None:
        return None
    return {
        "submit -> unit started": started - task["submitted_at"],
        "unit started -> unit deactivated": ended - started,
        "unit deactivated -> Host finished_at": task["finished_at"] - ended,
    }


STAGE_TASK_BASE = 900_000_000
"""Task ids the stage timer's own starts use (far above the bench's)."""


def measure(n: int) -> dict[str, Any]:
    """Boot a node, run `n` NULL tasks and `n` bare systemd-runs; return the timings (seconds)."""
    from tests.harness.engine import connect_engine
    from tests.harness.install import build_wheelhouse, ensure_node_py_image, install_hakuriver
    from tests.harness.node import NodeFactory
    from tests.images import ensure_images
    from tests.systemd.sdcluster import SdCluster

    client = connect_engine()
    images = ensure_images()
    wheelhouse = build_wheelhouse()
    image = ensure_node_py_image(client, images["node"], wheelhouse)
    factory = NodeFactory(client, "bench-systemd", images)
    try:
        node = factory("bench-sd", image=image)
        install_hakuriver(node, wheelhouse)
        cluster = SdCluster(node)
        cluster.setup()
        to_running: list[float] = []
        to_done: list[float] = []
        # One warm-up task (first Python start of the launcher, first unit).
        cluster.wait_final(cluster.submit(["true"]))
        tasks = []
        for _ in range(n):
            task = cluster.wait_final(cluster.submit(["true"]))
            assert task["state"] == "completed", task
            to_running.append(task["started_at"] - task["submitted_at"])
            to_done.append(task["finished_at"] - task["submitted_at"])
            tasks.append(task)
        timeline: dict[str, list[float]] = {}
        for task in tasks:
            unit = f"hakuriver-task-{task['task_id']}.service"
            lines = node.exec(["journalctl", "--no-pager", "-o", "json", "-u", unit], check=False).stdout
            records = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
            for stage, seconds in (journal_timeline(records, task) or {}).items():
                timeline.setdefault(stage, []).append(seconds)
        bare = json.loads(node.exec(["python3", "-c", BARE_TIMER, str(n)], timeout=600).stdout)
        stages = json.loads(node.exec(["python3", "-c", STAGE_TIMER, str(n), str(STAGE_TASK_BASE)], timeout=600).stdout)
        return {
            "to_running": to_running,
            "to_done": to_done,
            "bare_scope": bare["scope"],
            "bare_service": bare["service"],
            "stages": stages,
            "timeline": timeline,
        }
    finally:
        factory.cleanup()


if __name__ == "__main__":
    t0 = time.time()
    print(json.dumps(measure(5), indent=1), f"{time.time() - t0:.1f}s")
