"""The runner's own policy check of every order (`Supervisor.build_spec`): no Docker needed.

Written from the class, not a reproduction: whatever the sender, an order
that breaks this node's config (privileged, mounts by text *and* by where
they resolve on the node, argv and env limits, resource bounds and the
node's capacity, the submitter's account) is refused with a 4xx error.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import Any

import pytest

from hakuriver.config import config_from_dict
from hakuriver.errors import HakuRiverError, PolicyDenied, ValidationError
from hakuriver.models import Mount
from hakuriver.runner.executors.base import NOBODY, ROOT
from hakuriver.runner.supervisor import Supervisor
from hakuriver.runrequest import RunRequest


def supervisor(tmp_path: Path, **docker: Any) -> Supervisor:
    allowed = tmp_path / "allowed"
    allowed.mkdir(exist_ok=True)
    config = config_from_dict(
        {
            "paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)},
            "docker": {"allowed_mount_prefixes": [str(allowed)], **docker},
        }
    )
    return Supervisor(config, None, {}, None, (), frozenset(), cores=4, memory=8 << 30)  # type: ignore[arg-type]


def order(**fields: Any) -> RunRequest:
    return RunRequest.from_json({"task_id": "7", "command": ["true"], "container": "env", **fields})


def refusal(sup: Supervisor, request: RunRequest) -> HakuRiverError:
    with pytest.raises(HakuRiverError) as info:
        sup.build_spec(request)
    assert 400 <= info.value.status < 500, info.value
    return info.value


def test_a_plain_order_passes_and_runs_as_nobody(tmp_path: Path) -> None:
    spec = supervisor(tmp_path).build_spec(order(cores=2, memory=1 << 30))
    assert spec.identity is not None and (spec.identity.uid, spec.identity.gid) == (65534, 65534)
    assert spec.image == "hakuriver/env:base"


@pytest.mark.parametrize(
    ("fields", "kind", "words"),
    [
        ({"privileged": True}, PolicyDenied, "privileged tasks are not allowed on this node"),
        ({"command": ["x"] * 10_000}, ValidationError, "10000 arguments"),
        ({"command": ["x" * 300_000]}, ValidationError, "bytes long"),
        ({"command": ["a\x00b"]}, ValidationError, "NUL"),
        ({"cores": 10**30}, ValidationError, "core count"),
        ({"cores": 5}, ValidationError, "this node has 4"),
        ({"memory": 1 << 60}, ValidationError, "larger than"),
        ({"memory": 9 << 30}, ValidationError, "this node has 8G"),
        ({"gpus": list(range(65))}, ValidationError, "gpus"),
        ({"env": {"HAKURIVER_TASK_ID": "1"}}, ValidationError, "reserved"),
        ({"env": {f"K{i}": "v" for i in range(1025)}}, ValidationError, "too many env"),
        ({"mounts": ["/:/host"]}, PolicyDenied, "not allowed by policy"),
        ({"mounts": ["/etc:/etc2:ro"]}, PolicyDenied, "not allowed by policy"),
        ({"container": "NULL", "privileged": True}, ValidationError, "Docker tasks only"),
        ({"unix_user": "no-such-user-hkr"}, ValidationError, "does not exist on this node"),
    ],
)
def test_orders_breaking_the_nodes_policy_are_refused(tmp_path: Path, fields: dict, kind: type, words: str) -> None:
    err = refusal(supervisor(tmp_path), order(**fields))
    assert isinstance(err, kind) and words in err.message, err.message


def test_reserved_mount_targets_are_refused(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    for target in ("/shared", "/shared/x", "/local_temp"):
        err = refusal(sup, order(mounts=[f"{tmp_path}/allowed:{target}"]))
        assert "reserved" in err.message


def test_mounts_are_checked_where_they_resolve_on_the_node(tmp_path: Path) -> None:
    sup = supervisor(tmp_path)
    allowed = tmp_path / "allowed"
    (allowed / "real").mkdir()
    (allowed / "to-root").symlink_to("/")
    (allowed / "to-etc").symlink_to("/etc")
    (allowed / "inner").symlink_to(allowed / "real")
    (allowed / "dir").mkdir()
    (allowed / "dir" / "up").symlink_to("../..")  # to tmp_path: outside the prefix
    for bad in ("to-root", "to-etc", "to-root/etc", "dir/up", "dir/up/shared"):
        err = refusal(sup, order(mounts=[f"{allowed}/{bad}:/data"]))
        assert isinstance(err, PolicyDenied) and "resolves to" in err.message, err.message
    # A link that stays inside the prefix is fine, and Docker binds the resolved path.
    spec = sup.build_spec(order(mounts=[f"{allowed}/inner:/data:ro"]))
    assert spec.mounts == (Mount(str(allowed / "real"), "/data", read_only=True),)


def test_an_allowed_prefix_that_is_a_link_still_allows_its_subtree(tmp_path: Path) -> None:
    real = tmp_path / "real-data"
    (real / "set").mkdir(parents=True)
    link = tmp_path / "data"
    link.symlink_to(real)
    sup = Supervisor(
        config_from_dict(
            {
                "paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)},
                "docker": {"allowed_mount_prefixes": [str(link)]},
            }
        ),
        None,  # type: ignore[arg-type]
        {},
        None,  # type: ignore[arg-type]
        (),
        frozenset(),
    )
    spec = sup.build_spec(order(mounts=[f"{link}/set:/set"]))
    assert spec.mounts == (Mount(str(real / "set"), "/set"),)


def test_the_admins_additional_mounts_are_recognised_and_exempt(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, additional_mounts=["/etc/ssl:/etc/ssl:ro"])
    spec = sup.build_spec(order(mounts=["/etc/ssl:/etc/ssl:ro"]))
    assert spec.mounts == (Mount("/etc/ssl", "/etc/ssl", read_only=True),)
    # Only exactly the admin's: another mode or target is a user's mount, and refused.
    for other in ("/etc/ssl:/etc/ssl", "/etc/ssl:/ssl:ro", "/etc:/etc/ssl:ro"):
        assert isinstance(refusal(sup, order(mounts=[other])), PolicyDenied)


def test_who_a_docker_task_runs_as(tmp_path: Path) -> None:
    me = pwd.getpwuid(os.getuid())
    spec = supervisor(tmp_path).build_spec(order(unix_user=me.pw_name, user="someone"))
    assert spec.identity is not None
    assert (spec.identity.uid, spec.identity.gid) == (me.pw_uid, me.pw_gid)
    assert spec.identity.gid not in spec.identity.groups
    assert set(spec.identity.groups) == set(os.getgrouplist(me.pw_name, me.pw_gid)) - {me.pw_gid}
    nobody = supervisor(tmp_path).build_spec(order()).identity
    assert nobody is not None and nobody.uid == NOBODY.uid and nobody.uid != 0
    assert supervisor(tmp_path, task_user="root").build_spec(order()).identity == ROOT
    # A NULL task's user is the systemd backend's business.
    assert supervisor(tmp_path).build_spec(order(container="NULL")).identity is None


def test_privileged_passes_where_the_node_allows_it(tmp_path: Path) -> None:
    assert supervisor(tmp_path, tasks_privileged=True).build_spec(order(privileged=True)).privileged is True


async def test_two_copies_of_one_order_start_one_task(tmp_path: Path) -> None:
    """The order is checked in a thread now; a copy sent meanwhile must not start a second task."""
    import asyncio

    from hakuriver.runner.executors.fake import FakeExecutor
    from hakuriver.runner.state import RunnerState
    from hakuriver.runner.supervisor import Notices

    config = config_from_dict({"paths": {"shared_dir": str(tmp_path), "local_temp_dir": str(tmp_path)}})
    state = await RunnerState.open(str(tmp_path / "state" / "runner.db"))
    fake = FakeExecutor("n")
    started: list[int] = []
    real_start = fake.start

    async def counting_start(spec: Any) -> Any:
        started.append(spec.task_id)
        return await real_start(spec)

    fake.start = counting_start  # type: ignore[method-assign]
    sup = Supervisor(config, state, {"docker": fake}, Notices(), (), frozenset())
    try:
        request = order(command=["fake", "hang"])
        answers = await asyncio.gather(*(sup.accept(request) for _ in range(3)))
        assert sorted(answers) == ["accepted", "already_accepted", "already_accepted"]
        for _ in range(100):
            if started:
                break
            await asyncio.sleep(0.01)
        assert started == [7] and list(sup.tasks) == [7]
    finally:
        await sup.kill(7)
        await sup.shutdown()
        await fake.close()
        await state.close()
