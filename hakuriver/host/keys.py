"""Typed application keys of the Host app (aiohttp `web.AppKey`)."""

from __future__ import annotations

from aiohttp import web

from ..config import Config
from .cluster import Cluster
from .db import Database
from .environments import EnvironmentManager
from .runner_client import RunnerClient

CONFIG = web.AppKey("config", Config)
DB = web.AppKey("db", Database)
RUNNERS = web.AppKey("runners", RunnerClient)
CLUSTER = web.AppKey("cluster", Cluster)
ENVIRONMENTS = web.AppKey("environments", EnvironmentManager)
