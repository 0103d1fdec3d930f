"""Typed application keys of the Runner app (aiohttp `web.AppKey`)."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..models import NodeResources
from .capabilities import CapabilityWatch
from .environments import EnvironmentSync
from .executors.base import Executor
from .gpu import GpuProbe
from .hostlink import HostLink
from .state import RunnerState
from .supervisor import Supervisor

CONFIG = web.AppKey("config", Config)
RESOURCES = web.AppKey("resources", NodeResources)
STATE = web.AppKey("state", RunnerState)
EXECUTORS = web.AppKey("executors", dict[str, Executor])
SUPERVISOR = web.AppKey("supervisor", Supervisor)
HOSTLINK = web.AppKey("hostlink", HostLink)
GPU_PROBE = web.AppKey("gpu_probe", GpuProbe)
CAPABILITIES = web.AppKey("capabilities", CapabilityWatch)
"""What this node can run, probed at start-up and refreshed rarely (`runner.capabilities`)."""
ENVIRONMENTS = web.AppKey("environments", EnvironmentSync)
"""Absent when environment sync is off (the default with injected executors)."""
ORDER_TOKEN_KEY = web.AppKey("order_token", str)
"""What the Host must present: the order token this runner chose (its state store keeps it)."""
