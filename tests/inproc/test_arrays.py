"""Arrays end to end (`--array 0-5%2`): the real Host and Runner apps, a fake
backend whose tasks end only when the test lets them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import pytest

from hakuriver import naming
from hakuriver.cli import task as task_cli
from hakuriver.client import ApiError
from tests.harness.polling import apoll

from .cluster import InProcCluster, ThreadedCluster

HOLDING = {"assigning", "running", "paused"}


async def test_an_array_runs_at_most_n_at_once_each_with_its_index(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1", hold_end=True)
    reply = await inproc.client.submit(["fake", "exit", "0"], array="0-5%2")
    batch, ids = reply["batch_id"], reply["task_ids"]
    assert len(ids) == 6 and batch not in ids
    assert [t["array_index"] for t in reply["tasks"]] == [0, 1, 2, 3, 4, 5]
    assert {t["array_max_running"] for t in reply["tasks"]} == {2}
    most = 0

    async def holding(want: int) -> list[dict] | None:
        nonlocal most
        tasks = (await inproc.client.list_tasks(batch=batch))["tasks"]
        assert sorted(t["task_id"] for t in tasks) == sorted(ids)
        held = [t for t in tasks if t["state"] in HOLDING]
        most = max(most, len(held))
        running = [t for t in held if t["state"] == "running"]
        return sorted(running, key=lambda t: int(t["task_id"])) if len(running) == want else None

    # Let four finish one by one: each end lets exactly one more start.
    for _ in range(4):
        running = await apoll(lambda: holding(2), timeout=20, interval=0.02, what="two array tasks running")
        for t in (await inproc.client.list_tasks(batch=batch, state="pending"))["tasks"]:
            assert t["pending_reason"] == f"limit: array max-running (2 of batch {batch} running)"
        runner.docker.release_end(running[0]["task_id"])
        await inproc.wait_state(running[0]["task_id"], "completed")
    running = await apoll(lambda: holding(2), timeout=20, interval=0.02, what="the last two running")
    assert most == 2

    # Each task saw its own index and its batch (set by the runner, not the user).
    for task_id in ids:
        spec = runner.docker.specs[int(task_id)]
        task = await inproc.client.get_task(task_id)
        env = spec.task_env()
        assert env["HAKURIVER_ARRAY_INDEX"] == str(task["array_index"])
        assert env["HAKURIVER_BATCH_ID"] == batch
        out = Path(naming.stdout_path(str(inproc.shared), int(task_id))).read_text()
        assert f"HAKURIVER_ARRAY_INDEX={task['array_index']} HAKURIVER_BATCH_ID={batch}" in out

    # Killing the batch kills what is left; the completed ones stay completed.
    killed = await inproc.client.kill_batch(batch)
    assert sorted(killed["killed"]) == sorted(t["task_id"] for t in running)
    states = {t["task_id"]: t["state"] for t in killed["tasks"]}
    assert sorted(states.values()) == ["completed"] * 4 + ["killed"] * 2
    with pytest.raises(ApiError) as missing:
        await inproc.client.kill_batch(ids[0])  # a task id is no batch id
    assert missing.value.status == 404


async def test_killing_a_batch_kills_pending_members_before_running_ones(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1", hold_end=True)
    reply = await inproc.client.submit(["fake", "hang"], array="1,3,5%1")
    batch, ids = reply["batch_id"], reply["task_ids"]
    await inproc.wait_state(ids[0], "running")
    assert await inproc.still_pending(ids[1])
    killed = await inproc.client.kill_batch(batch)
    assert sorted(killed["killed"]) == sorted(ids)
    assert {t["state"] for t in killed["tasks"]} == {"killed"}
    # Nothing of the batch ever started after the kill: only the first ran.
    assert all(t["started_at"] is None for t in killed["tasks"][1:])


async def test_a_sweep_runs_one_task_per_combination(inproc: InProcCluster) -> None:
    runner = await inproc.add_runner("n1")
    reply = await inproc.client.submit(["fake", "exit", "span:{0..1}", "span:[x,y]"], sweep=True, array="%1")
    ids = reply["task_ids"]
    assert [t["command"] for t in reply["tasks"]] == [
        ["fake", "exit", "0", "x"],
        ["fake", "exit", "0", "y"],
        ["fake", "exit", "1", "x"],
        ["fake", "exit", "1", "y"],
    ]
    assert [t["array_index"] for t in reply["tasks"]] == [0, 1, 2, 3]
    done = (await inproc.client.wait(ids, timeout=20))["tasks"]
    assert [t["state"] for t in done] == ["completed", "completed", "failed", "failed"]
    for t in done:
        spec = runner.docker.specs[int(t["task_id"])]
        assert list(spec.command) == t["command"]
        assert spec.task_env()["HAKURIVER_ARRAY_INDEX"] == str(t["array_index"])
    # %1: one at a time, so each started after the one before ended.
    for before, after in zip(done, done[1:], strict=False):
        assert before["finished_at"] <= after["started_at"]
    with pytest.raises(ApiError) as no_span:
        await inproc.client.submit(["true"], sweep=True)
    assert no_span.value.status == 400 and "needs a span" in no_span.value.message


async def test_an_array_submitted_for_its_ids_only_is_stored_whole(inproc: InProcCluster) -> None:
    """`?reply=ids` (what the CLI asks unless it prints JSON): the answer has
    the ids and no views, and every task is stored as with the full answer."""
    await inproc.add_runner("n1", hold_end=True)
    reply = await inproc.client.submit(["fake", "exit", "0"], array="0-999%1", views=False)
    assert set(reply) == {"batch_id", "task_ids"} and len(reply["task_ids"]) == 1000
    assert len(set(reply["task_ids"])) == 1000
    listed = (await inproc.client.list_tasks(batch=reply["batch_id"], limit=1000))["tasks"]
    assert sorted(t["task_id"] for t in listed) == sorted(reply["task_ids"])
    assert sorted(t["array_index"] for t in listed) == list(range(1000))
    full = await inproc.client.submit(["fake", "exit", "0"], array="0-1%1")
    assert [t["task_id"] for t in full["tasks"]] == full["task_ids"]
    headers = {"Authorization": f"Bearer {inproc.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(inproc.url + "/api/tasks?reply=some", json={"command": ["true"]}) as resp:
            status, body = resp.status, await resp.json()
    assert status == 400 and "'reply' must be one of tasks, ids" in body["error"]["message"]


async def test_bad_arrays_are_refused_with_the_reason(inproc: InProcCluster) -> None:
    await inproc.add_runner("n1")
    for spec, words in (("5-3", "ends before it starts"), ("0-3%0", "at least 1"), ("0-99999", "more than 10000")):
        with pytest.raises(ApiError) as bad:
            await inproc.client.submit(["true"], array=spec)
        assert bad.value.status == 400 and words in bad.value.message
    with pytest.raises(ApiError) as two_targets:
        await inproc.client.submit(["true"], array="0-1", targets=["n1", "n1:0"])
    assert two_targets.value.status == 400 and "at most one target" in two_targets.value.message
    assert (await inproc.client.list_tasks())["tasks"] == []


def test_the_cli_submits_an_array_lists_waits_and_kills_the_batch(
    cluster: ThreadedCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = tmp_path / "client.toml"
    port = cluster.url.rsplit(":", 1)[1]
    config.write_text(
        f'[network]\nhost_reachable_address = "127.0.0.1"\nhost_port = {port}\n[auth]\ntoken = "{cluster.token}"\n'
    )
    cluster.add_runner("n1")

    def cli(*argv: str) -> tuple[int, str, str]:
        code = task_cli.main(["--config", str(config), *argv])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, err = cli("submit", "--array", "0-2%1", "--json", "--", "fake", "exit", "0")
    assert code == 0, err
    submitted = json.loads(out)
    batch, ids = submitted["batch_id"], submitted["task_ids"]
    assert len(ids) == 3
    code, out, err = cli("wait", batch, "--timeout", "20")
    assert code == 0, err
    assert all(re.search(rf"^{i}\s+completed", out, re.M) for i in ids), out
    code, out, _ = cli("list", "--batch", batch)
    assert code == 0 and sorted(re.findall(r"^(\d+)\s", out, re.M)) == sorted(ids), out
    code, out, _ = cli("status", ids[2])
    assert re.search(r"^array index\s+2$", out, re.M) and re.search(r"^array limit\s+1$", out, re.M), out

    code, out, err = cli("submit", "--array", "0-3", "--", "fake", "hang")
    assert code == 0, err
    hanging = out.split()
    status, shown = cluster.api("GET", f"/api/tasks/{hanging[0]}")
    assert status == 200
    second = shown["batch_id"]
    code, out, err = cli("kill", second)
    assert code == 0, err
    assert sorted(re.findall(r"^(\d+)\s+killed\s", out, re.M)) == sorted(hanging), out

    code, _, err = cli("submit", "--array", "3-1", "--", "true")
    assert code == 2 and err.strip().endswith("range '3-1' ends before it starts"), err
    assert "Traceback" not in err
