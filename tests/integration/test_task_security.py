"""Task isolation on a real Host, a real Runner and real Docker.

Each test is written from a class of attack, not from one reproduction:
- who a Docker task runs as (its submitter's uid, nobody, never the image's
  user) and that a setuid binary gives it nothing (audit C2/H1 background,
  L4);
- whatever a task plants at its own or another task's log paths (symbolic
  links, hard links, FIFOs, device nodes) is never followed by the runner
  nor served by the Host, nothing blocks, other tasks keep running (C2, H1,
  M2);
- a mount source that resolves outside the allowed prefixes is refused by
  the runner, even when the order comes straight to it with its order token
  (H2, C1);
- an order that breaks the node's policy is refused by the runner itself,
  whoever sends it (C1).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver.config import read_config_file
from hakuriver.runner.app import state_path
from tests.harness.engine import harness_labels

from .cluster import TEST_ENV, LocalCluster, wait_until
from .conftest import ENV_IMAGE
from .test_docker_tasks import waiting_task

pytestmark = pytest.mark.docker

SECRET = "secret-only-root-may-read\n"
FINAL = {"completed", "failed", "killed", "killed_oom", "lost"}


# ---------------------------------------------------------------- helpers
def order_token(cluster: LocalCluster, name: str) -> str:
    """The token the runner accepts orders with, from its own state store."""
    db = Path(state_path(read_config_file(cluster.runners[name].config_path)))
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        (token,) = conn.execute("SELECT value FROM identity WHERE name = 'order_token'").fetchone()
    return str(token)


def runner_call(cluster: LocalCluster, name: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """Call the runner directly, with the credential only the Host should hold."""
    port = cluster.runners[name].port
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    req.add_header("Authorization", f"Bearer {order_token(cluster, name)}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def direct_order(**fields: Any) -> dict[str, Any]:
    return {
        "task_id": str(secrets.randbits(60) | 1),
        "command": ["true"],
        "container": TEST_ENV,
        "cores": 1,
        **fields,
    }


def logs(cluster: LocalCluster, task_id: str, stream: str = "stdout", token: str | None = None) -> tuple[int, Any]:
    """The Host's log endpoint; the 10 s client timeout fails the test if it blocks."""
    t0 = time.monotonic()
    status, body = cluster.api("GET", f"/api/tasks/{task_id}/logs?stream={stream}", token=token, timeout=10)
    assert time.monotonic() - t0 < 8, "the log endpoint blocked"
    return status, body


def no_task_container(docker_client: Any, task_id: str) -> bool:
    return docker_client.api.containers(all=True, filters={"name": f"hakuriver-task-{task_id}"}) == []


@pytest.fixture
def unix_account() -> Iterator[dict[str, Any]]:
    """A real account on this machine (the runner's node), with a supplementary group; removed after."""
    if os.geteuid() != 0:
        pytest.skip("creating a Unix account needs root")
    name = f"hkr{secrets.token_hex(3)}"
    group = f"{name}g"
    subprocess.run(["groupadd", group], check=True)
    try:
        subprocess.run(["useradd", "-M", "-U", "-G", group, "-s", "/bin/sh", name], check=True)
        try:
            import grp
            import pwd

            pw = pwd.getpwnam(name)
            yield {"name": name, "uid": pw.pw_uid, "gid": pw.pw_gid, "group": grp.getgrnam(group).gr_gid}
        finally:
            subprocess.run(["userdel", name], check=False)
    finally:
        subprocess.run(["groupdel", group], check=False)


def add_user(cluster: LocalCluster, name: str, unix_user: str | None = None) -> str:
    body: dict[str, Any] = {"name": name}
    if unix_user is not None:
        body["unix_user"] = unix_user
    status, reply = cluster.api("POST", "/api/users", body)  # the cluster token is the admin's
    assert status == 201, reply
    return str(reply["token"])


def submit_as(cluster: LocalCluster, token: str, command: list[str], **fields: Any) -> list[str]:
    status, body = cluster.api("POST", "/api/tasks", {"command": command, **fields}, token=token)
    assert status == 201, body
    return list(body["task_ids"])


IDENTITY_SCRIPT = """
import json, os, sys
path = f"/shared/written-{os.environ['HAKURIVER_TASK_ID']}.txt"
open(path, 'w').write('mine')
home = os.environ.get('HOME', '')
open(os.path.join(home, 'dotfile'), 'w').write('ok')  # HOME is writable
status = dict(line.split(':\\t', 1) for line in open('/proc/self/status').read().splitlines() if ':\\t' in line)
print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
                  'home': home, 'cwd': os.getcwd(), 'nnp': status.get('NoNewPrivs', '').strip()}))
"""


# ------------------------------------------------------------------ tests
def test_a_docker_task_runs_as_its_submitter_and_its_files_are_theirs(
    cluster: LocalCluster, node_name: str, unix_account: dict[str, Any]
) -> None:
    cluster.add_runner(node_name)
    token = add_user(cluster, f"u-{unix_account['name']}", unix_account["name"])
    [task_id] = submit_as(cluster, token, ["python3", "-c", IDENTITY_SCRIPT])
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed", (task, cluster.stderr(task_id))
    seen = json.loads(cluster.stdout(task_id))
    assert (seen["uid"], seen["euid"], seen["gid"]) == (unix_account["uid"],) * 2 + (unix_account["gid"],)
    assert unix_account["group"] in seen["groups"], seen
    assert seen["nnp"] == "1" and seen["cwd"] == "/shared"
    assert seen["home"] == "/tmp", seen  # the account has no home in the image: a writable one instead
    written = os.stat(cluster.shared / f"written-{task_id}.txt")
    assert (written.st_uid, written.st_gid) == (unix_account["uid"], unix_account["gid"])
    # The logs are the runner's: not the task's to change, and not world-readable.
    for log_dir, name in (("task_outputs", f"{task_id}.out"), ("task_errors", f"{task_id}.err")):
        d = os.stat(cluster.shared / log_dir)
        assert d.st_uid == os.geteuid() and stat.S_IMODE(d.st_mode) == 0o755
        f = os.lstat(cluster.shared / log_dir / name)
        assert stat.S_ISREG(f.st_mode) and f.st_uid == os.geteuid() and stat.S_IMODE(f.st_mode) & 0o007 == 0
    # Secrets at rest: the Host's DB (and WAL) and the runner's store are the service's alone.
    for path in (cluster.db_file, Path(f"{cluster.db_file}-wal"), cluster.root / ".hakuriver" / "state"):
        if path.exists():
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path

    # An account this node does not have: refused with the reason, never run as someone else.
    ghost = add_user(cluster, "ghost-user", "hkr-no-such-acct")
    [task_id] = submit_as(cluster, ghost, ["true"])
    task = cluster.wait_final(task_id)
    assert task["state"] == "failed" and "does not exist on this node" in (task["error"] or ""), task


def test_a_user_without_account_runs_as_nobody_and_setuid_gives_nothing(
    cluster: LocalCluster, node_name: str, docker_client: Any, request: pytest.FixtureRequest
) -> None:
    cluster.add_runner(node_name)
    labels = harness_labels(request.node.nodeid)
    # A setuid-root copy of `id` where tasks can run it; as a control, a container
    # *without* no-new-privileges shows that it would make its caller root.
    docker_client.containers.run(
        ENV_IMAGE,
        ["sh", "-c", "cp /usr/bin/id /m/suid-id && chown 0:0 /m/suid-id && chmod 4755 /m/suid-id"],
        volumes={str(cluster.shared): {"bind": "/m", "mode": "rw"}},
        user="0:0",
        labels=labels,
        remove=True,
    )
    control = docker_client.containers.run(
        ENV_IMAGE,
        ["/m/suid-id", "-u"],
        volumes={str(cluster.shared): {"bind": "/m"}},
        user="65534:65534",
        labels=labels,
        remove=True,
    )
    assert control.strip() == b"0", "the control should escalate; the test proves nothing otherwise"
    # The cluster token is the admin's, and the admin has no unix_user here.
    script = "id -u; id -g; /shared/suid-id -u; grep '^NoNewPrivs' /proc/self/status; echo x > /shared/by-nobody"
    [task_id] = cluster.submit(["sh", "-c", script])
    task = cluster.wait_final(task_id)
    assert task["state"] == "completed", (task, cluster.stderr(task_id))
    lines = cluster.stdout(task_id).split("\n")
    assert lines[:3] == ["65534", "65534", "65534"], lines
    assert lines[3].split() == ["NoNewPrivs:", "1"]
    assert os.stat(cluster.shared / "by-nobody").st_uid == 65534


PLANTER = r"""
set -e
me=$HAKURIVER_TASK_ID
if [ -f /shared/plan-of-$me ]; then
    echo "own output of $me"; echo "own error of $me" >&2; exit 0
fi
echo "before the plant"
while [ ! -f /shared/plan-$me ]; do sleep 0.1; done
read n1 n2 < /shared/plan-$me
O=/shared/task_outputs; E=/shared/task_errors
# The next tasks' logs: a link to a file outside the shared dir, a hard link to a
# root-only file, FIFOs and a device node.
ln -s "$OUTSIDE" $O/$n1.out
ln /shared/victim.txt $E/$n1.err
mkfifo $O/$n2.out
mknod $E/$n2.err c 1 3 || mkfifo $E/$n2.err
# Its own logs, while the runner writes them.
rm -f $O/$me.out; ln -s "$OUTSIDE" $O/$me.out
rm -f $E/$me.err; mkfifo $E/$me.err
touch /shared/planted-$me
while [ ! -f /shared/release-$me ]; do sleep 0.1; done
echo "after the plant"
"""


def test_planted_log_paths_are_not_followed_served_or_blocking(
    cluster_factory: Any, node_name: str, tmp_path: Path
) -> None:
    # Root in the container (an admin's choice) is the worst case: such a task can
    # write into the log directories themselves.
    cluster = cluster_factory(docker_overrides={"task_user": "root"})
    cluster.add_runner(node_name)
    outside = cluster.root / "outside-victim.txt"
    outside.write_text(SECRET)
    outside.chmod(0o600)
    inside = cluster.shared / "victim.txt"
    inside.write_text(SECRET)
    inside.chmod(0o600)
    cores = cluster.node(node_name)["cores"]
    assert cores >= 2, "needs a bystander core"
    argv, bystander_release = waiting_task(cluster, "bystander")
    [bystander] = cluster.submit(argv, cores=1, targets=[node_name])
    cluster.wait_state(bystander, "running")

    # One at a time beside the bystander: the planter runs first, the others after it.
    ids = cluster.submit(["sh", "-c", PLANTER], cores=cores - 1, targets=[node_name] * 3, env={"OUTSIDE": str(outside)})
    attacker, n1, n2 = ids
    for victim_task in (n1, n2):
        (cluster.shared / f"plan-of-{victim_task}").write_text("")
    # Once the runner writes the planter's log, it plants (before, the runner's
    # first open would simply replace what it found).
    wait_until(lambda: logs(cluster, attacker) == (200, b"before the plant\n"), what="the planter's first output")
    (cluster.shared / f"plan-{attacker}").write_text(f"{n1} {n2}\n")
    wait_until(lambda: (cluster.shared / f"planted-{attacker}").exists(), timeout=60, what="the plant")
    assert {cluster.task(n)["state"] for n in (n1, n2)} == {"pending"}

    # The Host serves none of it, and never blocks: own logs swapped, next tasks' squatted.
    for task_id, stream in ((attacker, "stdout"), (attacker, "stderr"), (n1, "stdout"), (n1, "stderr")) + (
        (n2, "stdout"),
        (n2, "stderr"),
    ):
        status, body = logs(cluster, task_id, stream)
        assert status == 409 and body["error"]["code"] == "unsafe_file", (task_id, stream, status, body)
        assert SECRET.strip() not in json.dumps(body)

    # A runner restart re-opens the logs: it must not append through the swapped link.
    cluster.restart_runner(node_name)
    cluster.wait_node(node_name, online=True)
    (cluster.shared / f"release-{attacker}").touch()
    for task_id in ids:
        task = cluster.wait_final(task_id)
        assert task["state"] == "completed", (task, cluster.debug_logs())

    assert outside.read_text() == SECRET and stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert inside.read_text() == SECRET and os.stat(inside).st_nlink == 1
    # Each next task got fresh logs of its own, served by the Host.
    for task_id in (n1, n2):
        assert logs(cluster, task_id) == (200, f"own output of {task_id}\n".encode())
        assert logs(cluster, task_id, "stderr") == (200, f"own error of {task_id}\n".encode())
        for path in (
            cluster.shared / "task_outputs" / f"{task_id}.out",
            cluster.shared / "task_errors" / f"{task_id}.err",
        ):
            st = os.lstat(path)
            assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == os.geteuid()
    # The planter's own stdout was replaced by a fresh, complete file after the restart.
    status, body = logs(cluster, attacker)
    assert status == 200 and body == b"before the plant\nafter the plant\n", (status, body)

    # The bystander ran on throughout.
    assert cluster.task(bystander)["state"] == "running"
    bystander_release.touch()
    assert cluster.wait_final(bystander)["state"] == "completed"
    assert cluster.stdout(bystander) == "released\n"


def test_a_mount_that_resolves_outside_the_prefixes_is_refused_by_the_runner(
    cluster: LocalCluster, node_name: str, docker_client: Any
) -> None:
    cluster.add_runner(node_name)
    allowed = cluster.root / "mountable"
    (allowed / "real").mkdir(parents=True)
    (allowed / "real" / "data.txt").write_text("allowed data")
    (allowed / "escape").symlink_to("/")
    (allowed / "nested").mkdir()
    (allowed / "nested" / "up").symlink_to("../..")
    (allowed / "inside").symlink_to(allowed / "real")
    # Through the Host: the text is under the prefix, so the Host accepts; the runner,
    # which resolves it where it runs, refuses, and the task fails with its reason.
    for source in (allowed / "escape", allowed / "nested" / "up"):
        [task_id] = cluster.submit(["cat", "/host/etc/hostname"], mounts=[f"{source}:/host:ro"])
        task = cluster.wait_final(task_id)
        assert task["state"] == "failed" and "resolves to" in (task["error"] or ""), task
        assert cluster.stdout(task_id) == "" and no_task_container(docker_client, task_id)
    # Straight to the runner with its order token: refused just the same, nothing created.
    order = direct_order(command=["cat", "/host/etc/shadow"], mounts=[f"{allowed}/escape/etc:/host:ro"])
    status, body = runner_call(cluster, node_name, "POST", "/api/tasks", order)
    assert status == 403 and "resolves to /etc" in body["error"]["message"], body
    assert no_task_container(docker_client, order["task_id"])
    # A link that stays inside the prefix works.
    [task_id] = cluster.submit(["cat", "/data/data.txt"], mounts=[f"{allowed / 'inside'}:/data:ro"])
    assert cluster.wait_final(task_id)["state"] == "completed"
    assert cluster.stdout(task_id) == "allowed data"


BYPASSES = [
    ({"privileged": True}, 403, "privileged tasks are not allowed"),
    ({"mounts": ["/:/host"]}, 403, "not allowed by policy"),
    ({"mounts": ["/etc:/data:ro"]}, 403, "not allowed by policy"),
    ({"command": ["true"] * 10_000}, 400, "10000 arguments"),
    # Refused by the JSON decoder itself, before any field is read.
    ({"cores": 10**30}, 400, "outside the signed 64-bit range"),
    ({"cores": 2**62}, 400, "core count"),
    ({"cores": 4096}, 400, "this node has"),
    ({"memory": 1 << 60}, 400, "larger than"),
    ({"env": {"HAKURIVER_SHARED_DIR": "/"}}, 400, "reserved"),
]


def test_the_runner_refuses_orders_that_break_its_policy_even_with_its_token(
    cluster: LocalCluster, node_name: str, docker_client: Any
) -> None:
    cluster.add_runner(node_name)
    for fields, status, words in BYPASSES:
        order = direct_order(**fields)
        got, body = runner_call(cluster, node_name, "POST", "/api/tasks", order)
        assert got == status and words in body["error"]["message"], (fields, got, body)
        assert body["error"]["code"] in ("forbidden", "invalid")
        assert no_task_container(docker_client, order["task_id"])
    got, listing = runner_call(cluster, node_name, "GET", "/api/tasks")
    assert got == 200 and listing == {"tasks": [], "holding": []}
    # Lawful work still runs.
    [task_id] = cluster.submit(["sh", "-c", "echo lawful"])
    assert cluster.wait_final(task_id)["state"] == "completed"
    assert cluster.stdout(task_id) == "lawful\n"
