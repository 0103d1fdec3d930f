"""Fixtures for the environment workflow: unique environment names, cleaned up exactly.

The cluster fixtures are those of tests/integration (a real Host and Runners on
loopback, sharing this machine's Docker engine).
"""

from __future__ import annotations

import io
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.integration.conftest import cluster, cluster_factory, env_image, node_name  # noqa: F401 - fixtures

ENV_LABEL = "org.hakuriver.environment"


def remove_environment(client: Any, name: str) -> None:
    """Remove what HakuRiver made for `name` on this engine: its environment container,
    every tag of hakuriver/<name>, and the images labelled as this environment's."""
    try:
        client.api.remove_container(f"hakuriver-env-{name}", force=True)
    except docker.errors.NotFound:
        pass
    for c in client.containers.list(all=True, sparse=True, filters={"label": f"{ENV_LABEL}={name}"}):
        c.remove(force=True)
    for image in client.images.list(name=f"hakuriver/{name}"):
        for tag in image.tags:
            if tag.startswith(f"hakuriver/{name}:"):
                try:
                    client.api.remove_image(tag)
                except docker.errors.NotFound:
                    pass
    for _ in range(5):  # children before parents: repeat while something goes
        left = client.images.list(all=True, filters={"label": f"{ENV_LABEL}={name}"})
        if not left:
            return
        for image in left:
            try:
                client.api.remove_image(image.id, force=True)
            except docker.errors.APIError:
                pass


class Made:
    """What a test made on the engine, removed at teardown (environments first, then images)."""

    def __init__(self, client: Any):
        self.client = client
        self.names: list[str] = []
        self.images: list[str] = []
        self.tarball_dirs: list[Path] = []

    def tarballs_in(self, directory: Path) -> Path:
        """Remove this test's environments' tarballs from `directory` too."""
        self.tarball_dirs.append(directory)
        return directory

    def name(self) -> str:
        """A fresh environment name."""
        name = f"hkrt-{secrets.token_hex(4)}"
        self.names.append(name)
        return name

    def tiny_image(self) -> str:
        """A one-file image made with `docker import` (no registry needed); its tag."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"tiny\n"
            info = tarfile.TarInfo("hello.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        repo, tag = f"hakuriver-test-tiny/{secrets.token_hex(4)}", "1"
        self.client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=tag)
        self.images.append(f"{repo}:{tag}")
        return f"{repo}:{tag}"

    def cleanup(self) -> None:
        for name in self.names:
            remove_environment(self.client, name)
            for directory in self.tarball_dirs:
                for path in directory.glob(f"{name}-*.tar"):
                    path.unlink(missing_ok=True)
        for tag in self.images:
            try:
                self.client.api.remove_image(tag, force=True)
            except docker.errors.NotFound:
                pass


@pytest.fixture
def made(docker_client: Any) -> Iterator[Made]:
    m = Made(docker_client)
    yield m
    m.cleanup()
