"""Typed application keys of the Runner app (aiohttp `web.AppKey`)."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from ..models import NodeResources
from .executors.base import Executor
from .hostlink import HostLink
from .state import RunnerState
from .supervisor import Supervisor

CONFIG = web.AppKey("config", Config)
RESOURCES = web.AppKey("resources", NodeResources)
STATE = web.AppKey("state", RunnerState)
EXECUTORS = web.AppKey("executors", dict[str, Executor])
SUPERVISOR = web.AppKey("supervisor", Supervisor)
HOSTLINK = web.AppKey("hostlink", HostLink)
