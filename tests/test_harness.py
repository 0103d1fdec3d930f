"""The test ground itself: real Docker, real systemd in containers, real cgroups."""

from __future__ import annotations

import time

import pytest

from tests.harness import (
    PROBE_SCRIPT,
    CommandFailed,
    PollTimeout,
    parse_probe,
    poll,
)

MiB = 1024 * 1024


def test_poll_returns_first_truthy_value_and_reports_timeouts() -> None:
    calls = []

    def ready_on_third() -> int:
        calls.append(1)
        return len(calls) if len(calls) >= 3 else 0

    assert poll(ready_on_third, timeout=5, interval=0.01, what="third call") == 3

    def boom() -> None:
        raise ConnectionError("refused")

    t0 = time.monotonic()
    with pytest.raises(PollTimeout, match=r"waiting for the thing; last error: ConnectionError"):
        poll(boom, timeout=0.3, interval=0.05, what="the thing", ignore=(ConnectionError,))
    assert 0.25 <= time.monotonic() - t0 < 5
    with pytest.raises(ValueError):  # not ignored: propagates at once
        poll(lambda: int("x"), timeout=5, what="never")


@pytest.mark.docker
@pytest.mark.systemd
def test_systemd_scope_gets_memory_and_cpu_limits(node_factory) -> None:
    node = node_factory("scope")
    assert node.system_state() in ("running", "degraded")
    assert node.exec(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"

    r = node.exec(
        [
            "systemd-run",
            "--scope",
            "--collect",
            "--unit=probe",
            "-p",
            "MemoryMax=64M",
            "-p",
            "CPUQuota=50%",
            "python3",
            "-c",
            PROBE_SCRIPT,
        ]
    )
    probe = parse_probe(r.stdout)
    assert probe["memory_path"].endswith("/probe.scope"), probe
    assert probe["memory_limit"] == 64 * MiB, probe
    assert probe["cpu_quota"] / probe["cpu_period"] == pytest.approx(0.5), probe
    # --collect: the scope is gone once the command ended.
    assert node.exec(["systemctl", "is-active", "probe.scope"], check=False).rc != 0


@pytest.mark.docker
@pytest.mark.systemd
def test_node_exec_files_and_users(node_factory, tmp_path) -> None:
    node = node_factory("exec", hostname="worker-1")
    r = node.exec(["sh", "-c", 'echo out; echo err >&2; echo "$HKR_X"; exit 3'], env={"HKR_X": "x y"}, check=False)
    assert (r.rc, r.stdout, r.stderr) == (3, "out\nx y\n", "err\n")
    with pytest.raises(CommandFailed, match="exited 3"):
        node.exec(["sh", "-c", "exit 3"])
    assert node.exec(["id", "-un"], user="nobody").stdout.strip() == "nobody"
    assert node.exec(["hostname"]).stdout.strip() == "worker-1"

    src = tmp_path / "payload"
    src.mkdir()
    (src / "a.txt").write_text("hello from the controller\n")
    dest = node.copy_in(src, "/opt/in")
    assert dest == "/opt/in/payload"
    assert node.read_file("/opt/in/payload/a.txt") == "hello from the controller\n"
    node.write_file("/etc/hkr-test.conf", "k = 1\n")
    assert node.exec(["cat", "/etc/hkr-test.conf"]).stdout == "k = 1\n"


@pytest.mark.docker
@pytest.mark.systemd
def test_nodes_reach_each_other_by_alias(node_factory, docker_network) -> None:
    a, b = node_factory.start_many(["alpha", "beta"], network=docker_network, aliases=["hkr-peer"])
    assert a.ip(docker_network.name) != b.ip(docker_network.name)
    # A real service on a, managed by a's systemd, reached from b by hostname.
    a.exec(["systemd-run", "--unit=hkr-web", "--working-directory=/etc", "python3", "-m", "http.server", "8080"])
    a.wait_unit_active("hkr-web.service")
    url = "http://alpha:8080/hostname"

    def fetch() -> str | None:
        r = b.exec(["curl", "-fsS", "--max-time", "2", url], check=False)
        return r.stdout if r.rc == 0 else None

    body = poll(fetch, timeout=30, interval=0.25, what=f"{url} from {b.name}")
    assert body.strip() == "alpha"


@pytest.mark.docker
def test_task_container_limits_visible_in_inspect_and_cgroup(container_factory, harness_images) -> None:
    c = container_factory(
        harness_images["task"],
        ["python3", "-c", PROBE_SCRIPT],
        suffix="limits",
        mem_limit=64 * MiB,
        nano_cpus=500_000_000,
    )
    host_config = c.attrs["HostConfig"]
    assert host_config["Memory"] == 64 * MiB
    assert host_config["NanoCpus"] == 500_000_000

    status = c.wait(timeout=60)
    logs = c.logs(stdout=True, stderr=True).decode()
    assert status["StatusCode"] == 0, logs
    probe = parse_probe(logs)
    assert probe["memory_limit"] == 64 * MiB, probe
    assert probe["cpu_quota"] / probe["cpu_period"] == pytest.approx(0.5), probe


@pytest.mark.docker
@pytest.mark.systemd
def test_nested_docker_runs_a_container_inside_a_node(node_factory, harness_images) -> None:
    node = node_factory("dind", docker_in_node=True)
    assert node.exec(["systemctl", "is-active", "docker"]).stdout.strip() == "active"
    driver = node.exec(["docker", "info", "--format", "{{.Driver}}"]).stdout.strip()
    assert driver == "vfs"

    task_image = harness_images["task"]
    node.load_image(task_image)
    r = node.exec(["docker", "run", "--rm", task_image, "sh", "-c", "echo hkr-nested-$((6 * 7))"], timeout=180)
    assert "hkr-nested-42" in r.stdout.split(), r
    assert node.exec(["docker", "ps", "-aq"]).stdout.strip() == ""
