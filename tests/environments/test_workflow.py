"""The environment workflow for real: an environment container on the Host, versioned
tarballs in the shared dir, and a Runner that loads the newest one before its tasks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hakuriver.client import HostClient
from hakuriver.config import config_from_dict
from hakuriver.runner.environments import EnvironmentSync
from tests.integration.cluster import LocalCluster

from .conftest import Made

pytestmark = pytest.mark.docker

LABEL_VERSION = "org.hakuriver.environment.version"


def set_marker(docker_client: Any, name: str, text: str) -> None:
    container = docker_client.containers.get(f"hakuriver-env-{name}")
    code, out = container.exec_run(["sh", "-c", f"echo {text} > /opt/marker"])
    assert code == 0, out


def loads(cluster: LocalCluster, node: str, name: str, version: int | None = None) -> int:
    text = cluster.runners[node].proc.log_path.read_text(errors="replace")
    needle = f"environment {name}: loading tarball"
    lines = [line for line in text.splitlines() if needle in line]
    if version is not None:
        lines = [line for line in lines if f"(version {version})" in line]
    return len(lines)


def image_version(docker_client: Any, name: str) -> int:
    return int(docker_client.images.get(f"hakuriver/{name}:base").labels[LABEL_VERSION])


def run_task(cluster: LocalCluster, node: str, name: str, argv: list[str] | None = None) -> dict[str, Any]:
    [task_id] = cluster.submit(argv or ["cat", "/opt/marker"], container=name, targets=[node])
    task = cluster.wait_final(task_id)
    task["stdout"] = cluster.stdout(task_id)
    return task


async def test_create_tar_then_runners_load_the_newest_version_once(
    cluster: LocalCluster, node_name: str, made: Made, harness_images: dict[str, str], docker_client: Any
) -> None:
    name = made.name()
    cluster.add_runner(node_name)
    tar_dir = made.tarballs_in(cluster.shared / "hakuriver-containers")
    events: list[dict[str, Any]] = []
    async with HostClient(cluster.url, cluster.token, timeout=60) as host:
        # 1. An environment container from a local image; the listing shows only environments.
        created = await host.create_env_container(name, harness_images["task"], progress=events.append)
        assert created["status"] == "running" and created["container"] == f"hakuriver-env-{name}"
        listed = (await host.list_env_containers())["containers"]
        assert name in [c["name"] for c in listed]
        assert all(c["container"].startswith("hakuriver-env-") for c in listed)
        set_marker(docker_client, name, "v1")

        # 2. create-tar: progress, an atomic file, the version on the image.
        v1 = await host.create_tarball(name, progress=events.append)
        assert {"commit", "save"} <= {e["stage"] for e in events}
        assert (tar_dir / v1["file"]).stat().st_size == v1["size"] > 0
        assert not [p for p in tar_dir.iterdir() if p.name.startswith(".")], "a temporary file was left"
        assert image_version(docker_client, name) == v1["version"]
        assert docker_client.containers.get(f"hakuriver-env-{name}").status == "running"

        # 3. A node without the image loads it from the tarball.
        v1_image = docker_client.images.get(f"hakuriver/{name}:base").id
        docker_client.api.tag(v1_image, f"hakuriver/{name}", "test-v1")  # kept to play an outdated node
        docker_client.api.remove_image(f"hakuriver/{name}:base")
        task = run_task(cluster, node_name, name)
        assert (task["state"], task["stdout"]) == ("completed", "v1\n"), task
        assert loads(cluster, node_name, name) == 1

        # 4. A newer version; the node still has v1: three tasks at once, one load.
        set_marker(docker_client, name, "v2")
        v2 = await host.create_tarball(name)
        assert v2["version"] > v1["version"]
        docker_client.api.tag(v1_image, f"hakuriver/{name}", "base")
        ids = cluster.submit(["cat", "/opt/marker"], container=name, targets=[node_name] * 3)
        for task_id in ids:
            task = cluster.wait_final(task_id)
            assert (task["state"], cluster.stdout(task_id)) == ("completed", "v2\n"), task
        assert loads(cluster, node_name, name, v2["version"]) == 1, cluster.debug_logs()
        assert image_version(docker_client, name) == v2["version"]

        # 5. A truncated newest tarball fails the task with the reason; v2 stays usable.
        good = tar_dir / v2["file"]
        broken = tar_dir / f"{name}-{v2['version'] + 1}.tar"
        broken.write_bytes(good.read_bytes()[: v2["size"] // 2])
        task = run_task(cluster, node_name, name)
        assert task["state"] == "failed" and "cannot load tarball" in task["error"], task
        assert "unchanged" in task["error"] and f"delete-tar {name}" in task["error"]
        assert image_version(docker_client, name) == v2["version"]
        started = time.monotonic()
        task = run_task(cluster, node_name, name)  # the same broken file: refused without re-reading it
        assert task["state"] == "failed" and time.monotonic() - started < 15
        assert loads(cluster, node_name, name, v2["version"] + 1) == 1
        deleted = await host.delete_tarball(name, v2["version"] + 1)
        assert [t["file"] for t in deleted["deleted"]] == [broken.name]
        task = run_task(cluster, node_name, name)
        assert (task["state"], task["stdout"]) == ("completed", "v2\n"), task

        # 6. keep_tarballs (2): a third version removes the first.
        set_marker(docker_client, name, "v3")
        v3 = await host.create_tarball(name)
        assert v3["removed"] == [v1["file"]]
        versions = [t["version"] for t in (await host.list_tarballs(name))["tarballs"]]
        assert versions == [v3["version"], v2["version"]]

        # 7. Many tasks at once on a node with an older image: exactly one load.
        docker_client.api.tag(v1_image, f"hakuriver/{name}", "base")
        config = config_from_dict({"paths": {"shared_dir": str(cluster.shared)}})
        sync = EnvironmentSync(config)
        try:
            refs = await asyncio.gather(*(sync.ensure(name) for _ in range(3)))
        finally:
            await sync.close()
        assert refs == [f"hakuriver/{name}:base"] * 3 and sync.loads == 1
        assert image_version(docker_client, name) == v3["version"]

        # 8. An unknown environment fails fast, with the reason; nothing is pulled.
        started = time.monotonic()
        task = run_task(cluster, node_name, f"{name}-missing", ["true"])
        assert task["state"] == "failed" and "unknown environment" in task["error"], task
        assert time.monotonic() - started < 15

        # 9. delete-container removes exactly the environment container.
        await host.delete_env_container(name)
        assert name not in [c["name"] for c in (await host.list_env_containers())["containers"]]
