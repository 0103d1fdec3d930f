"""Task dependencies end to end (`after`, `after_any`): the real Host and Runner.

The runners hold each task's end (`hold_end`) until the test releases it, so a
dependency is still running for as long as the test looks at its dependents.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest

from hakuriver.cli import task as task_cli
from hakuriver.client import ApiError
from hakuriver.policy import MAX_DEPENDENCIES

from .cluster import InProcCluster, ThreadedCluster


async def test_a_chain_runs_in_order(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    a = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(a, "running")
    b = await inproc.submit(["fake", "exit", "0"], after=[a])
    c = await inproc.submit(["fake", "exit", "0"], after=[b])
    task_b = await inproc.client.get_task(b)
    assert (task_b["state"], task_b["after"], task_b["waiting_for"]) == ("pending", [a], [a])
    assert (await inproc.client.get_task(c))["waiting_for"] == [b]
    assert await inproc.still_pending(b) and await inproc.still_pending(c)
    for earlier, later in ((a, b), (b, c)):
        runner.docker.release_end(earlier)
        await inproc.wait_state(later, "running")
        assert await inproc.still_pending(c) or later == c
    runner.docker.release_end(c)
    tasks = (await inproc.client.wait([a, b, c], timeout=20))["tasks"]
    assert [t["state"] for t in tasks] == ["completed"] * 3
    assert [t["waiting_for"] for t in tasks] == [[], [], []]
    assert list(runner.docker.specs) == [int(a), int(b), int(c)]
    ta, tb, tc = tasks
    assert ta["finished_at"] <= tb["started_at"] and tb["finished_at"] <= tc["started_at"]


async def test_a_failure_cancels_the_chain_and_after_any_runs(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    a = await inproc.submit(["fake", "exit", "3"])
    await inproc.wait_state(a, "running")
    b = await inproc.submit(["fake", "exit", "0"], after=[a])
    c = await inproc.submit(["fake", "exit", "0"], after=[b])
    d = await inproc.submit(["fake", "exit", "0"], after_any=[a])
    e = await inproc.submit(["fake", "exit", "0"], after=[b], after_any=[a])
    runner.docker.release_end(a)
    tasks = {t["task_id"]: t for t in (await inproc.client.wait([a, b, c, e], timeout=20))["tasks"]}
    assert tasks[a]["state"] == "failed"
    assert (tasks[b]["state"], tasks[b]["error"]) == ("cancelled", f"dependency {a} ended failed")
    assert (tasks[c]["state"], tasks[c]["error"]) == ("cancelled", f"dependency {b} ended cancelled")
    assert (tasks[e]["state"], tasks[e]["error"]) == ("cancelled", f"dependency {b} ended cancelled")
    assert tasks[b]["started_at"] is None and tasks[b]["node"] is None
    await inproc.wait_state(d, "running")
    runner.docker.release_end(d)
    assert (await inproc.client.wait([d], timeout=20))["tasks"][0]["state"] == "completed"
    assert int(b) not in runner.docker.specs and int(c) not in runner.docker.specs
    listed = await inproc.client.list_tasks(state="cancelled")
    assert sorted(t["task_id"] for t in listed["tasks"]) == sorted([b, c, e])


async def test_after_a_task_that_already_failed_is_cancelled_at_submit(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    a = await inproc.submit(["fake", "exit", "1"])
    await inproc.wait_state(a, "failed")
    reply = await inproc.client.submit(["true"], after=[a])
    [task] = reply["tasks"]
    assert (task["state"], task["error"], task["after"]) == ("cancelled", f"dependency {a} ended failed", [a])
    later = await inproc.submit(["true"], after_any=[a])
    assert (await inproc.wait_state(later, "completed"))["after_any"] == [a]


async def test_unknown_and_bad_dependencies_are_refused_at_submit(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    known = await inproc.submit(["true"])
    with pytest.raises(ApiError) as refused:
        await inproc.client.submit(["true"], after=[known, "123", "456"])
    assert refused.value.status == 404
    assert "123" in str(refused.value) and "456" in str(refused.value) and known not in str(refused.value)
    with pytest.raises(ApiError) as unknown_any:
        await inproc.client.submit(["true"], after_any=["789"])
    assert unknown_any.value.status == 404 and "789" in str(unknown_any.value)
    too_many = [str(i) for i in range(1, MAX_DEPENDENCIES + 2)]
    for body in ({"after": ["abc"]}, {"after": "123"}, {"after_any": [0]}, {"after": too_many}):
        with pytest.raises(ApiError) as bad:
            await inproc.client._json("POST", "/api/tasks", body={"command": ["true"], **body})
        assert bad.value.status == 400, body
    tasks = (await inproc.client.list_tasks())["tasks"]
    assert [t["task_id"] for t in tasks] == [known]  # nothing else was created


async def test_a_waiting_task_does_not_hold_back_the_queue(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    cores = (await inproc.client.node("n1"))["cores"]
    if cores < 2:
        pytest.skip("needs a runner with 2 cores")
    a = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(a, "running")
    # Older than c and needing the whole node: were it in the queue, it would
    # be the blocked head, and backfill would keep c off the node for it.
    big = await inproc.submit(["fake", "exit", "0"], cores=cores, after=[a])
    c = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(c, "running")
    assert await inproc.still_pending(big)
    runner.docker.release_end(a)
    runner.docker.release_end(c)
    await inproc.wait_state(big, "running")
    runner.docker.release_end(big)
    await inproc.wait_state(big, "completed")


async def test_killing_a_waiting_task_cancels_its_dependents(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    a = await inproc.submit(["fake", "exit", "0"])
    b = await inproc.submit(["fake", "exit", "0"], after=[a])
    c = await inproc.submit(["fake", "exit", "0"], after=[b])
    assert (await inproc.client.kill(b))["state"] == "killed"
    task_c = await inproc.wait_state(c, "cancelled")
    assert task_c["error"] == f"dependency {b} ended killed"
    runner.docker.release_end(a)
    await inproc.wait_state(a, "completed")
    assert int(b) not in runner.docker.specs


async def test_dependents_submitted_while_their_dependency_is_killed_are_all_cancelled(
    inproc: InProcCluster,
) -> None:
    """The Host reads no stored state for a dependency it holds pending; one
    killed while its dependents are being submitted must still settle each of
    them, whichever side of the kill their submit lands on."""
    runner = await inproc.add_runner("n1", hold_end=True)
    x = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(x, "running")
    a = await inproc.submit(["fake", "exit", "0"], after=[x])  # pending while x runs
    submits = [inproc.submit(["fake", "exit", "0"], after=[a]) for _ in range(30)]
    results = await asyncio.gather(inproc.client.kill(a), *submits)
    assert results[0]["state"] == "killed"
    later = [await inproc.submit(["fake", "exit", "0"], after=[a]) for _ in range(3)]  # a is read from the store
    for dependent in [*results[1:], *later]:
        task = await inproc.wait_state(dependent, "cancelled")
        assert task["error"] == f"dependency {a} ended killed"
    runner.docker.release_end(x)
    await inproc.wait_state(x, "completed")


async def test_dependencies_survive_a_host_restart(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    a = await inproc.submit(["fake", "exit", "0"])
    await inproc.wait_state(a, "running")
    b = await inproc.submit(["fake", "exit", "0"], after=[a])
    await inproc.stop_host()
    await inproc.start_host()
    await inproc.wait_node("n1", online=True)
    task_b = await inproc.client.get_task(b)
    assert (task_b["state"], task_b["waiting_for"]) == ("pending", [a])
    assert await inproc.still_pending(b)
    runner.docker.release_end(a)
    await inproc.wait_state(b, "running")
    runner.docker.release_end(b)
    await inproc.wait_state(b, "completed")


async def test_a_restart_settles_a_dependency_that_ended_unsettled(inproc: InProcCluster) -> None:
    """A Host that stopped between a task's end and its dependents' update (a
    crash) settles them when it starts again."""
    runner = await inproc.add_runner("n1", hold_end=True)
    a = await inproc.submit(["fake", "hang"])
    await inproc.wait_state(a, "running")
    b = await inproc.submit(["true"], after=[a])
    c = await inproc.submit(["true"], after_any=[a])
    await inproc.stop_host()
    await runner.stop()
    with sqlite3.connect(inproc.db_file) as db:  # a's end was written, nothing else
        db.execute("UPDATE tasks SET state='failed', exit_code=1 WHERE id=?", (int(a),))
    await inproc.start_host()
    task_b = await inproc.wait_state(b, "cancelled")
    assert task_b["error"] == f"dependency {a} ended failed"
    assert (await inproc.client.get_task(c))["waiting_for"] == []


def test_the_cli_submits_with_after_and_shows_it(
    cluster: ThreadedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tmp_path / "client.toml"
    port = cluster.url.rsplit(":", 1)[1]
    config.write_text(
        f'[network]\nhost_reachable_address = "127.0.0.1"\nhost_port = {port}\n[auth]\ntoken = "{cluster.token}"\n'
    )
    runner = cluster.add_runner("n1", hold_end=True)

    def cli(*argv: str) -> tuple[int, str, str]:
        code = task_cli.main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("submit", "--", "fake", "exit", "3")
    assert code == 0
    a = out.strip()
    code, out, _ = cli("submit", "--after", a, "--", "true")
    assert code == 0
    b = out.strip()
    code, out, _ = cli("status", b)
    assert code == 0
    assert re.search(r"^state\s+pending$", out, re.M), out
    assert re.search(rf"^after\s+{a}$", out, re.M) and re.search(rf"^waits for\s+{a}$", out, re.M), out

    cluster._loop.call_soon_threadsafe(runner.docker.release_end, int(a))
    code, out, _ = cli("wait", b, "--timeout", "20")
    assert code == 1  # cancelled is a failure
    assert "cancelled" in out and f"dependency {a} ended failed" in out
    code, out, _ = cli("list", "--state", "cancelled")
    assert code == 0 and b in out and "cancelled" in out

    code, out, _ = cli("submit", "--after-any", f"{a},{a}", "--", "true")
    assert code == 0
    d = out.strip()
    cluster._loop.call_soon_threadsafe(runner.docker.release_end, int(d))
    code, out, _ = cli("wait", d, "--timeout", "20")
    assert code == 0 and "completed" in out, out

    code, out, err = cli("submit", "--after", f"{a},999", "--", "true")
    assert code != 0 and out == ""
    assert err.startswith("hakuriver.task: error: ") and "999" in err and len(err.splitlines()) == 1
    code, _, err = cli("submit", "--after", "x1", "--", "true")
    assert code == 2 and "Traceback" not in err and "--after" in err
