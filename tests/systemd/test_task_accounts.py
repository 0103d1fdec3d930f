"""Who `--container NULL` tasks run as, for real: the submitter's Unix account through the
launcher, which refuses root, the runner's own account and members of root-equivalent
groups unless its root-owned config names them explicitly."""

from __future__ import annotations

import json

import pytest

from .sdcluster import NODE_NAME, RUNNER_USER, SHARED, TASK_USER, TEMP, SdCluster, launcher_config

pytestmark = [pytest.mark.docker, pytest.mark.systemd]


def uid_of(sd: SdCluster, name: str) -> str:
    return sd.node.exec(["id", "-u", name]).stdout.strip()


def start_request(task_id: str, user: str) -> str:
    return json.dumps(
        {"task_id": task_id, "user": user, "command": ["true"], "shared_dir": SHARED, "local_temp_dir": TEMP}
    )


def test_files_a_task_writes_belong_to_its_submitter(sd: SdCluster) -> None:
    made = {}
    for name in (TASK_USER, "larry"):  # larry: allowed as a member of task_groups' lab
        made[name] = sd.submit(
            ["sh", "-c", 'id -un; echo hi > "$HAKURIVER_SHARED_DIR/made-by-$HAKURIVER_TASK_ID"'], as_user=name
        )
    for name, task_id in made.items():
        t = sd.wait_final(task_id)
        assert (t["state"], t["exit_code"]) == ("completed", 0), t
        assert sd.logs(task_id) == f"{name}\n"
        owners = sd.node.exec(
            [
                "stat",
                "-c",
                "%u",
                f"{SHARED}/made-by-{task_id}",
                f"{SHARED}/task_outputs/{task_id}.out",
                f"{SHARED}/task_errors/{task_id}.err",
            ]
        ).stdout.split()
        assert owners == [uid_of(sd, name)] * 3, (name, owners)


def test_a_task_account_in_the_docker_group_is_refused_by_the_launcher(sd: SdCluster) -> None:
    t = sd.wait_final(sd.submit(["id"], as_user="dave"))
    assert t["state"] == "failed", t
    assert "user 'dave' is a member of the group 'docker', which is root-equivalent" in (t.get("error") or ""), t
    assert "allow_privileged_users" in t["error"]
    assert sd.unit(t["task_id"], "LoadState")["LoadState"] == "not-found"


@pytest.mark.parametrize(
    "user, reason",
    [
        ("root", "user 'root' is root (uid 0)"),
        ("sam", "user 'sam' is a member of the group 'sudo', which is root-equivalent"),
        ("rita", f"user 'rita' is a member of the group '{RUNNER_USER}', which is the runner service's own group"),
        (RUNNER_USER, f"user '{RUNNER_USER}' is the runner service's own account"),
    ],
)
def test_root_sudoers_and_the_runners_own_accounts_are_refused(sd: SdCluster, user: str, reason: str) -> None:
    r = sd.launcher("start", input=start_request("930", user))
    assert r.rc == 2 and reason in r.stderr, r
    assert sd.unit("930", "LoadState")["LoadState"] == "not-found"


def test_a_privileged_account_runs_tasks_when_the_config_names_it(sd: SdCluster) -> None:
    original = sd.node.read_file("/etc/hakuriver/launcher.json")
    sd.set_launcher_config(launcher_config(allow_privileged_users=["dave"]))
    try:
        t = sd.wait_final(sd.submit(["id", "-Gn"], as_user="dave"))
        r = sd.launcher("start", input=start_request("931", "sam"))  # named for dave only
    finally:
        sd.set_launcher_config(original)
    assert (t["state"], t["exit_code"]) == ("completed", 0), t
    assert "docker" in sd.logs(t["task_id"]).split()
    assert r.rc == 2 and "'sudo'" in r.stderr, r


def test_a_user_without_a_unix_account_needs_runner_user(sd: SdCluster) -> None:
    t = sd.wait_final(sd.submit(["id", "-un"], as_user=None))  # the admin has no Unix account
    assert t["state"] == "failed", t
    error = t.get("error") or ""
    assert "has no Unix account" in error and "--unix-user" in error and "environment.runner_user" in error, t

    sd.stop_runner()
    sd.write_runner_config(runner_user="larry")
    sd.start_runner()
    try:
        t = sd.wait_final(sd.submit(["id", "-un"], as_user=None))
        mine = sd.wait_final(sd.submit(["id", "-un"]))  # alice's own account still wins
    finally:
        sd.stop_runner()
        sd.write_runner_config()
        sd.start_runner()
    assert (t["state"], sd.logs(t["task_id"])) == ("completed", "larry\n"), t.get("error")
    assert (mine["state"], sd.logs(mine["task_id"])) == ("completed", f"{TASK_USER}\n"), mine
    started = sd.journal("hkr-runner", lines=400)
    assert "tasks of users without one run as larry" in started, started


def test_an_old_allow_list_still_works(sd: SdCluster) -> None:
    """A launcher.json from before task_groups: only task_users. Its accounts still run
    tasks, and its root-equivalent ones are refused all the same."""
    old = {
        "version": 1,
        "task_users": [TASK_USER, "dave"],
        "shared_dirs": [SHARED],
        "local_temp_dirs": [TEMP],
        "numactl_paths": ["/usr/bin/numactl"],
        "state_dir": "/var/lib/hakuriver/task-status",
        "systemd_run": "/usr/bin/systemd-run",
        "systemctl": "/usr/bin/systemctl",
    }
    original = sd.node.read_file("/etc/hakuriver/launcher.json")
    sd.set_launcher_config(json.dumps(old))
    try:
        ok = sd.wait_final(sd.submit(["id", "-un"], targets=[NODE_NAME]))
        refused = sd.wait_final(sd.submit(["id", "-un"], as_user="dave"))
        larry = sd.wait_final(sd.submit(["id", "-un"], as_user="larry"))  # no task_groups any more
    finally:
        sd.set_launcher_config(original)
    assert (ok["state"], sd.logs(ok["task_id"])) == ("completed", f"{TASK_USER}\n"), ok
    assert refused["state"] == "failed" and "'docker'" in (refused.get("error") or ""), refused
    assert larry["state"] == "failed" and "'larry' is not allowed" in (larry.get("error") or ""), larry


def test_task_accounts_cannot_plant_log_files_and_a_stray_one_is_replaced(sd: SdCluster) -> None:
    """The log dirs are the service user's: no task account can create names there.
    A stray entry (an older, world-writable deployment) is replaced, never written
    into, and the new file belongs to the task's account."""
    planted = f"{SHARED}/task_outputs/940.out"
    assert not sd.node.exec(["sh", "-c", f"echo planted > {planted}"], user="larry", check=False).ok
    victim = f"{SHARED}/victim-940"
    sd.node.exec(["sh", "-c", f"echo keep > {victim} && chown larry {victim} && ln {victim} {planted}"])
    r = sd.launcher("start", input=start_request("940", TASK_USER))
    assert r.ok, r
    assert sd.node.read_file(victim) == "keep\n", "the hard-linked victim was written to"
    st = sd.node.exec(["stat", "-c", "%U %h", planted]).stdout.split()
    assert st == [TASK_USER, "1"], st
