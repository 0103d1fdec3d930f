"""One systemd node per test module, shared by its tests (boots and installs once)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.fixtures import _FACTORIES
from tests.harness.install import install_hakuriver
from tests.harness.node import NodeFactory

from .sdcluster import SdCluster


@pytest.fixture(scope="module")
def _sd_factory(
    request: pytest.FixtureRequest, docker_client: Any, harness_images: dict[str, str]
) -> Iterator[NodeFactory]:
    factory = NodeFactory(docker_client, request.node.nodeid, harness_images)
    try:
        yield factory
    finally:
        errors = factory.cleanup()
    if errors:
        pytest.fail("node teardown failed: " + "; ".join(errors), pytrace=False)


@pytest.fixture(scope="module")
def sd_cluster(_sd_factory: NodeFactory, node_py_image: str, hakuriver_wheelhouse: Any) -> SdCluster:
    """A node with a Host (root) and a Runner (user `runner`) and the launcher installed."""
    node = _sd_factory("sdnode", image=node_py_image, hostname="sdnode")
    install_hakuriver(node, hakuriver_wheelhouse)
    cluster = SdCluster(node)
    cluster.setup()
    return cluster


@pytest.fixture
def sd(request: pytest.FixtureRequest, sd_cluster: SdCluster, _sd_factory: NodeFactory) -> SdCluster:
    """`sd_cluster`, with the node's journal attached to a failing test's report."""
    request.node.stash.setdefault(_FACTORIES, []).append(_sd_factory)
    return sd_cluster
