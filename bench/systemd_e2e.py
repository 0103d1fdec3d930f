"""End-to-end latency of `--container NULL` tasks, inside one real systemd node.

A Host (root) and an unprivileged Runner run in a node booted from the test
harness's systemd image, with the task launcher and sudoers rule installed from
the package (the same setting as tests/systemd). No-op tasks (`true`) go one
after another; beside them, in the same node, the bare `systemd-run --scope true`
that the original guide used and `systemd-run --wait true` (a transient service,
which is what HakuRiver starts), timed inside the node so no `docker exec`
overhead counts.
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
        for _ in range(n):
            task = cluster.wait_final(cluster.submit(["true"]))
            assert task["state"] == "completed", task
            to_running.append(task["started_at"] - task["submitted_at"])
            to_done.append(task["finished_at"] - task["submitted_at"])
        bare = json.loads(node.exec(["python3", "-c", BARE_TIMER, str(n)], timeout=600).stdout)
        return {
            "to_running": to_running,
            "to_done": to_done,
            "bare_scope": bare["scope"],
            "bare_service": bare["service"],
        }
    finally:
        factory.cleanup()


if __name__ == "__main__":
    t0 = time.time()
    print(json.dumps(measure(5), indent=1), f"{time.time() - t0:.1f}s")
