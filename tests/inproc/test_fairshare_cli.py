"""Priority and fair share on a real Host (in its own thread), through the CLIs'
main(): the lighter user's task is placed before the heavier user's earlier
one; a user may lower a priority but not raise it; an admin may."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import toml

from hakuriver.cli import admin as admin_cli
from hakuriver.cli import task as task_cli
from tests.harness.polling import poll

from .cluster import ThreadedCluster


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    """A Host whose fair share forgets slowly (a half-life of a day)."""
    c = ThreadedCluster(
        tmp_path_factory.mktemp("inproc"), config_overrides={"scheduler": {"fairshare_half_life": "1d"}}
    )
    try:
        c.start_host()
        yield c
    finally:
        c.close()


pytestmark = pytest.mark.usefixtures("cli_env")


def _config(tmp_path: Path, cluster: ThreadedCluster, token: str, name: str) -> Path:
    path = tmp_path / f"{name}.toml"
    data = {"network": {"host_port": int(cluster.url.rsplit(":", 1)[1])}, "auth": {"token": token}}
    path.write_text(toml.dumps(data))
    return path


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_the_lighter_user_goes_first_and_only_an_admin_raises_a_priority(
    cluster: ThreadedCluster, tmp_path: Path, capsys
) -> None:
    admin = _config(tmp_path, cluster, cluster.token, "admin")
    users = {}
    for name in ("heavy", "light"):
        assert admin_cli.main(["--config", str(admin), "user", "add", name, "--json"]) == 0
        users[name] = _config(tmp_path, cluster, json.loads(capsys.readouterr().out)["token"], name)

    def task(who: str, *argv: str) -> tuple[int, str, str]:
        code = task_cli.main(["--config", str(users[who] if who in users else admin), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    def submit(who: str, *flags: str) -> str:
        code, out, err = task(who, "submit", "--cores", str(cores), *flags, "--", "fake", "hang")
        assert code == 0, err
        return out.strip()

    cluster.add_runner("a")
    cores = cluster.node("a")["cores"]

    # heavy uses the whole node for a while: their decayed usage grows.
    first = submit("heavy")
    cluster.wait_state(first, "running")

    def usage_of(name: str) -> float:
        status, body = cluster.api("GET", "/api/fairshare")
        assert status == 200, body
        return next((u["usage_core_hours"] for u in body["users"] if u["name"] == name), 0.0)

    poll(lambda: usage_of("heavy") >= 0.001, timeout=30, what="heavy's usage to reach 0.001 core-hours")

    # heavy's next task is submitted before light's; both wait for the node.
    heavy_next = submit("heavy")
    light_next = submit("light")
    poll(
        lambda: cluster.task(light_next)["position"] == 1 and cluster.task(heavy_next)["position"] == 2,
        timeout=20,
        what="light's task to be first in the queue",
    )
    code, out, _ = task("admin", "list", "--state", "pending")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["ID", "POS", "PRI", "USER", "USAGE"]
    cells = [row.split()[:5] for row in rows]
    assert [c[:4] for c in cells] == [[light_next, "1", "0", "light"], [heavy_next, "2", "0", "heavy"]]
    assert float(cells[0][4]) < float(cells[1][4])  # the reason: light used less recently
    assert rows[1].endswith("(fair share: 1 later ahead)") and "fair share" not in rows[0]
    # Any user sees that fair share put a later task ahead, not the others' usage.
    code, out, _ = task("heavy", "list", "--state", "pending")
    assert [row.split()[4] for row in out.splitlines()[1:]] == ["-", cells[1][4]]
    code, out, _ = task("light", "status", heavy_next)
    assert "fair share  1 later task(s) of lighter users ahead" in out

    # A user may lower their own task's priority, never raise it; nor submit above 0.
    code, _, err = task("heavy", "priority", heavy_next, "5")
    assert code == 1 and "only an admin may raise a task's priority above 0" in one_error_line(err)
    code, _, err = task("heavy", "submit", "--priority", "1", "--", "fake", "exit", "0")
    assert code == 1 and "only an admin may raise" in one_error_line(err)
    code, _, err = task("heavy", "priority", heavy_next, "2000")
    assert code == 2 and "between -1000 and 1000" in one_error_line(err)
    code, _, err = task("light", "priority", heavy_next, "-1")
    assert code == 1 and "only your own" in one_error_line(err)
    code, out, _ = task("heavy", "priority", heavy_next, "-1")
    assert code == 0 and out.split()[:3] == [heavy_next, "priority", "-1"]
    assert cluster.task(heavy_next)["priority"] == -1

    # The node frees: light's task (lighter user) starts, heavy's waits.
    assert task("heavy", "kill", first)[0] == 0
    cluster.wait_state(light_next, "running")
    assert cluster.task(heavy_next)["state"] == "pending"

    # An admin raises heavy's task above light's next one: it goes first now.
    light_third = submit("light")
    code, out, _ = task("admin", "priority", heavy_next, "10")
    assert code == 0 and out.split()[:3] == [heavy_next, "priority", "10"]
    poll(lambda: cluster.task(heavy_next)["position"] == 1, timeout=20, what="heavy's raised task to lead")
    assert task("light", "kill", light_next)[0] == 0
    cluster.wait_state(heavy_next, "running")
    assert cluster.task(light_third)["state"] == "pending"

    # A running task's priority is no longer changed.
    code, _, err = task("admin", "priority", heavy_next, "0")
    assert code == 1 and "only a pending task's priority can change" in one_error_line(err)

    # Each user sees only their own fair-share row; an admin sees both.
    assert admin_cli.main(["--config", str(users["light"]), "fairshare", "--json"]) == 0
    mine = json.loads(capsys.readouterr().out)
    assert [u["name"] for u in mine["users"]] == ["light"]
    assert admin_cli.main(["--config", str(admin), "fairshare"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("half-life 1d")
    assert [line.split()[0] for line in out.splitlines()[2:]] == ["light", "heavy"]

    # Bad input: 4xx with a JSON reason; the stored priority is unchanged.
    path = f"/api/tasks/{light_third}/priority"
    for body, status, needle in [
        ({"priority": "high"}, 400, "must be an integer"),
        ({"priority": 1.5}, 400, "must be an integer"),
        ({"priority": -1001}, 400, "between -1000 and 1000"),
        ({}, 400, "'priority' is required"),
        ({"priority": 1, "nice": 1}, 400, "nice"),
        ([1], 400, "object"),
    ]:
        got, reply = cluster.api("POST", path, body)
        assert got == status and needle in reply["error"]["message"], (body, reply)
    got, reply = cluster.api("POST", "/api/tasks/99999999/priority", {"priority": 0})
    assert got == 404 and reply["error"]["code"] == "not_found"
    got, reply = cluster.api("POST", "/api/tasks", {"command": ["true"], "priority": True})
    assert got == 400 and "must be an integer" in reply["error"]["message"]
    assert cluster.task(light_third)["priority"] == 0

    for t in (heavy_next, light_third):
        task("admin", "kill", t)


def test_a_batch_id_changes_the_priority_of_every_pending_task_of_the_batch(
    cluster: ThreadedCluster, tmp_path: Path, capsys
) -> None:
    admin = _config(tmp_path, cluster, cluster.token, "admin")
    assert admin_cli.main(["--config", str(admin), "user", "add", "alice", "--json"]) == 0
    alice = _config(tmp_path, cluster, json.loads(capsys.readouterr().out)["token"], "alice")
    assert admin_cli.main(["--config", str(admin), "user", "add", "bob", "--json"]) == 0
    bob = _config(tmp_path, cluster, json.loads(capsys.readouterr().out)["token"], "bob")

    def task(config: Path, *argv: str) -> tuple[int, str, str]:
        code = task_cli.main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    cluster.add_runner("a")
    cores = cluster.node("a")["cores"]
    code, out, err = task(alice, "submit", "--json", "--cores", str(cores), "--array", "0-3", "--", "fake", "hang")
    assert code == 0, err
    batch, ids = json.loads(out)["batch_id"], json.loads(out)["task_ids"]
    first = poll(
        lambda: next((i for i in ids if cluster.task(i)["state"] == "running"), None), timeout=20, what="one to run"
    )
    pending = [i for i in ids if i != first]

    # Its owner lowers the whole batch: the pending ones change, the running one keeps its priority.
    code, out, err = task(alice, "priority", batch, "-5")
    assert code == 0, err
    assert out.strip() == f"batch {batch}  priority -5: 3 pending task(s) changed, 1 not pending left as they are"
    assert [cluster.task(i)["priority"] for i in pending] == [-5, -5, -5]
    assert cluster.task(first)["priority"] == 0

    # Raising it above what the tasks have is an admin's; anyone else's task is not theirs to touch.
    code, _, err = task(alice, "priority", batch, "1")
    assert code == 1 and "only an admin may raise" in one_error_line(err)
    code, _, err = task(bob, "priority", batch, "-10")
    assert code == 1 and "change the priority of tasks" in one_error_line(err), err
    assert [cluster.task(i)["priority"] for i in pending] == [-5, -5, -5]  # nothing changed
    code, out, err = task(admin, "priority", batch, "10", "--json")
    assert code == 0, err
    reply = json.loads(out)
    assert sorted(reply["changed"]) == sorted(pending) and reply["unchanged"] == [first]
    assert [cluster.task(i)["priority"] for i in pending] == [10, 10, 10]

    # An id that is neither a task nor a batch: the task's 404, in one line.
    code, _, err = task(alice, "priority", "99999999", "1")
    assert code == 1 and "99999999" in one_error_line(err)
    status, body = cluster.api("POST", f"/api/batches/{batch}/priority", {"priority": "high"})
    assert status == 400 and "must be an integer" in body["error"]["message"]
