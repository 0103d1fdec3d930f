"""Configuration: TOML files resolved to frozen, typed objects.

Lookup order (first hit wins, no merging between files):
`--config PATH`, `$HAKURIVER_CONFIG`, `~/.hakuriver/config.toml`,
`/etc/hakuriver/client.toml` (a machine-wide client config holding no
secret: the Host's address, written by the Ansible roles), built-in
defaults. Key names are those of HakuRiver 0.3 (see the reference page);
new settings live in new sections (`auth`, `runner`) rather than renamed keys.

Unknown sections or keys and wrongly typed values are errors: a typo in a
scheduler's config silently falling back to a default is the kind of surprise
a lab admin should never meet. Nothing here touches the disk at import time.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

import toml

from .errors import ConfigError, ValidationError
from .parsing import parse_duration, parse_size

DEFAULT_CONFIG_PATH = Path("~/.hakuriver/config.toml")
SYSTEM_CLIENT_CONFIG_PATH = Path("/etc/hakuriver/client.toml")
CONFIG_ENV_VAR = "HAKURIVER_CONFIG"
TOKEN_ENV_VAR = "HAKURIVER_TOKEN"  # noqa: S105 - the variable's name, not a secret
DOCKER_TASK_USERS = ("submitter", "root")


@dataclass(frozen=True)
class NetworkConfig:
    host_bind_ip: str = "0.0.0.0"  # noqa: S104 - the Host serves the lab network by default
    host_port: int = 8000
    host_ssh_proxy_port: int = 8002
    host_reachable_address: str = "127.0.0.1"
    runner_address: str = "127.0.0.1"
    runner_port: int = 8001
    keepalive_timeout: float = 20.0
    """Seconds a connection may sit idle, or take to send a request's headers,
    before the service closes it (after connecting, or after an answer)."""
    request_body_timeout: float = 60.0
    """Seconds to send a request's body; for an environment upload, the
    longest silence allowed between two parts of it."""
    max_connections: int = 4096
    """Connections a service holds at once; beyond, new ones are closed at
    once (lowered to what the open-file limit allows)."""
    max_connections_per_address: int = 256
    """Connections one client address may hold at once. A Runner's address is
    exempt once it authenticated as a Runner (see docs/security.md)."""


@dataclass(frozen=True)
class PathsConfig:
    shared_dir: str = ""
    local_temp_dir: str = ""
    numactl_path: str = ""
    """Empty means `numactl` found on PATH."""
    host_log_file: str = ""
    runner_log_file: str = ""


@dataclass(frozen=True)
class DatabaseConfig:
    db_file: str = ""
    retain_days: int = 0
    """Final tasks (and their log files) older than this many days are
    purged (`host/retention.py`); 0 keeps them forever."""


@dataclass(frozen=True)
class TimingConfig:
    heartbeat_interval: float = 5.0
    heartbeat_timeout_factor: float = 6.0
    cleanup_check_interval: float = 10.0

    @property
    def heartbeat_timeout(self) -> float:
        return self.heartbeat_interval * self.heartbeat_timeout_factor


@dataclass(frozen=True)
class EnvironmentConfig:
    runner_user: str = ""
    """The 0.3 name: the account `--container NULL` tasks of users *without* a
    Unix account run as. Empty (the default): such tasks are refused. Tasks of
    users with a `unix_user` always run as that account."""


@dataclass(frozen=True)
class DockerConfig:
    container_dir: str = "hakuriver-containers"
    default_container_name: str = "hakuriver-base"
    initial_base_image: str = "python:3.12-alpine"
    tasks_privileged: bool = False
    """Default for --privileged, and whether users may ask for it at all."""
    additional_mounts: tuple[str, ...] = ()
    """Mounts added to every Docker task, "host:container[:ro]"; set by the admin."""
    allowed_mount_prefixes: tuple[str, ...] = ()
    """Host paths under which users may `--mount`. Empty: no user mounts."""
    keep_tarballs: int = 2
    """How many tarball versions of each environment to keep."""
    task_user: str = "submitter"
    """Who Docker tasks run as. `submitter`: the submitter's Unix account
    (`unix_user`), and `nobody` for users without one. `root`: users without
    an account run as root in the container (an admin's explicit choice)."""
    max_upload_size: str = "20G"
    """The largest environment tarball `import-tar` accepts (a size: 512M,
    20G); the Host refuses a bigger one with 413 before storing it."""


@dataclass(frozen=True)
class AuthConfig:
    token: str = ""
    """A client's own API token (a user's, from `hakuriver.admin user add`).
    `$HAKURIVER_TOKEN` wins over it. On a Host or Runner whose config has no
    `admin_token` / `runner_token`, this 0.4-dev single token stands in for
    both (the services log a warning saying how to split them)."""
    admin_token: str = ""
    """Host: the first admin's credential (user `admin_user`). A client whose
    config has no `token` uses it, so the Host machine's config works as is."""
    admin_user: str = "admin"
    """The user name tasks submitted with `admin_token` carry."""
    runner_token: str = ""
    """The cluster secret Runners present to the Host. Host and Runners hold
    it; users never do."""

    def effective_admin_token(self) -> str:
        return self.admin_token or self.token

    def effective_runner_token(self) -> str:
        return self.runner_token or self.token

    def client_token(self, environ: Mapping[str, str] | None = None) -> str:
        """The token a CLI sends: $HAKURIVER_TOKEN, then `token`, then `admin_token`."""
        environ = os.environ if environ is None else environ
        return environ.get(TOKEN_ENV_VAR, "").strip() or self.token or self.admin_token


@dataclass(frozen=True)
class TlsConfig:
    enabled: bool = False
    """Speak HTTPS: the Host and Runners serve it, clients and Runners use it."""
    ca_file: str = ""
    """The cluster CA (PEM) that peers' certificates are checked against."""
    cert_file: str = ""
    """This service's certificate (PEM), signed by the cluster CA."""
    key_file: str = ""
    """This service's private key (PEM, mode 0600)."""


@dataclass(frozen=True)
class RunnerConfig:
    name: str = ""
    """The node name this runner registers as; empty means the hostname."""
    state_dir: str = ""
    """Where the runner keeps its state (tasks, undelivered results, its node
    key). Never inside a directory mounted into tasks. Empty means
    `~/.hakuriver/state` of the service's user."""
    timeout_grace: float = 30.0
    """Seconds between the SIGTERM a task gets at its time limit and the
    SIGKILL that follows if it has not ended (`--time`)."""


@dataclass(frozen=True)
class LimitsConfig:
    """Cluster-wide defaults of the per-user limits; a user's own setting
    (`hakuriver.admin user set`) wins. 0 means unlimited."""

    default_max_cores: int = 0
    """Cores one user's tasks may hold at once."""
    default_max_gpus: int = 0
    """GPUs one user's tasks may hold at once."""
    default_max_running: int = 0
    """Tasks of one user holding resources at once (assigning, running, paused)."""


@dataclass(frozen=True)
class MetricsConfig:
    """Host: the Prometheus endpoint `GET /metrics`."""

    scrape_token: str = ""
    """The bearer token a Prometheus server presents on /metrics (and nowhere
    else); an admin's token works too. Empty: admins only."""


@dataclass(frozen=True)
class SchedulerConfig:
    """The order of the pending queue (README: queue policy): priority first,
    then fair share between users, then submission order."""

    fairshare_half_life: str = "7d"
    """How fast a user's recent usage is forgotten: a duration (`7d`, `12h`);
    "0" turns fair share off (FIFO within a priority)."""
    fairshare_gpu_weight: float = 10.0
    """Core-seconds one GPU-second counts as in a user's usage."""

    @property
    def half_life_seconds(self) -> int:
        """`fairshare_half_life` in seconds; 0 when fair share is off."""
        return parse_half_life(self.fairshare_half_life)


def parse_half_life(text: str) -> int:
    """A fair-share half-life in seconds: "0" (off) or a duration up to 30 days."""
    if text.strip() in ("0", "0s", "off"):
        return 0
    return parse_duration(text)


@dataclass(frozen=True)
class DashboardConfig:
    enabled: bool = True
    """Serve the web dashboard at /dashboard/ (login with a user token)."""
    session_hours: float = 12.0
    """Hours a dashboard login lasts (sessions live in the Host's memory: a restart ends them)."""


@dataclass(frozen=True)
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    docker: DockerConfig = field(default_factory=DockerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    source: str | None = field(default=None, compare=False)
    """The file this config was read from, or None for built-in defaults."""

    # -- derived values -------------------------------------------------
    @property
    def host_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.network.host_reachable_address)}:{self.network.host_port}"

    @property
    def runner_url(self) -> str:
        return f"{self.scheme}://{_url_host(self.network.runner_address)}:{self.network.runner_port}"

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

    @property
    def runner_name(self) -> str:
        return self.runner.name or socket.gethostname()

    def require(self, *keys: str) -> None:
        """Fail with one clear message naming every required key that is empty."""
        missing = [k for k in keys if not _get_dotted(self, k)]
        if missing:
            where = self.source or "the built-in defaults (no config file found)"
            raise ConfigError(f"{', '.join(missing)} must be set in {where}")

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for f in fields(self):
            if f.name == "source":
                continue
            section = dataclasses.asdict(getattr(self, f.name))
            out[f.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address and not address.startswith("[") else address


def _get_dotted(config: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return getattr(getattr(config, section), name)


SECTIONS: dict[str, type] = {
    f.name: f.type if isinstance(f.type, type) else get_type_hints(Config)[f.name]
    for f in fields(Config)
    if f.name != "source"
}


def _coerce(section: str, key: str, value: Any, expected: Any) -> Any:
    where = f"{section}.{key}"
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, not {value!r}")
        if value < 0:
            raise ConfigError(f"{where} must not be negative")
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        if value <= 0:
            raise ConfigError(f"{where} must be greater than zero")
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    if expected == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings, not {value!r}")
        return tuple(value)
    raise AssertionError(f"unhandled config type {expected!r}")  # pragma: no cover


def config_from_dict(data: Mapping[str, Any], source: str | None = None) -> Config:
    """Build a Config from parsed TOML, refusing unknown keys and wrong types."""
    where = source or "config"
    sections: dict[str, Any] = {}
    for name, values in data.items():
        if name not in SECTIONS:
            known = ", ".join(sorted(SECTIONS))
            raise ConfigError(f"{where}: unknown section [{name}] (known: {known})")
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: [{name}] must be a table")
        cls = SECTIONS[name]
        hints = get_type_hints(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in hints:
                known = ", ".join(sorted(hints))
                raise ConfigError(f"{where}: unknown key {name}.{key} (known in [{name}]: {known})")
            kwargs[key] = _coerce(name, key, value, hints[key])
        sections[name] = cls(**kwargs)
    config = Config(**sections, source=source)
    timing = config.timing
    if timing.heartbeat_timeout_factor < 2:
        raise ConfigError(
            f"{where}: timing.heartbeat_timeout_factor must be at least 2, or one late heartbeat marks a node offline"
        )
    if config.runner.timeout_grace > 3600:
        raise ConfigError(f"{where}: runner.timeout_grace must be at most 3600 seconds")
    for key in ("max_connections", "max_connections_per_address"):
        if getattr(config.network, key) < 1:
            raise ConfigError(f"{where}: network.{key} must be at least 1")
    try:
        config.scheduler.half_life_seconds  # noqa: B018 (validates the duration)
    except ValidationError as exc:
        raise ConfigError(
            f"{where}: scheduler.fairshare_half_life: {exc.message.replace('time limit', 'duration')}"
        ) from None
    try:
        parse_size(config.docker.max_upload_size)
    except ValidationError as exc:
        raise ConfigError(f"{where}: docker.max_upload_size: {exc.message}") from None
    if config.docker.task_user not in DOCKER_TASK_USERS:
        raise ConfigError(
            f"{where}: docker.task_user must be one of {', '.join(DOCKER_TASK_USERS)}, not {config.docker.task_user!r}"
        )
    return config


def resolve_config_path(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    system_path: Path | None = None,
    *,
    client: bool = False,
) -> Path | None:
    """The file the lookup order selects, or None for built-in defaults.

    An explicitly named file (flag or env var) that does not exist is an
    error; only the default locations may be absent. Only a client
    (`client=True`: the CLIs that talk to the Host) falls back to the
    machine-wide client config, for which `system_path` stands in (tests); a
    service never starts from a client's file.
    """
    environ = os.environ if environ is None else environ
    if path:
        candidate = Path(path).expanduser()
        if not candidate.is_file():
            raise ConfigError(f"config file {candidate} does not exist")
        return candidate.resolve()
    env_path = environ.get(CONFIG_ENV_VAR)
    if env_path:
        candidate = Path(env_path).expanduser()
        if not candidate.is_file():
            raise ConfigError(f"${CONFIG_ENV_VAR} names {candidate}, which does not exist")
        return candidate.resolve()
    home = environ.get("HOME")
    default = Path(home) / ".hakuriver" / "config.toml" if home else DEFAULT_CONFIG_PATH.expanduser()
    if default.is_file():
        return default.resolve()
    system = SYSTEM_CLIENT_CONFIG_PATH if system_path is None else system_path
    return system if client and system.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    client: bool = False,
    system_path: Path | None = None,
) -> Config:
    """Resolve and read the config by the documented lookup order (see `resolve_config_path`)."""
    resolved = resolve_config_path(path, environ, system_path, client=client)
    if resolved is None:
        return Config()
    return read_config_file(resolved)


def read_config_file(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    try:
        data = toml.loads(text)
    except (toml.TomlDecodeError, TypeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return config_from_dict(data, source=str(path))
