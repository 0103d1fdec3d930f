"""Turning a submission body into a validated `TaskRequest`, under the cluster's policy.

Validation here is about the request alone (types, ranges, syntax, policy);
whether any node could ever run it is the scheduler's `check_fits_ever`.
"""

from __future__ import annotations

import posixpath
from typing import Any

from ..config import Config
from ..errors import PolicyDenied, ValidationError
from ..models import SYSTEMD_CONTAINER, Mount, TaskRequest
from ..parsing import (
    parse_cores,
    parse_mount,
    parse_size,
    parse_target,
    validate_env_key,
    validate_env_name,
)
from ..webapi import require_type

SUBMIT_FIELDS = frozenset({"command", "cores", "memory", "container", "env", "mounts", "privileged", "targets", "gpus"})
MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 * 1024
MAX_ENV = 1024
MAX_TARGETS = 1024
MAX_GPU_COUNT = 64


def parse_submission(data: dict[str, Any], config: Config) -> TaskRequest:
    command = require_type(data, "command", list)
    if not command:
        raise ValidationError("field 'command' must not be empty: give the program and its arguments")
    if len(command) > MAX_ARGS:
        raise ValidationError(f"field 'command' has {len(command)} arguments; at most {MAX_ARGS}")
    size = 0
    for i, arg in enumerate(command):
        if not isinstance(arg, str):
            raise ValidationError(f"command[{i}] must be a string, got {type(arg).__name__}")
        if "\x00" in arg:
            raise ValidationError(f"command[{i}] contains a NUL byte")
        size += len(arg.encode("utf-8", "surrogatepass"))
    if size > MAX_ARGV_BYTES:
        raise ValidationError(f"the command is {size} bytes long; at most {MAX_ARGV_BYTES}")
    if not command[0]:
        raise ValidationError("command[0] (the program) must not be empty")

    cores = parse_cores(require_type(data, "cores", int, required=False, default=1))
    memory_raw = require_type(data, "memory", (int, str), required=False)
    memory = parse_size(memory_raw) if memory_raw is not None else None

    container = require_type(data, "container", str, required=False)
    if container is None or container == "":
        container = config.docker.default_container_name
    elif container != SYSTEMD_CONTAINER:
        validate_env_name(container)
    systemd = container == SYSTEMD_CONTAINER

    env_raw = require_type(data, "env", dict, required=False, default={})
    if len(env_raw) > MAX_ENV:
        raise ValidationError(f"too many env entries ({len(env_raw)}); at most {MAX_ENV}")
    env: dict[str, str] = {}
    for key, value in env_raw.items():
        validate_env_key(key)
        if key.startswith("HAKURIVER_"):
            raise ValidationError(f"env name {key!r} is reserved: HAKURIVER_* variables are set by the runner")
        if not isinstance(value, str):
            raise ValidationError(f"env value of {key!r} must be a string, got {type(value).__name__}")
        if "\x00" in value:
            raise ValidationError(f"env value of {key!r} contains a NUL byte")
        env[key] = value

    privileged = require_type(data, "privileged", bool, required=False, default=False)
    if privileged and systemd:
        raise ValidationError("--privileged applies to Docker tasks only, not to --container NULL")
    if privileged and not config.docker.tasks_privileged:
        raise PolicyDenied("privileged tasks are not allowed on this cluster (docker.tasks_privileged = false)")

    mounts_raw = require_type(data, "mounts", list, required=False, default=[])
    if mounts_raw and systemd:
        raise ValidationError("--mount applies to Docker tasks only; --container NULL tasks see the node's filesystem")
    mounts = tuple(_checked_mount(m, config) for m in mounts_raw)

    targets_raw = require_type(data, "targets", list, required=False, default=[])
    if len(targets_raw) > MAX_TARGETS:
        raise ValidationError(f"too many targets ({len(targets_raw)}); at most {MAX_TARGETS}")
    targets = []
    for t in targets_raw:
        if not isinstance(t, str):
            raise ValidationError(f"each target must be a string like 'node1:0::1', got {type(t).__name__}")
        targets.append(parse_target(t))

    gpus = require_type(data, "gpus", int, required=False, default=0)
    if gpus < 0 or gpus > MAX_GPU_COUNT:
        raise ValidationError(f"field 'gpus' must be between 0 and {MAX_GPU_COUNT}")
    if gpus and targets:
        raise ValidationError(
            "give GPUs either as a count ('gpus') for automatic placement or as ids in --target, not both"
        )

    return TaskRequest(
        command=tuple(command),
        cores=cores,
        memory=memory,
        container=container,
        env=env,
        mounts=mounts,
        privileged=privileged or (config.docker.tasks_privileged and not systemd and data.get("privileged") is None),
        targets=tuple(targets),
        gpus=gpus,
    )


def _checked_mount(spec: Any, config: Config) -> Mount:
    if not isinstance(spec, str):
        raise ValidationError(f"each mount must be a string 'HOST:CONTAINER[:ro]', got {type(spec).__name__}")
    mount = parse_mount(spec)
    if not mount_allowed(mount.host_path, config.docker.allowed_mount_prefixes):
        allowed = (
            ", ".join(config.docker.allowed_mount_prefixes)
            or "none are allowed (docker.allowed_mount_prefixes is empty)"
        )
        raise PolicyDenied(f"mount of {mount.host_path} is not allowed by policy; allowed host prefixes: {allowed}")
    if mount.container_path in ("/shared", "/local_temp") or mount.container_path.startswith(
        ("/shared/", "/local_temp/")
    ):
        raise ValidationError(f"mount target {mount.container_path} is reserved for HakuRiver's own mounts")
    return mount


def mount_allowed(host_path: str, prefixes: tuple[str, ...]) -> bool:
    path = posixpath.normpath(host_path)
    for prefix in prefixes:
        prefix = posixpath.normpath(prefix)
        if prefix == "/":
            continue  # "/" would allow /:/host; an admin must name real subtrees
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False
