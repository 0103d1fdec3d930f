"""The run request: what the Host orders a runner to run, as one typed record.

The Host builds it from a placed task (`dispatch`), the wire carries its JSON
form (`POST /api/tasks` on a runner), and the runner decodes it once, checks
it against its own facts, and persists this same record in its state store,
so that a restarted runner recovers exactly what it was told.

`version` numbers the record's shape. A runner reads every version up to
`RUN_REQUEST_VERSION` (a missing version is 1) and refuses a newer one with
a clear reason, so a Host upgraded first never has its orders misread.

Versions: 1 is the first shape; 2 adds `time_limit`; 3 adds `batch_id` and
`array_index` (an array task: `HAKURIVER_ARRAY_INDEX`, `HAKURIVER_BATCH_ID`); 4 adds
`attempt` (a retried task's run, `--retries`: the runner sends it back in its
reports, so the Host can tell an earlier run's late report). A record says the oldest
version that carries what it holds (`wire_version`), so a request without a
time limit is still version 1 and an older runner runs it; one with a limit
is version 2, which an older runner refuses (it would ignore the limit).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ValidationError
from .ids import parse_id
from .models import Mount
from .parsing import MAX_ARRAY_INDEX, MAX_TIME_LIMIT, parse_mount, validate_env_key

RUN_REQUEST_VERSION = 4

MAX_ATTEMPT = 1000
"""A sanity bound on `attempt` (the Host's own cap, `retries.MAX_RETRIES`, is far lower)."""

_UNIX_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?\Z")

RUN_FIELDS = frozenset(
    {
        "version",
        "task_id",
        "command",
        "env",
        "cores",
        "memory",
        "gpus",
        "numa",
        "container",
        "mounts",
        "privileged",
        "user",
        "unix_user",
        "time_limit",
        "batch_id",
        "array_index",
        "attempt",
    }
)
"""The JSON fields of a run request; anything else is refused."""


def _positive_or_none(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValidationError(f"'{name}' must be a positive integer")
    return value


@dataclass(frozen=True)
class RunRequest:
    """One task as a runner must run it. Placement (`numa`, `gpus`) is the
    Host's decision; the runner checks it against what the node has."""

    task_id: int
    command: tuple[str, ...]
    container: str
    """An environment name, or `NULL` for a systemd task."""
    env: dict[str, str] = field(default_factory=dict)
    cores: int | None = None
    memory: int | None = None
    gpus: tuple[int, ...] = ()
    numa: int | None = None
    mounts: tuple[Mount, ...] = ()
    privileged: bool = False
    user: str = ""
    """The HakuRiver user who submitted the task (labels, logs)."""
    unix_user: str | None = None
    """The submitter's Unix account, resolved to uid/gid on the node; None:
    they have none, and the node's policy decides (`docker.task_user`,
    `environment.runner_user`)."""
    time_limit: int | None = None
    """Seconds of wall time from the task's start after which the runner stops
    it (SIGTERM, SIGKILL after `runner.timeout_grace`) and it ends `timeout`."""
    batch_id: int | None = None
    """An array task's batch (`HAKURIVER_BATCH_ID`); None for other tasks."""
    array_index: int | None = None
    """An array task's index (`HAKURIVER_ARRAY_INDEX`); None for other tasks."""
    attempt: int = 1
    """Which run of the task this is (1-based; `--retries`). Sent only when
    above 1: an older runner, which would report it as the first, refuses it."""
    version: int = RUN_REQUEST_VERSION

    def wire_version(self) -> int:
        """The oldest version that carries every field this record holds."""
        if self.attempt != 1:
            return 4  # an older runner would report it as the first attempt
        if self.array_index is not None:
            return 3  # an older runner would run it without its index
        return 2 if self.time_limit is not None else 1

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "version": self.wire_version(),
            "task_id": str(self.task_id),
            "command": list(self.command),
            "env": dict(self.env),
            "cores": self.cores,
            "memory": self.memory,
            "gpus": list(self.gpus),
            "numa": self.numa,
            "container": self.container,
            "mounts": [str(m) for m in self.mounts],
            "privileged": self.privileged,
            "user": self.user,
            "unix_user": self.unix_user,
        }
        if self.time_limit is not None:
            data["time_limit"] = self.time_limit
        if self.array_index is not None:
            data["array_index"] = self.array_index
            data["batch_id"] = str(self.batch_id)
        if self.attempt != 1:
            data["attempt"] = self.attempt
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRequest:
        """Decode and type-check; `ValidationError` names the first bad field."""
        if not isinstance(data, dict):
            raise ValidationError("a run request is a JSON object")
        unknown = sorted(set(data) - RUN_FIELDS)
        if unknown:
            raise ValidationError(f"unknown field {unknown[0]!r} in the run request")
        version = data.get("version", 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValidationError("'version' must be a positive integer")
        if version > RUN_REQUEST_VERSION:
            raise ValidationError(
                f"run request version {version} is newer than this runner understands ({RUN_REQUEST_VERSION}); "
                "upgrade the runner"
            )
        task_id = parse_id(data.get("task_id"))
        command = data.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise ValidationError("'command' must be a non-empty list of strings")
        env = data.get("env") or {}
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValidationError("'env' must be an object of strings")
        for key in env:
            validate_env_key(key)
        gpus = data.get("gpus") or []
        if not isinstance(gpus, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
            raise ValidationError("'gpus' must be a list of GPU ids")
        numa = data.get("numa")
        if numa is not None and (isinstance(numa, bool) or not isinstance(numa, int)):
            raise ValidationError(f"this node has no NUMA node {numa!r}")
        container = data.get("container")
        if not isinstance(container, str) or not container:
            raise ValidationError("'container' must name an environment or be NULL")
        mounts = data.get("mounts") or []
        if not isinstance(mounts, list) or not all(isinstance(m, str) for m in mounts):
            raise ValidationError("'mounts' must be a list of HOST:CONTAINER[:ro] strings")
        privileged = data.get("privileged", False)
        if not isinstance(privileged, bool):
            raise ValidationError("'privileged' must be true or false")
        user = data.get("user") or ""
        if not isinstance(user, str) or len(user) > 64:
            raise ValidationError("'user' must be a user name")
        unix_user = data.get("unix_user")
        if unix_user is not None and not (isinstance(unix_user, str) and _UNIX_NAME.match(unix_user)):
            raise ValidationError(f"'unix_user' {unix_user!r} is not a Unix account name")
        time_limit = data.get("time_limit")
        if time_limit is not None:
            if version < 2:
                raise ValidationError("'time_limit' needs a version 2 run request")
            if isinstance(time_limit, bool) or not isinstance(time_limit, int) or not 1 <= time_limit <= MAX_TIME_LIMIT:
                raise ValidationError(f"'time_limit' must be whole seconds between 1 and {MAX_TIME_LIMIT}")
        array_index = data.get("array_index")
        batch_id = None
        if array_index is not None or data.get("batch_id") is not None:
            if version < 3:
                raise ValidationError("'array_index' and 'batch_id' need a version 3 run request")
            if (
                isinstance(array_index, bool)
                or not isinstance(array_index, int)
                or not 0 <= array_index <= MAX_ARRAY_INDEX
            ):
                raise ValidationError(f"'array_index' must be a whole number between 0 and {MAX_ARRAY_INDEX}")
            batch_id = parse_id(data.get("batch_id"))
        attempt = data.get("attempt", 1)
        if "attempt" in data and version < 4:
            raise ValidationError("'attempt' needs a version 4 run request")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or not 1 <= attempt <= MAX_ATTEMPT:
            raise ValidationError(f"'attempt' must be a whole number between 1 and {MAX_ATTEMPT}")
        return cls(
            task_id=task_id,
            command=tuple(command),
            container=container,
            env=dict(env),
            cores=_positive_or_none(data, "cores"),
            memory=_positive_or_none(data, "memory"),
            gpus=tuple(gpus),
            numa=numa,
            mounts=tuple(parse_mount(m) for m in mounts),
            privileged=privileged,
            user=user,
            unix_user=unix_user,
            time_limit=time_limit,
            batch_id=batch_id,
            array_index=array_index,
            attempt=attempt,
            version=version,
        )
