"""Fixtures of the in-process tier: the real Host and Runner apps in one event loop,
fake executors, no Docker, no systemd (see cluster.py)."""

from __future__ import annotations

import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import InProcCluster, ThreadedCluster

FAKE_NVML_DIR = str(Path(__file__).resolve().parents[1] / "fakes" / "nvml")

ClusterFactory = Callable[..., Awaitable[InProcCluster]]


@pytest.fixture
async def inproc_factory(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ClusterFactory]:
    """`await make(**kwargs)`: an InProcCluster with its Host started; all torn down after."""
    made: list[InProcCluster] = []

    async def make(**kwargs: Any) -> InProcCluster:
        cluster = InProcCluster(tmp_path_factory.mktemp("inproc"), **kwargs)
        made.append(cluster)
        await cluster.start_host()
        return cluster

    try:
        yield make
    finally:
        errors = []
        for cluster in made:
            try:
                await cluster.close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
async def inproc(inproc_factory: ClusterFactory) -> InProcCluster:
    """A Host, no runners yet, default timing."""
    return await inproc_factory()


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedCluster]:
    """A Host in a thread of its own, for blocking tests (`cluster.api(...)`, `cluster.add_runner(name)`)."""
    c = ThreadedCluster(tmp_path_factory.mktemp("inproc"))
    try:
        c.start_host()
        yield c
    finally:
        c.close()


@pytest.fixture
def node_name() -> str:
    return f"n{secrets.token_hex(3)}"


@pytest.fixture
def fake_nvml() -> Iterator[None]:
    """`import pynvml` finds tests/fakes/nvml (GPU counts: `add_runner(gpus=N)`); restored after."""
    saved_path = list(sys.path)
    saved_module = sys.modules.pop("pynvml", None)
    sys.path.insert(0, FAKE_NVML_DIR)
    try:
        yield
    finally:
        sys.path[:] = saved_path
        sys.modules.pop("pynvml", None)
        if saved_module is not None:
            sys.modules["pynvml"] = saved_module


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A CLI under test reads only the config the test gives it: no token or
    config from the environment, and a HOME of its own (no ~/.hakuriver)."""
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
