"""Typed application keys of the Host app (aiohttp `web.AppKey`)."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from .accounts import Accounts
from .changes import ChangeFeed
from .cluster import Cluster
from .control import TaskControl
from .db import Database
from .dispatch import Dispatcher
from .environments import EnvironmentManager
from .liveness import Liveness
from .metrics import HostMetrics
from .reports import Reports
from .runner_client import RunnerClient
from .sessions import Sessions

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
ACCOUNTS = web.AppKey("accounts", Accounts)
RUNNERS = web.AppKey("runners", RunnerClient)
CLUSTER = web.AppKey("cluster", Cluster)
CONTROL = web.AppKey("control", TaskControl)
REPORTS = web.AppKey("reports", Reports)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
LIVENESS = web.AppKey("liveness", Liveness)
ENVIRONMENTS = web.AppKey("environments", EnvironmentManager)
METRICS = web.AppKey("metrics", HostMetrics)
SESSIONS = web.AppKey("sessions", Sessions)
CHANGES = web.AppKey("changes", ChangeFeed)
