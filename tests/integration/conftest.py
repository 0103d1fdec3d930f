"""Fixtures for tests that run a real Host and real Runners on loopback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from .cluster import TEST_ENV, LocalCluster, remove_runner_containers

ENV_IMAGE = f"hakuriver/{TEST_ENV}:base"


@pytest.fixture(scope="session")
def env_image(docker_client: Any, harness_images: dict[str, str]) -> str:
    """The harness task image, tagged as the tests' default environment."""
    docker_client.images.get(harness_images["task"]).tag(f"hakuriver/{TEST_ENV}", "base")
    return ENV_IMAGE


@pytest.fixture
def cluster_factory(tmp_path_factory: pytest.TempPathFactory, docker_client: Any, env_image: str) -> Iterator[Any]:
    """`make(**kwargs) -> LocalCluster` with its Host running; everything is torn down after."""
    made: list[LocalCluster] = []

    def make(**kwargs: Any) -> LocalCluster:
        c = LocalCluster(root=tmp_path_factory.mktemp("cluster"), **kwargs)
        made.append(c)
        c.start_host()
        return c

    yield make
    for c in made:
        c.shutdown()
        remove_runner_containers(docker_client, list(c.runners))


@pytest.fixture
def cluster(cluster_factory: Any) -> LocalCluster:
    return cluster_factory()


@pytest.fixture
def node_name() -> str:
    return f"n{secrets.token_hex(3)}"
