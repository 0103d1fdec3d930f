"""`--container NULL` tasks for real: a Host and an unprivileged Runner in a systemd
node, tasks in transient services started through the root-owned launcher."""

from __future__ import annotations

import base64
import json
import shlex
import uuid

import pytest

from hakuriver.launcher import POSTSTOP_SCRIPT
from tests.harness import poll

from .sdcluster import LAUNCHER, NODE_NAME, RUNNER_MARKER, RUNNER_USER, SHARED, STATE_DIR, TASK_USER, TEMP, SdCluster

pytestmark = [pytest.mark.docker, pytest.mark.systemd]

REPORT = (
    "import json, os, sys\n"
    "print(json.dumps({'argv': sys.argv[1:], 'env': dict(os.environ), 'uid': os.getuid(), 'cwd': os.getcwd()}))\n"
    "print('to stderr', file=sys.stderr)\n"
    "sys.exit(int(os.environ['WANT_EXIT']))\n"
)
EVIL = [
    "$(touch /tmp/pwned-subst)",
    "`touch /tmp/pwned-backtick`",
    "; touch /tmp/pwned-semicolon",
    "&& touch /tmp/pwned-and",
    "' ; touch /tmp/pwned-quote ; '",
    '" ; touch /tmp/pwned-dquote ; "',
    "\ntouch /tmp/pwned-newline\n",
    "| touch /tmp/pwned-pipe",
    "$HOME ${PATH} $$ %n %i %% \\n \\",
    "--property=User=root",
    "",
    "unicode: é ✓",
]
HOG = "x = []\nwhile True:\n    x.append(bytearray(1 << 20))\n"


def test_a_task_runs_as_argv_with_its_output_exit_code_and_environment(sd: SdCluster) -> None:
    failing = sd.submit(["python3", "-c", REPORT, *EVIL], env={"WANT_EXIT": "7", "GREETING": "hi $(id) ;"})
    ok = sd.submit(["sh", "-c", 'echo "done $HAKURIVER_TASK_ID"'])
    t = sd.wait_final(failing)
    assert (t["state"], t["exit_code"]) == ("failed", 7), t.get("error")
    report = json.loads(sd.logs(failing))
    assert report["argv"] == EVIL
    assert sd.logs(failing, "stderr") == "to stderr\n"
    env = report["env"]
    assert env["GREETING"] == "hi $(id) ;"
    assert (env["HAKURIVER_TASK_ID"], env["HAKURIVER_SHARED_DIR"], env["HAKURIVER_LOCAL_TEMP_DIR"]) == (
        failing,
        SHARED,
        TEMP,
    )
    assert RUNNER_MARKER not in env and "INVOCATION_ID" not in env, "the runner's environment leaked into the task"
    # The submitter's Unix account, not the runner's.
    assert env["USER"] == TASK_USER and report["cwd"] == SHARED
    assert report["uid"] == int(sd.node.exec(["id", "-u", TASK_USER]).stdout)
    # Nothing a shell would have run did run.
    assert sd.node.exec(["sh", "-c", "ls /tmp/pwned-* 2>/dev/null || true"]).stdout == ""

    t = sd.wait_final(ok)
    assert (t["state"], t["exit_code"]) == ("completed", 0), t.get("error")
    assert sd.logs(ok) == f"done {ok}\n"
    owners = sd.node.exec(
        ["stat", "-c", "%U", f"{SHARED}/task_outputs/{failing}.out", f"{SHARED}/task_errors/{failing}.err"]
    )
    assert owners.stdout.split() == [TASK_USER, TASK_USER]
    # destroy() cleans up (just after the result is reported): no unit, no status record.
    poll(
        lambda: (
            sd.unit(ok, "LoadState")["LoadState"] == sd.unit(failing, "LoadState")["LoadState"] == "not-found"
            and sd.node.exec(["ls", STATE_DIR]).stdout.strip() == ""
        ),
        timeout=30,
        what="units and records cleaned up",
    )


def test_a_retried_task_keeps_each_attempts_output(sd: SdCluster) -> None:
    # Each run counts itself in a file of the node, says which run it is, and fails.
    counter = f"/tmp/runs-kept-{uuid.uuid4().hex}"
    script = f'printf x >> {counter}; n=$(wc -c < {counter}); echo "run $n out"; echo "run $n err" >&2; exit 3'
    task_id = sd.submit(["sh", "-c", script], retries=1, retry_on_exit=True)
    t = sd.wait_final(task_id)
    assert (t["state"], t["attempt"], t["exit_code"]) == ("failed", 2, 3), t
    # Each attempt's unit wrote its own files (the launcher checks the names): nothing
    # of one is in the other, and both are the submitter's.
    second = f"{SHARED}/task_outputs/{task_id}.attempt2.out"
    assert sd.node.exec(["cat", f"{SHARED}/task_outputs/{task_id}.out"]).stdout == "run 1 out\n"
    assert sd.node.exec(["cat", second]).stdout == "run 2 out\n"
    assert sd.node.exec(["stat", "-c", "%U", second]).stdout.split() == [TASK_USER]
    status, body = sd.api("GET", f"/api/tasks/{task_id}/logs?stream=stderr&attempt=1")
    assert (status, body) == (200, b"run 1 err\n")
    assert (sd.logs(task_id), sd.logs(task_id, "stderr")) == ("run 2 out\n", "run 2 err\n")


def test_limits_numa_pause_resume_kill_and_oom(sd: SdCluster) -> None:
    sleeper = sd.submit(["sleep", "600"], cores=1, memory="64M")
    hog = sd.submit(["python3", "-c", HOG], memory="64M")
    numa = sd.submit(
        ["sh", "-c", "numactl --show; grep Cpus_allowed_list /proc/self/status"], targets=[f"{NODE_NAME}:0"]
    )

    sd.wait_state(sleeper, {"running"})
    props = sd.unit(sleeper, "CPUQuotaPerSecUSec", "MemoryMax", "MainPID")
    assert (props["CPUQuotaPerSecUSec"], props["MemoryMax"]) == ("1s", str(64 << 20)), props
    pid = props["MainPID"]
    # The task's process is the submitter's, every id of it (setpriv, not User=).
    ids = sd.node.exec(["ps", "-o", "ruser=,euser=,rgroup=,egroup=", "-p", pid]).stdout.split()
    task_group = sd.node.exec(["id", "-gn", TASK_USER]).stdout.strip()
    assert ids == [TASK_USER, TASK_USER, task_group, task_group], ids
    # ... and the kernel enforces it (cgroup v1 memory controller here, v2 elsewhere).
    limit = sd.node.exec(
        [
            "sh",
            "-c",
            f"p=$(grep -E '^[0-9]+:memory:' /proc/{pid}/cgroup | cut -d: -f3); "
            f"cat /sys/fs/cgroup/memory$p/memory.limit_in_bytes 2>/dev/null || "
            f"cat /sys/fs/cgroup$(grep '^0::' /proc/{pid}/cgroup | cut -d: -f3)/memory.max",
        ]
    )
    assert limit.stdout.strip() == str(64 << 20), limit

    def proc_state() -> str:
        return sd.node.exec(["sh", "-c", f"grep ^State: /proc/{pid}/status"]).stdout.split()[1]

    sd.act(sleeper, "pause")
    sd.wait_state(sleeper, {"paused"})
    assert proc_state() == "T"
    sd.act(sleeper, "resume")
    sd.wait_state(sleeper, {"running"})
    assert proc_state() == "S"
    sd.act(sleeper, "pause")
    sd.wait_state(sleeper, {"paused"})
    sd.act(sleeper, "kill")  # a paused task can be killed
    assert sd.wait_final(sleeper)["state"] == "killed"

    t = sd.wait_final(hog)
    assert t["state"] == "killed_oom", t
    t = sd.wait_final(numa)
    assert t["state"] == "completed", t
    out = sd.logs(numa)
    assert "policy: bind" in out and "membind: 0" in out and "cpubind: 0" in out, out
    cpus = sd.node.exec(["cat", "/sys/devices/system/node/node0/cpulist"]).stdout.strip()
    assert f"Cpus_allowed_list:\t{cpus}" in out


def test_the_exit_code_survives_a_runner_restart(sd: SdCluster) -> None:
    # Arguments and values that the transient unit's file must keep as text across the
    # daemon-reload below: a newline before a setting, quotes, escapes, specifiers.
    injected = "x\nExecStopPost=/bin/touch /tmp/pwned-reload\n[Service]\nUser=root"
    odd = [injected, ";", "\\", '"', "'", "%n", "$HOME", "${PATH}", "\t"]

    def waiting(name: str, code: int) -> list[str]:
        script = f'while [ ! -e "$HAKURIVER_LOCAL_TEMP_DIR/{name}" ]; do sleep 0.1; done; exit {code}'
        return ["sh", "-c", script, *odd]

    ends_while_down = sd.submit(waiting("go-a", 5), env={"ODD": injected})
    ends_after = sd.submit(waiting("go-b", 6))
    for t in (ends_while_down, ends_after):
        sd.wait_state(t, {"running"})
    sd.act(ends_after, "pause")
    sd.wait_state(ends_after, {"paused"})
    sd.stop_runner()  # KillMode=control-group: the runner's whole cgroup dies
    for t in (ends_while_down, ends_after):
        assert sd.unit(t, "ActiveState")["ActiveState"] == "active", "a task died with the runner"
    # A daemon-reload (any package upgrade, any Ansible run) reloads the running units
    # from their transient files: their poststop hook must come back with them.
    sd.node.exec(["systemctl", "daemon-reload"])
    for t in (ends_while_down, ends_after):
        props = sd.unit(t, "LoadState", "ExecStopPost", "User")
        assert props["LoadState"] == "loaded" and props["User"] == "", props
        hooks = props["ExecStopPost"]
        assert hooks.count("argv[]=") == 1 and f"argv[]=/bin/sh {STATE_DIR}/.poststop.sh {t} " in hooks, props
    sd.node.exec(["touch", f"{TEMP}/go-a"], user=RUNNER_USER)
    poll(
        lambda: sd.node.exec(["test", "-e", f"{STATE_DIR}/{ends_while_down}.json"], check=False).ok,
        timeout=30,
        what="the task to end while the runner is down",
    )
    assert sd.task(ends_while_down)["state"] == "running"  # nobody told the Host yet

    sd.start_runner()
    t = sd.wait_final(ends_while_down)
    assert (t["state"], t["exit_code"]) == ("failed", 5), t
    assert not sd.node.exec(["test", "-e", "/tmp/pwned-reload"], check=False).ok, "the reload ran a task's text"
    # Re-adopted as paused (its processes are stopped), and it can be resumed.
    assert sd.runner_tasks() == {ends_after: "paused"}
    assert sd.task(ends_after)["state"] == "paused"
    sd.node.exec(["touch", f"{TEMP}/go-b"], user=RUNNER_USER)
    sd.act(ends_after, "resume")
    t = sd.wait_final(ends_after)
    assert (t["state"], t["exit_code"]) == ("failed", 6), t


def test_setup_errors_fail_tasks_with_a_reason(sd: SdCluster) -> None:
    node = sd.node
    node.exec(["mv", "/usr/bin/numactl", "/usr/bin/numactl.away"])
    try:
        t = sd.wait_final(sd.submit(["true"], targets=[f"{NODE_NAME}:0"]))
    finally:
        node.exec(["mv", "/usr/bin/numactl.away", "/usr/bin/numactl"])
    assert t["state"] == "failed" and "numactl is not installed" in (t.get("error") or ""), t

    node.exec(["mv", "/etc/sudoers.d/hakuriver", "/root/sudoers.away"])
    try:
        t = sd.wait_final(sd.submit(["true"]))
    finally:
        node.exec(["mv", "/root/sudoers.away", "/etc/sudoers.d/hakuriver"])
    assert t["state"] == "failed" and "sudoers" in (t.get("error") or ""), t

    t = sd.wait_final(sd.submit(["/nonexistent/program", "arg"]))
    assert t["state"] == "failed" and "/nonexistent/program" in (t.get("error") or ""), t

    # The launcher does not wait for the unit's start job (systemd-run --no-block): a
    # failure of systemd's own set-up of the process, after the launcher's checks passed,
    # leaves the unit failed with systemd's exit code, which the runner reports (the
    # poststop hook fails the same step, so there is no record). Here the launcher starts
    # through systemd-run (not its bus), which is given a working directory that does
    # not exist (EXIT_CHDIR, 200).
    wrapper = "/usr/local/sbin/hkr-systemd-run-bad-cwd"
    node.write_file(
        wrapper, '#!/bin/sh\nexec /usr/bin/systemd-run --property=WorkingDirectory=/nonexistent "$@"\n', mode=0o755
    )
    original = node.read_file("/etc/hakuriver/launcher.json")
    bad_cwd = json.loads(original)
    bad_cwd["systemd_run"] = wrapper
    bad_cwd["systemd_bus"] = ""
    sd.set_launcher_config(json.dumps(bad_cwd))
    try:
        t = sd.wait_final(sd.submit(["true"]))
    finally:
        sd.set_launcher_config(original)
        node.exec(["rm", "-f", wrapper])
    assert t["state"] == "failed" and "systemd could not set up the task (exit code 200" in (t.get("error") or ""), t

    # Through systemd-run (a launcher config without its bus, or a task the bus cannot
    # carry), a task runs the same way, its `exec` stage from the launcher's compiled
    # code: root's, in the root-owned state dir, and no way past sudo's rule.
    via_run = json.loads(original)
    via_run["systemd_bus"] = ""
    sd.set_launcher_config(json.dumps(via_run))
    try:
        t = sd.wait_final(sd.submit(["sh", "-c", 'echo "via systemd-run as $(id -un) in $PWD"']))
    finally:
        sd.set_launcher_config(original)
    assert (t["state"], t["exit_code"]) == ("completed", 0), t.get("error")
    assert sd.logs(t["task_id"]) == f"via systemd-run as {TASK_USER} in {SHARED}\n"
    cache = f"{STATE_DIR}/.launcher-code.pyc"
    assert shlex.split(node.exec(["stat", "-c", "%U %a", cache, STATE_DIR]).stdout) == ["root", "644", "root", "755"]
    r = node.exec(["sudo", "-n", "/usr/bin/python3", "-IS", cache, "info"], user=RUNNER_USER, check=False)
    assert r.rc != 0 and "sudo:" in r.stderr, r
    # A program whose name has a `=` goes that way too: through env it would be taken for a
    # variable, and env would print the environment instead of running it.
    odd_program = "/usr/local/bin/hkr-a=b"
    node.write_file(odd_program, '#!/bin/sh\necho "odd name $HAKURIVER_TASK_ID"\n', mode=0o755)
    try:
        t = sd.wait_final(sd.submit([odd_program]))
    finally:
        node.exec(["rm", "-f", odd_program])
    assert (t["state"], t["exit_code"]) == ("completed", 0), t.get("error")
    assert sd.logs(t["task_id"]) == f"odd name {t['task_id']}\n"

    original = node.read_file("/etc/hakuriver/launcher.json")
    allow_ghost = json.loads(original)
    allow_ghost["task_users"].append("ghost")
    sd.set_launcher_config(json.dumps(allow_ghost))
    try:
        r = sd.launcher("start", input=start_request("920", user="ghost", command=["true"]))
    finally:
        sd.set_launcher_config(original)
    assert r.rc == 2 and "user 'ghost' does not exist on this node" in r.stderr, r


def start_request(task_id: str, **overrides: object) -> str:
    req = {
        "task_id": task_id,
        "user": TASK_USER,
        "command": ["touch", "/root/pwned-launcher"],
        "shared_dir": SHARED,
        "local_temp_dir": TEMP,
    }
    req.update(overrides)
    return json.dumps(req)


def test_the_runner_user_cannot_become_root(sd: SdCluster) -> None:
    node = sd.node
    assert node.exec(["visudo", "-cf", "/etc/sudoers.d/hakuriver"]).ok
    listing = node.exec(["sudo", "-l", "-U", RUNNER_USER]).stdout
    assert LAUNCHER in listing and "systemd-run" not in listing and "systemctl" not in listing

    def refused_by_sudo(*argv: str) -> None:
        r = node.exec(["sudo", "-n", *argv], user=RUNNER_USER, check=False)
        assert r.rc != 0 and "sudo:" in r.stderr, f"sudo allowed {argv}: {r}"

    refused_by_sudo(
        "systemd-run", "--unit=hakuriver-task-1", "-p", "User=root", "/bin/sh", "-c", "touch /root/pwned-run"
    )
    refused_by_sudo("/usr/bin/systemd-run", "--unit=x", "/bin/sh")
    refused_by_sudo("systemctl", "stop", "hkr-host.service")
    refused_by_sudo("/usr/bin/systemctl", "kill", "hakuriver-task-1.service")
    refused_by_sudo("/bin/sh", "-c", "id")
    refused_by_sudo("/usr/bin/python3", "-I", LAUNCHER, "info")
    refused_by_sudo("PYTHONPATH=/tmp", LAUNCHER, "info")
    refused_by_sudo("-E", LAUNCHER, "info")
    refused_by_sudo("-u", "nobody", LAUNCHER, "info")

    def refused_by_launcher(*args: str, input: str | None = None, match: str = "") -> None:
        r = sd.launcher(*args, input=input)
        assert r.rc == 2 and "hakuriver-task-launcher:" in r.stderr and match in r.stderr, (
            f"launcher allowed {args}: {r}"
        )

    refused_by_launcher("start", input=start_request("901", user="root"), match="is root (uid 0)")
    refused_by_launcher("start", input=start_request("901", user="nobody"), match="not allowed")
    refused_by_launcher(
        "start", input=start_request("902", shared_dir="/root"), match="not one the launcher config allows"
    )
    refused_by_launcher("start", input=start_request("903", shared_dir=f"{SHARED}/../../../root"), match="/root is not")
    refused_by_launcher("start", input=start_request("904", stdout="/etc/passwd"), match="stdout must be")
    refused_by_launcher("start", input=start_request("../905"), match="task id")
    refused_by_launcher("start", input=start_request("906 --property=User=root"), match="task id")
    refused_by_launcher("start", input=start_request("907", properties=["User=root"]), match="unknown request field")
    refused_by_launcher("start", input=start_request("908", numa=0, numactl="/bin/sh"), match="numactl path")
    refused_by_launcher("start", "--property=User=root", input=start_request("909"))
    refused_by_launcher("kill", "1", "SIGKILL", "extra")
    refused_by_launcher("kill", "../1", "SIGKILL", match="task id")
    refused_by_launcher("kill", "1", "SIGKILL --kill-who=main")
    refused_by_launcher("cleanup", "1 2", match="task id")
    refused_by_launcher("pause", "hkr-host", match="task id")
    spec = ["/bin/sh", "-c", "touch /root/pwned-exec"]
    exec_arg = json.dumps(
        {
            "v": 1,
            "task_id": 910,
            "user": "root",
            "uid": 0,
            "argv": spec,
            "env": {},
            "cwd": SHARED,
            "stdout": f"{SHARED}/x",
            "stderr": f"{SHARED}/y",
        }
    )
    refused_by_launcher("exec", base64.urlsafe_b64encode(exec_arg.encode()).decode(), match="never through sudo")
    refused_by_launcher("poststop", "910", match="never through sudo")

    # A symlink the runner plants where the logs go is not followed: the launcher
    # removes the entry (never its target) and makes a fresh file for the task's user.
    node.exec(
        ["sh", "-c", f"mkdir -p {SHARED}/task_outputs && ln -sf /etc/hkr-evil {SHARED}/task_outputs/911.out"],
        user=RUNNER_USER,
    )
    r = sd.launcher("start", input=start_request("911", command=["true"]))
    assert r.ok, r
    assert not node.exec(["test", "-e", "/etc/hkr-evil"], check=False).ok, "root followed the planted link"
    out = node.exec(["stat", "-c", "%U|%F", f"{SHARED}/task_outputs/911.out"]).stdout.strip().split("|")
    assert out[0] == TASK_USER and out[1].startswith("regular"), out
    # A unit name clash is reported, not papered over, and the running task's logs are
    # left alone (the clash is found before the log files are made).
    out_912 = f"{SHARED}/task_outputs/912.out"
    assert sd.launcher("start", input=start_request("912", command=["sh", "-c", "echo first; exec sleep 600"])).ok
    poll(lambda: "first" in node.read_file(out_912), timeout=30, what="task 912 to write its output")
    r = sd.launcher("start", input=start_request("912", command=["true"]))
    assert r.rc == 1 and "already exists (active/running)" in r.stderr, r
    # The unit runs the task through setpriv and env. Its poststop hook is the launcher's
    # script for dash, a root-owned file in the root-owned state dir, run by a plain
    # ExecStopPost= of plain words (which a daemon-reload reads back as they were).
    start = sd.unit("912", "ExecStart")["ExecStart"]
    assert "argv[]=/usr/bin/setpriv --reuid=" in start and " -- /usr/bin/env -i --chdir=" in start, start
    assert " HAKURIVER_TASK_ID=912 " in start and " sh -c echo first; exec sleep 600 " in start, start
    poststop = sd.unit("912", "ExecStopPost")["ExecStopPost"]
    hook = f"{STATE_DIR}/.poststop.sh"
    assert f"argv[]=/bin/sh {hook} 912 {STATE_DIR} ;" in poststop, poststop
    assert node.read_file(hook) == POSTSTOP_SCRIPT + "\n"
    assert shlex.split(node.exec(["stat", "-c", "%U %a", hook]).stdout) == ["root", "644"]
    assert node.read_file(out_912) == "first\n", "a refused second start replaced the running task's log"
    assert sd.launcher("cleanup", "912").ok
    assert sd.unit("912", "LoadState")["LoadState"] == "not-found"
    # A unit of the same name that is not a transient one (a unit file an admin wrote) is
    # refused by systemd-run itself, and left as it was.
    admin_unit = "/etc/systemd/system/hakuriver-task-913.service"
    node.write_file(admin_unit, "[Service]\nExecStart=/bin/sleep 600\n", mode=0o644)
    try:
        node.exec(["systemctl", "daemon-reload"])
        r = sd.launcher("start", input=start_request("913", command=["true"]))
        assert r.rc == 1 and "already exists" in r.stderr, r
        assert sd.unit("913", "LoadState", "Transient") == {"LoadState": "loaded", "Transient": "no"}
        assert node.exec(["test", "-f", admin_unit], check=False).ok
    finally:
        node.exec(["rm", "-f", admin_unit])
        node.exec(["systemctl", "daemon-reload"])
    # A running task unit whose transient file went missing is refused by systemd-run,
    # and the launcher stops nothing on the way out.
    assert sd.launcher("start", input=start_request("914", command=["sleep", "600"])).ok
    node.exec(["rm", "/run/systemd/transient/hakuriver-task-914.service"])
    r = sd.launcher("start", input=start_request("914", command=["true"]))
    assert r.rc == 1 and "already exists (active/running)" in r.stderr, r
    assert sd.unit("914", "ActiveState")["ActiveState"] == "active"
    assert sd.launcher("cleanup", "914").ok

    leftovers = node.exec(["sh", "-c", "ls /root/pwned-* /tmp/pwned-* /etc/hkr-evil 2>/dev/null || true"]).stdout
    assert leftovers == "", f"something ran as root: {leftovers}"
    assert shlex.split(node.exec(["stat", "-c", "%U %a", LAUNCHER]).stdout) == ["root", "755"]


def test_a_time_limit_is_the_units_own_and_holds_without_a_runner(sd: SdCluster) -> None:
    """`--time` on a NULL task is systemd's RuntimeMaxSec=: the unit stops at the limit
    even while no runner runs, and the runner reports `timeout` when it is back."""
    task_id = sd.submit(["sleep", "600"], time_limit="4s")
    sd.wait_state(task_id, {"running"})
    props = sd.unit(task_id, "RuntimeMaxUSec", "TimeoutStopUSec")
    assert (props["RuntimeMaxUSec"], props["TimeoutStopUSec"]) == ("4s", "30s"), props  # runner.timeout_grace
    sd.stop_runner()
    poll(
        lambda: sd.node.exec(["test", "-e", f"{STATE_DIR}/{task_id}.json"], check=False).ok,
        timeout=60,
        what="systemd to stop the unit at its limit with no runner",
    )
    assert sd.task(task_id)["state"] == "running"  # nobody told the Host yet
    sd.start_runner()
    t = sd.wait_final(task_id)
    assert (t["state"], t["exit_code"], t["error"]) == ("timeout", 143, "time limit 4s reached"), t


def test_an_array_of_null_tasks_runs_each_index_as_the_submitter(sd: SdCluster) -> None:
    """`--array` with `--container NULL`: one unit per index, each with its own
    HAKURIVER_ARRAY_INDEX and the batch id, all as the submitter."""
    status, body = sd.api(
        "POST",
        "/api/tasks",
        {
            "command": ["sh", "-c", 'echo "$HAKURIVER_ARRAY_INDEX $HAKURIVER_BATCH_ID $(id -un)"'],
            "container": "NULL",
            "targets": [NODE_NAME],
            "array": "0-2",
        },
        as_user=TASK_USER,
    )
    assert status == 201, body
    batch, ids = body["batch_id"], body["task_ids"]
    assert len(ids) == 3
    for index, task_id in enumerate(ids):
        t = sd.wait_final(task_id)
        assert (t["state"], t["array_index"], t["batch_id"]) == ("completed", index, batch), t
        assert sd.logs(task_id) == f"{index} {batch} {TASK_USER}\n"
