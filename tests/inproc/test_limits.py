"""Per-user limits end to end: the real Host and Runners, users with their own
tokens, the admin changing a limit while tasks wait."""

from __future__ import annotations

import pytest

from hakuriver.client import ApiError, HostClient

from .cluster import InProcCluster


async def _user(cluster: InProcCluster, name: str, **limits: int | None) -> HostClient:
    added = await cluster.client.add_user(name, limits=limits or None)
    client = HostClient(cluster.url, added["token"], timeout=10)
    await client.open()
    return client


async def test_a_user_limited_to_one_running_task(inproc: InProcCluster) -> None:
    await inproc.add_runner("a")
    await inproc.add_runner("b")
    alice = await _user(inproc, "alice", max_running=1)
    bob = await _user(inproc, "bob")
    try:
        me = await alice.whoami()
        assert me["effective_limits"] == {"max_cores": None, "max_gpus": None, "max_running": 1}

        [first] = (await alice.submit(["fake", "hang"]))["task_ids"]
        await inproc.wait_state(first, "running")
        assert (await alice.whoami())["usage"] == {"cores": 1, "gpus": 0, "running": 1}
        [second] = (await alice.submit(["fake", "exit", "0"]))["task_ids"]
        assert await inproc.still_pending(second)
        waiting = await alice.get_task(second)
        assert waiting["pending_reason"] == "limit: max-running (1 of 1 running)"
        assert waiting["position"] == 1

        # Another user's task runs meanwhile: the limited task blocks nobody.
        [other] = (await bob.submit(["fake", "hang"]))["task_ids"]
        running = await inproc.wait_state(other, "running")
        assert running["pending_reason"] is None and running["position"] is None
        listed = (await bob.list_tasks(state="pending"))["tasks"]
        assert [(t["task_id"], t["pending_reason"]) for t in listed] == [(second, waiting["pending_reason"])]

        # The second starts once the first ends.
        await alice.kill(first)
        [done] = (await alice.wait([second], timeout=20))["tasks"]
        assert done["state"] == "completed"
        await bob.kill(other)
    finally:
        await alice.close()
        await bob.close()


async def test_defaults_user_settings_and_refusals(inproc_factory) -> None:
    cluster: InProcCluster = await inproc_factory(config_overrides={"limits": {"default_max_cores": 1}})
    await cluster.add_runner("a")
    carol = await _user(cluster, "carol")
    try:
        users = {u["name"]: u for u in (await cluster.client.list_users())["users"]}
        assert users["carol"]["limits"] == {"max_cores": None, "max_gpus": None, "max_running": None}
        assert users["carol"]["effective_limits"]["max_cores"] == 1
        # A task that alone exceeds the limit could never start: refused at submit, nothing stored.
        with pytest.raises(ApiError) as refused:
            await carol.submit(["fake", "exit", "0"], cores=2)
        assert refused.value.status == 400 and refused.value.code == "unschedulable"
        assert "may hold at most 1 at once (limit max-cores)" in refused.value.message
        assert (await cluster.client.list_tasks())["tasks"] == []

        [first] = (await carol.submit(["fake", "hang"]))["task_ids"]
        await cluster.wait_state(first, "running")
        [second] = (await carol.submit(["fake", "exit", "0"]))["task_ids"]
        assert await cluster.still_pending(second)
        assert (await carol.get_task(second))["pending_reason"].startswith("limit: max-cores (1 of 1 in use")

        # Only an admin changes limits; a raised limit lets the waiting task start at once.
        with pytest.raises(ApiError) as forbidden:
            await carol.set_user_limits("carol", {"max_cores": 0})
        assert forbidden.value.status == 403
        with pytest.raises(ApiError) as bad:
            await cluster.client.set_user_limits("carol", {"max_cpus": 2})
        assert bad.value.status == 400 and "unknown limit 'max_cpus'" in bad.value.message
        with pytest.raises(ApiError) as missing:
            await cluster.client.set_user_limits("nobody", {"max_cores": 2})
        assert missing.value.status == 404
        changed = await cluster.client.set_user_limits("carol", {"max_cores": 0})
        assert changed["user"]["limits"]["max_cores"] == 0
        assert changed["user"]["effective_limits"]["max_cores"] is None  # 0: unlimited for carol
        [done] = (await carol.wait([second], timeout=20))["tasks"]
        assert done["state"] == "completed"

        # null clears the user's own setting back to the default.
        cleared = await cluster.client.set_user_limits("carol", {"max_cores": None})
        assert cleared["user"]["limits"]["max_cores"] is None
        assert cleared["user"]["effective_limits"]["max_cores"] == 1
        await carol.kill(first)
    finally:
        await carol.close()


async def test_limits_survive_a_host_restart(inproc: InProcCluster) -> None:
    await inproc.client.add_user("dave", limits={"max_gpus": 2, "max_running": 3})
    await inproc.stop_host()
    await inproc.start_host()
    [dave] = [u for u in (await inproc.client.list_users())["users"] if u["name"] == "dave"]
    assert dave["limits"] == {"max_cores": None, "max_gpus": 2, "max_running": 3}
