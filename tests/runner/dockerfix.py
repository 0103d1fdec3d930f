"""Fixtures for the runner's Docker tests. Import explicitly:

    from tests.runner.dockerfix import *  # noqa: F403

Every container these tests make carries `org.hakuriver.test=runner-helper`
and a runner name unique to the test; the finalizer removes exactly those.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

import pytest

from hakuriver import naming
from hakuriver.dockerapi import collect_leaked_socket
from hakuriver.models import Mount, NumaNode
from hakuriver.runner.executors.base import LaunchSpec

TEST_LABEL = "org.hakuriver.test"
TEST_LABEL_VALUE = "runner-helper"
IMAGE_WAIT_S = float(os.environ.get("HAKURIVER_TEST_IMAGE_WAIT", "900"))

__all__ = [
    "TEST_LABEL",
    "TEST_LABEL_VALUE",
    "docker_client",
    "task_image",
    "runner_name",
    "make_executor",
    "executor",
    "task_dirs",
    "make_spec",
    "eventually",
    "new_task_id",
    "remove_test_containers",
]


def new_task_id() -> int:
    return secrets.randbits(62) | 1


async def eventually(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or check}")
        await asyncio.sleep(interval)


def remove_test_containers(client: Any, runner: str | None = None) -> list[str]:
    filters = [f"{TEST_LABEL}={TEST_LABEL_VALUE}"]
    if runner is not None:
        filters.append(f"{naming.LABEL_RUNNER}={runner}")
    removed = []
    for c in client.api.containers(all=True, filters={"label": filters}):
        try:
            client.api.remove_container(c["Id"], force=True)
            removed.append(c["Id"])
        except Exception:
            pass
    return removed


@pytest.fixture(scope="session")
def docker_client():
    docker = pytest.importorskip("docker")
    why = None
    try:
        client = docker.from_env(max_pool_size=64)
        client.ping()
    except Exception as exc:
        why = f"no Docker engine: {exc}"
    if why is not None:
        collect_leaked_socket()  # outside the except block: its traceback held the socket
        pytest.skip(why)
    yield client
    client.close()


@pytest.fixture(scope="session")
def task_image(docker_client):
    """The suite's task image (built by tests/images.py); wait for it, never build here."""
    from tests.images import TASK_IMAGE

    docker = pytest.importorskip("docker")
    deadline = time.monotonic() + IMAGE_WAIT_S
    while True:
        try:
            docker_client.api.inspect_image(TASK_IMAGE)
            return TASK_IMAGE
        except docker.errors.ImageNotFound:
            if time.monotonic() > deadline:
                pytest.skip(f"task image {TASK_IMAGE} not present (run `python -m tests.images build`)")
            time.sleep(2)


@pytest.fixture
def runner_name(docker_client):
    name = f"runner-helper-{secrets.token_hex(4)}"
    yield name
    remove_test_containers(docker_client, name)


@pytest.fixture
async def make_executor(docker_client, runner_name):
    """Factory for DockerExecutors of this test's runner (closed at teardown)."""
    from hakuriver.runner.executors.docker import DockerExecutor

    made = []

    def make(name: str | None = None, **kwargs: Any) -> DockerExecutor:
        ex = DockerExecutor(name or runner_name, labels={TEST_LABEL: TEST_LABEL_VALUE}, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        await ex.close()
    remove_test_containers(docker_client, runner_name)
    for ex in made:
        if ex.runner_name != runner_name:
            remove_test_containers(docker_client, ex.runner_name)


@pytest.fixture
async def executor(make_executor):
    return make_executor()


@pytest.fixture
def task_dirs(tmp_path):
    shared = tmp_path / "shared"
    local = tmp_path / "local_temp"
    shared.mkdir()
    local.mkdir()
    # Like a node's: tasks run as their submitter (nobody here), not root, and write there.
    shared.chmod(0o1777)
    local.chmod(0o1777)
    return shared, local


@pytest.fixture
def make_spec(task_dirs, task_image):
    shared, local = task_dirs

    def make(
        command: list[str] | tuple[str, ...],
        *,
        task_id: int | None = None,
        env: dict[str, str] | None = None,
        cores: int | None = None,
        memory: int | None = None,
        image: str | None = None,
        mounts: tuple[Mount, ...] = (),
        numa: NumaNode | None = None,
    ) -> LaunchSpec:
        tid = task_id if task_id is not None else new_task_id()
        return LaunchSpec(
            task_id=tid,
            command=tuple(command),
            env=dict(env or {}),
            stdout_path=naming.stdout_path(str(shared), tid),
            stderr_path=naming.stderr_path(str(shared), tid),
            shared_dir=str(shared),
            local_temp_dir=str(local),
            cores=cores,
            memory=memory,
            image=image or task_image,
            mounts=mounts,
            numa=numa,
        )

    return make
