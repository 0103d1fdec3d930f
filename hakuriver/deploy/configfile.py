"""The commented starter config that `hakuriver.init config` writes.

`render_config(overrides)` is pure: every section and key of `Config` in
declaration order, each with a comment saying what it does, set to the
override when one is given and to the built-in default otherwise. The text
loads back with `hakuriver.config.read_config_file` to exactly those values
(tests/init checks it, and that every key of `Config` has a comment here).

`write_private_file()` creates a file readable by its owner only from the
first byte: created 0600 under a temporary name in the target directory, then
renamed over the target, so neither a half-written nor a world-readable file
ever exists under the final name.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import toml

from ..config import SECTIONS, Config
from ..safefiles import write_file

TOKEN_BYTES = 32
"""`secrets.token_urlsafe(32)`: 256 random bits, 43 characters."""

SECTION_COMMENTS: dict[str, str] = {
    "network": "Where the Host and this Runner listen, and how they reach each other.",
    "paths": "Storage. shared_dir must be the same path on every node (NFS or similar).",
    "database": "The Host's SQLite database.",
    "timing": "Heartbeats and liveness (seconds).",
    "environment": "Tasks run with --container NULL (systemd units on the node).",
    "docker": "Docker environments and the policy for Docker tasks.",
    "auth": "Credentials. Keep this file private (mode 0600).",
    "tls": "HTTPS with a cluster CA (hakuriver.init tls makes one).",
    "runner": "This Runner's identity.",
    "limits": "Host: per-user limits, the defaults for users without their own (hakuriver.admin user set).",
    "metrics": "Host: Prometheus metrics at GET /metrics (docs/monitoring.md).",
    "scheduler": "Host: the queue's order: priority, then fair share between users, then submission.",
    "dashboard": "Host: the web dashboard at /dashboard/ on the Host's own port.",
}

KEY_COMMENTS: dict[str, str] = {
    "network.host_bind_ip": "Address the Host listens on.",
    "network.host_port": "Host API port.",
    "network.host_ssh_proxy_port": "SSH relay port for interactive containers.",
    "network.host_reachable_address": "How Runners and CLIs reach the Host (an address of the Host machine).",
    "network.runner_address": "How the Host reaches this Runner; the Runner also listens on it.",
    "network.runner_port": "Runner API port (one per Runner on a machine).",
    "network.keepalive_timeout": "Seconds a connection may idle, or take to send a request's headers.",
    "network.request_body_timeout": "Seconds to send a request body (an upload: the longest pause in it).",
    "network.max_connections": "Connections a service holds at once; more are closed at once.",
    "network.max_connections_per_address": "Connections one client address may hold (Runners are exempt).",
    "paths.shared_dir": "REQUIRED. Shared by all nodes at this same path: task logs, environment tarballs. "
    "Mounted at /shared in tasks; the services' working directory.",
    "paths.local_temp_dir": "REQUIRED for Runners. Node-local scratch, mounted at /local_temp in tasks.",
    "paths.numactl_path": "numactl binary; empty means `numactl` found on PATH.",
    "paths.host_log_file": "Optional log file for the Host besides stderr/journald; empty: none.",
    "paths.runner_log_file": "Optional log file for the Runner besides stderr/journald; empty: none.",
    "database.db_file": "REQUIRED for the Host. SQLite file; its directory must exist.",
    "database.retain_days": "Purge final tasks and their log files this many days after they end; 0: keep forever.",
    "timing.heartbeat_interval": "Seconds between Runner heartbeats.",
    "timing.heartbeat_timeout_factor": (
        "A node is offline after interval x factor seconds without a heartbeat (at least 2)."
    ),
    "timing.cleanup_check_interval": "Seconds between the Host's dead-runner sweeps.",
    "environment.runner_user": (
        "Account for --container NULL tasks of users without a unix_user; empty: such tasks are refused."
    ),
    "docker.container_dir": "Folder under shared_dir holding environment tarballs.",
    "docker.default_container_name": "Environment used when a task names none.",
    "docker.initial_base_image": "Image the default environment is created from.",
    "docker.tasks_privileged": "Default for --privileged, and whether users may ask for it at all.",
    "docker.additional_mounts": 'Mounts added to every Docker task: ["host:container[:ro]", ...].',
    "docker.allowed_mount_prefixes": "Host paths under which users may --mount; empty: no user mounts. "
    "/ can never be allowed.",
    "docker.keep_tarballs": "Tarball versions of each environment to keep.",
    "docker.task_user": "Docker tasks run as the submitter's unix_user; no unix_user: submitter = nobody, or root.",
    "docker.max_upload_size": "Largest environment tarball import-tar accepts (e.g. 20G).",
    "auth.token": "A client's own API token (hakuriver.admin user add prints one); $HAKURIVER_TOKEN wins.",
    "auth.admin_token": "Host: the first admin's credential; clients on this machine use it when token is empty.",
    "auth.admin_user": "The user name of admin_token's tasks.",
    "auth.runner_token": "Host and Runners: the cluster secret Runners present. Users never hold it.",
    "tls.enabled": "Serve and speak HTTPS (true) or plain HTTP (false, one-machine use).",
    "tls.ca_file": "The cluster CA certificate (PEM) peers are checked against.",
    "tls.cert_file": "This service's certificate (PEM).",
    "tls.key_file": "This service's private key (PEM, mode 0600).",
    "runner.name": "Node name this Runner registers as; empty means the hostname. "
    "Give each Runner on one machine its own.",
    "runner.state_dir": "The Runner's private state (0700); empty: ~/.hakuriver/state. Never under a task mount.",
    "runner.timeout_grace": "Seconds a task at its time limit (--time) gets between SIGTERM and SIGKILL.",
    "limits.default_max_cores": "Cores one user's tasks may hold at once; 0: unlimited.",
    "limits.default_max_gpus": "GPUs one user's tasks may hold at once; 0: unlimited.",
    "limits.default_max_running": "Tasks of one user holding resources at once (running, paused); 0: unlimited.",
    "metrics.scrape_token": "The token Prometheus presents, on /metrics only (admin tokens work too); "
    "empty: admins only.",
    "scheduler.fairshare_half_life": "Host: how fast users' recent usage is forgotten by the queue's fair share "
    '(7d, 12h); "0": off (FIFO within a priority).',
    "scheduler.fairshare_gpu_weight": "Host: core-seconds one GPU-second counts as in a user's fair-share usage.",
    "dashboard.enabled": "Serve the web dashboard (log in with a user token).",
    "dashboard.session_hours": "Hours a dashboard login lasts; sessions are in memory: a Host restart ends them.",
}


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def render_config(overrides: Mapping[str, Mapping[str, Any]] | None = None, *, header: str = "") -> str:
    """The commented TOML text: defaults, with `overrides` ({section: {key: value}}) applied.

    Unknown sections or keys in `overrides` are a `KeyError` (a caller bug).
    """
    overrides = overrides or {}
    defaults = Config().to_dict()
    for section, values in overrides.items():
        if section not in defaults:
            raise KeyError(f"unknown config section {section!r}")
        for key in values:
            if key not in defaults[section]:
                raise KeyError(f"unknown config key {section}.{key}")
    lines: list[str] = []
    if header:
        lines += [f"# {line}".rstrip() for line in header.splitlines()] + [""]
    for section in SECTIONS:
        lines.append(f"# {SECTION_COMMENTS[section]}")
        lines.append(f"[{section}]")
        for key, default in defaults[section].items():
            value = overrides.get(section, {}).get(key, default)
            lines.append(f"# {KEY_COMMENTS[f'{section}.{key}']}")
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    # toml's own encoder for one value: strings escaped, lists, bools, numbers.
    text = toml.dumps({"v": value}).strip()
    assert text.startswith("v = ")
    return text[len("v = ") :]


def config_keys() -> dict[str, tuple[str, ...]]:
    """Every key of `Config`, by section, in declaration order."""
    return {name: tuple(f.name for f in dataclasses.fields(cls)) for name, cls in SECTIONS.items()}


def write_private_file(path: Path, text: str, *, overwrite: bool) -> None:
    """Write `text` to `path` with mode 0600 from the start (see the module doc and
    `safefiles.write_file`). Missing parent directories are created with mode 0700."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_file(path, text, mode=0o600, overwrite=overwrite)
