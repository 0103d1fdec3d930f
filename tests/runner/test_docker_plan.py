"""The pure parts of the Docker backend: no engine needed."""

from __future__ import annotations

import sys

import pytest

from hakuriver import naming
from hakuriver.errors import ExecutorError
from hakuriver.models import Mount, NumaNode, TaskState
from hakuriver.runner.executors.base import NOBODY, ROOT, LaunchSpec, Presence, TaskIdentity
from hakuriver.runner.executors.docker import KernelOomLog, build_plan, exit_result, oom_cgroups_in, presence_of

CID = "87a1f1b7f7c2f2f8d24351ec178d1b470f519a2cfb74f0a48280ea906d7eae39"


def spec(**kw) -> LaunchSpec:
    base = dict(
        task_id=42,
        command=("python3", "-c", "print(1)", "$(id)"),
        env={"A": "1"},
        stdout_path="/s/task_outputs/42.out",
        stderr_path="/s/task_errors/42.err",
        shared_dir="/s",
        local_temp_dir="/lt",
        image="hakuriver/base:base",
    )
    base.update(kw)
    return LaunchSpec(**base)


def test_plan_runs_the_argv_exactly_with_paths_labels_and_env():
    plan = build_plan(spec(), "node-a", extra_labels={"x": "y"})
    c, h = plan.create, plan.host_config
    assert c["entrypoint"] == ["python3"] and c["command"] == ["-c", "print(1)", "$(id)"]
    assert c["name"] == naming.task_container_name(42)
    assert c["working_dir"] == "/shared"
    assert c["labels"] == {"x": "y", naming.LABEL_TASK_ID: "42", naming.LABEL_RUNNER: "node-a"}
    assert c["environment"] == {
        "A": "1",
        "HAKURIVER_TASK_ID": "42",
        "HAKURIVER_SHARED_DIR": "/shared",
        "HAKURIVER_LOCAL_TEMP_DIR": "/local_temp",
        "HOME": "/tmp",  # no identity given: nobody, whose home is not in the image
    }
    assert c["use_config_proxy"] is False and c["tty"] is False
    assert h["mounts"][:2] == [
        {"Type": "bind", "Source": "/s", "Target": "/shared", "ReadOnly": False},
        {"Type": "bind", "Source": "/lt", "Target": "/local_temp", "ReadOnly": False},
    ]
    assert h["privileged"] is False and h["init"] is True and h["auto_remove"] is False
    for key in ("nano_cpus", "mem_limit", "memswap_limit", "device_requests", "cpuset_cpus", "cpuset_mems"):
        assert key not in h


def test_plan_limits_gpus_numa_mounts_privileged():
    plan = build_plan(
        spec(
            cores=3,
            memory=512 << 20,
            gpus=(0, 2),
            numa=NumaNode(id=1, cpus=(4, 5, 6, 7), memory=1 << 30),
            mounts=(Mount("/data", "/data", read_only=True), Mount("/scratch", "/scratch")),
            privileged=True,
        ),
        "n",
    )
    h = plan.host_config
    assert h["nano_cpus"] == 3_000_000_000
    assert h["mem_limit"] == h["memswap_limit"] == 512 << 20
    assert h["device_requests"] == [{"driver": "nvidia", "device_ids": ["0", "2"], "capabilities": [["gpu"]]}]
    assert h["cpuset_cpus"] == "4,5,6,7" and h["cpuset_mems"] == "1"
    assert h["mounts"][2:] == [
        {"Type": "bind", "Source": "/data", "Target": "/data", "ReadOnly": True},
        {"Type": "bind", "Source": "/scratch", "Target": "/scratch", "ReadOnly": False},
    ]
    assert h["privileged"] is True


def test_plan_runs_as_the_given_identity_never_the_images_user():
    alice = TaskIdentity(uid=1234, gid=1300, groups=(27, 1301), home="/home/alice", name="alice")
    plan = build_plan(spec(identity=alice), "n")
    assert plan.create["user"] == "1234:1300"
    assert plan.host_config["group_add"] == ["27", "1301"]
    assert plan.host_config["security_opt"] == ["no-new-privileges"]
    assert plan.create["environment"]["HOME"] == "/tmp"  # /home/alice is not mounted
    # Without an identity the task runs as nobody, not as whatever the image says.
    for s in (spec(), spec(identity=NOBODY)):
        plan = build_plan(s, "n")
        assert plan.create["user"] == "65534:65534" and "group_add" not in plan.host_config
        assert plan.host_config["security_opt"] == ["no-new-privileges"]
    # Privileged or root, no-new-privileges stays.
    plan = build_plan(spec(identity=ROOT, privileged=True), "n")
    assert plan.create["user"] == "0:0" and plan.host_config["security_opt"] == ["no-new-privileges"]
    assert "HOME" not in plan.create["environment"]


@pytest.mark.parametrize(
    ("mounts", "env", "home"),
    [
        ((Mount("/home", "/home"),), {}, "/home/alice"),
        ((Mount("/nfs/home/alice", "/home/alice"),), {}, "/home/alice"),
        ((Mount("/home", "/homes"),), {}, "/tmp"),
        ((), {"HOME": "/shared/me"}, "/shared/me"),
    ],
)
def test_home_is_the_accounts_where_visible_else_tmp(mounts, env, home):
    alice = TaskIdentity(uid=1234, gid=1300, home="/home/alice", name="alice")
    plan = build_plan(spec(identity=alice, mounts=mounts, env=env), "n")
    assert plan.create["environment"]["HOME"] == home


def test_plan_is_accepted_by_the_sdk():
    docker = pytest.importorskip("docker")
    plan = build_plan(
        spec(cores=1, memory=1 << 30, gpus=(1,), numa=NumaNode(0, (0, 1), 0), identity=TaskIdentity(5, 6, (7,))),
        "n",
    )
    hc = docker.types.HostConfig(version="1.41", **plan.host_config)
    assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["GroupAdd"] == ["7"]
    assert hc["NanoCpus"] == 1_000_000_000 and hc["Memory"] == 1 << 30
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["1"]
    assert hc["LogConfig"]["Type"] == "json-file"


def test_plan_refuses_empty_command_and_missing_image():
    with pytest.raises(ExecutorError):
        build_plan(spec(command=()), "n")
    with pytest.raises(ExecutorError):
        build_plan(spec(image=None), "n")


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"Status": "exited", "ExitCode": 0}, (TaskState.COMPLETED, 0)),
        ({"Status": "exited", "ExitCode": 3}, (TaskState.FAILED, 3)),
        ({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, (TaskState.KILLED_OOM, 137)),
        ({"Status": "exited", "ExitCode": 0, "OOMKilled": True}, (TaskState.COMPLETED, 0)),
        ({"Status": "created", "ExitCode": 0}, (TaskState.FAILED, None)),
    ],
)
def test_exit_result(state, expected):
    r = exit_result(state)
    assert (r.state, r.exit_code) == expected
    if r.state is TaskState.FAILED and r.exit_code:
        assert r.error == f"exited with code {r.exit_code}"


def test_exit_result_uses_the_kernel_log_when_docker_misses_the_oom():
    assert exit_result({"Status": "exited", "ExitCode": 137}, kernel_oom=True).state is TaskState.KILLED_OOM


def test_presence_of():
    assert presence_of({"Running": True, "Paused": True}) is Presence.PAUSED
    assert presence_of({"Running": True}) is Presence.RUNNING
    assert presence_of({"Running": False, "Status": "exited"}) is Presence.EXITED


def test_oom_records_name_the_container():
    summary = (
        f"oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset={CID},mems_allowed=0,"
        f"oom_memcg=/docker/{CID},task_memcg=/docker/{CID},task=python3,pid=29750,uid=0"
    )
    assert oom_cgroups_in(summary) == [CID]
    systemd = f"oom-kill:constraint=CONSTRAINT_MEMCG,oom_memcg=/system.slice/docker-{CID}.scope,task_memcg=/system.slice/docker-{CID}.scope,task=x,pid=1,uid=0"
    assert oom_cgroups_in(systemd) == [CID]
    assert oom_cgroups_in(f"Task in /docker/{CID} killed as a result of limit of /docker/{CID}") == [CID]
    assert oom_cgroups_in("Memory cgroup out of memory: Killed process 1 (python3)") == []


def test_kernel_oom_log_reads_records_from_a_kmsg_like_file(tmp_path):
    # /dev/kmsg gives one record per read; a FIFO-free stand-in: a file read in 8 KiB
    # chunks works the same for one short record.
    kmsg = tmp_path / "kmsg"
    kmsg.write_text(f"6,1065,812301565,-;oom-kill:constraint=CONSTRAINT_MEMCG,task_memcg=/docker/{CID},task=p,pid=1\n")
    log = KernelOomLog(str(kmsg))
    assert log.killed(CID) is True
    assert log.killed("f" * 64) is False
    log.close()
    assert KernelOomLog(str(tmp_path / "missing")).killed(CID) is False


@pytest.mark.skipif(sys.platform != "linux", reason="linux only")
def test_importing_the_registry_does_not_import_the_sdk():
    import subprocess

    code = (
        "import sys; import hakuriver.runner.executors as e; "
        "assert 'docker' not in sys.modules, 'SDK imported'; "
        "e.executor_class('docker'); assert 'docker' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_registry():
    from hakuriver.runner.executors import EXECUTORS, DockerExecutor, FakeExecutor, SystemdExecutor, executor_class

    assert EXECUTORS == {"docker": DockerExecutor, "fake": FakeExecutor, "systemd": SystemdExecutor}
    assert executor_class("fake") is FakeExecutor
    with pytest.raises(ExecutorError, match="unknown executor 'podman'.*docker, fake, systemd"):
        executor_class("podman")


def test_missed_after_aligns_only_when_certain():
    from hakuriver.runner.executors.docker import missed_after

    log = [(1, f"t{i}".encode(), b"x") for i in range(100)]
    window = log[-10:]
    assert missed_after(window, log[:97][-10:]) == log[97:]
    assert missed_after(window, log[-10:]) == []
    assert missed_after(window, log[:80][-10:]) is None  # too many missed: not trusted
    same = [(1, b"t", b"y")] * 10  # a long line's identical partial frames
    assert missed_after(same, same) is None
    assert missed_after(window, []) is None


def test_a_task_sees_the_nodes_name_as_its_hostname():
    assert build_plan(spec(), "gpu-node-3.lab").create["hostname"] == "gpu-node-3.lab"
    # A node name Docker would refuse as a hostname keeps Docker's default.
    for odd in ("under_score", "-lead", "x" * 64):
        assert "hostname" not in build_plan(spec(), odd).create
