"""Execution backends: a closed registry of the `Executor` implementations.

The runner builds its backends by name through it (`runner.app.default_executors`);
an unknown name is an ExecutorError that lists the known ones.

Importing this package does not import the Docker SDK: `docker/` loads it
(through `hakuriver.dockerapi`) when a `DockerExecutor` is first used. `systemd.py` needs nothing beyond the
standard library (it drives the root-owned task launcher through sudo).
"""

from __future__ import annotations

from ...errors import ExecutorError
from .base import Capabilities, Executor, Fingerprint, Handle, LaunchSpec, Presence
from .docker import DockerExecutor
from .fake import FakeExecutor
from .systemd import SystemdExecutor

EXECUTORS: dict[str, type[Executor]] = {
    DockerExecutor.name: DockerExecutor,
    FakeExecutor.name: FakeExecutor,
    SystemdExecutor.name: SystemdExecutor,
}


def executor_class(name: str) -> type[Executor]:
    """The backend called `name`; ExecutorError naming the known ones otherwise."""
    try:
        return EXECUTORS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(EXECUTORS))
        raise ExecutorError(f"unknown executor {name!r}; known executors: {known}") from None


__all__ = [
    "EXECUTORS",
    "Capabilities",
    "DockerExecutor",
    "Executor",
    "ExecutorError",
    "FakeExecutor",
    "Fingerprint",
    "Handle",
    "LaunchSpec",
    "Presence",
    "SystemdExecutor",
    "executor_class",
]
