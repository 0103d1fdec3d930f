"""Test harness for HakuRiver: real Docker engine, real systemd nodes, no mocks.

Fixtures (registered by tests/conftest.py via ``pytest_plugins = ["tests.harness.fixtures"]``):
``docker_client``, ``harness_images``, ``docker_network``, ``network_factory``,
``node_factory``, ``container_factory``. Helpers importable from here: ``poll``/``apoll``
(deadline-based waiting), ``Node``, ``ExecResult``, ``docker_exec``, ``harness_labels``,
``harness_name``, ``sweep``, ``PROBE_SCRIPT``/``parse_probe`` (cgroup limits).
"""

from .cgroups import PROBE_SCRIPT, parse_probe
from .engine import (
    HARNESS_LABEL,
    NAME_PREFIX,
    SESSION_ID,
    connect_engine,
    harness_labels,
    harness_name,
    sweep,
)
from .node import (
    CommandFailed,
    ContainerFactory,
    ContainerHandle,
    ExecResult,
    Node,
    NodeFactory,
    docker_exec,
)
from .polling import PollTimeout, apoll, poll

__all__ = [
    "HARNESS_LABEL",
    "NAME_PREFIX",
    "PROBE_SCRIPT",
    "SESSION_ID",
    "CommandFailed",
    "ContainerFactory",
    "ContainerHandle",
    "ExecResult",
    "Node",
    "NodeFactory",
    "PollTimeout",
    "apoll",
    "connect_engine",
    "docker_exec",
    "harness_labels",
    "harness_name",
    "parse_probe",
    "poll",
    "sweep",
]
