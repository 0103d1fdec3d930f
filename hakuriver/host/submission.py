"""Turning a submission body into a validated `TaskRequest`, under the cluster's policy.

Validation here is about the request alone (types, ranges, syntax, policy);
whether any node could ever run it is the scheduler's `check_fits_ever`.
The checks themselves live in `hakuriver.policy`, which every runner applies
again to the orders it receives.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from ..errors import ValidationError
from ..ids import parse_id
from ..models import SYSTEMD_CONTAINER, Mount, TaskRequest
from ..parsing import (
    ArraySpec,
    expand_sweep,
    parse_array,
    parse_cores,
    parse_duration,
    parse_mount,
    parse_size,
    parse_sweep_limit,
    parse_target,
    validate_container,
)
from ..policy import (
    DEFAULT_PRIORITY,
    MAX_DEPENDENCIES,
    MAX_TARGETS,
    check_command,
    check_env,
    check_gpu_count,
    check_mount,
    check_no_mounts_for_systemd,
    check_priority,
    check_privileged,
)
from ..webapi import require_type
from .retries import check_retries

SUBMIT_FIELDS = frozenset(
    {
        "command",
        "cores",
        "memory",
        "container",
        "env",
        "mounts",
        "privileged",
        "targets",
        "gpus",
        "time_limit",
        "after",
        "after_any",
        "array",
        "sweep",
        "retries",
        "retry_on_exit",
        "priority",
    }
)


def parse_submission(data: dict[str, Any], config: Config) -> TaskRequest:
    command = check_command(require_type(data, "command", list))

    cores = parse_cores(require_type(data, "cores", int, required=False, default=1))
    memory_raw = require_type(data, "memory", (int, str), required=False)
    memory = parse_size(memory_raw) if memory_raw is not None else None

    container = require_type(data, "container", str, required=False)
    if container is None or container == "":
        container = config.docker.default_container_name
    else:
        validate_container(container)
    systemd = container == SYSTEMD_CONTAINER

    env = check_env(require_type(data, "env", dict, required=False, default={}))

    privileged = require_type(data, "privileged", bool, required=False, default=False)
    check_privileged(privileged, systemd=systemd, docker=config.docker)

    mounts_raw = require_type(data, "mounts", list, required=False, default=[])
    check_no_mounts_for_systemd(bool(mounts_raw), systemd=systemd)
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
    check_gpu_count(gpus)
    if gpus and targets:
        raise ValidationError(
            "give GPUs either as a count ('gpus') for automatic placement or as ids in --target, not both"
        )

    # Seconds, or the string form the CLI's --time reads (2h, 90m, 1:30:00).
    time_raw = require_type(data, "time_limit", (int, str), required=False)
    time_limit = parse_duration(time_raw) if time_raw is not None else None
    after = _dependency_ids(data, "after")
    after_any = _dependency_ids(data, "after_any")
    if len(set(after) | set(after_any)) > MAX_DEPENDENCIES:
        raise ValidationError(f"too many dependencies; at most {MAX_DEPENDENCIES} in 'after' and 'after_any' together")

    # `array`: the `--array` spec as text ("0-99%8"), parsed here like the CLI does.
    array_raw = require_type(data, "array", str, required=False)
    commands: tuple[tuple[str, ...], ...] = ()
    if require_type(data, "sweep", bool, required=False, default=False):
        # HakuRiver 0.3's hakurun sweep: span: words make the array's commands.
        if not any(word.startswith("span:") for word in command):
            raise ValidationError("'sweep' needs a span:{A..B} or span:[a,b,...] word in the command")
        commands = tuple(tuple(c) for c in expand_sweep(command))
        limit = parse_sweep_limit(array_raw) if array_raw is not None else 0
        array: ArraySpec | None = ArraySpec(tuple(range(len(commands))), limit)
    else:
        array = parse_array(array_raw) if array_raw is not None else None
    if array is not None and len(targets) > 1:
        raise ValidationError("an array runs on one target or is placed automatically: give at most one target")

    # `--retries N` / `--retry-on-exit` (host/retries.py); each array task retries on its own.
    retries = check_retries(data.get("retries", 0) if data.get("retries") is not None else 0)
    retry_on_exit = require_type(data, "retry_on_exit", bool, required=False, default=False)
    if retry_on_exit and not retries:
        raise ValidationError("'retry_on_exit' needs 'retries' of at least 1")

    return TaskRequest(
        command=command,
        cores=cores,
        memory=memory,
        container=container,
        env=env,
        mounts=mounts,
        privileged=privileged or (config.docker.tasks_privileged and not systemd and data.get("privileged") is None),
        targets=tuple(targets),
        gpus=gpus,
        time_limit=time_limit,
        after=after,
        after_any=after_any,
        array=array.indices if array is not None else (),
        array_max_running=array.max_running if array is not None else 0,
        commands=commands,
        retries=retries,
        retry_on_exit=retry_on_exit,
        priority=check_priority(data.get("priority", DEFAULT_PRIORITY)),
    )


def _dependency_ids(data: dict[str, Any], key: str) -> tuple[int, ...]:
    """The task ids of `after` / `after_any`: an array of id strings, deduplicated in order.
    Whether they exist is `Cluster.submit`'s check."""
    raw = require_type(data, key, list, required=False, default=[])
    if len(raw) > MAX_DEPENDENCIES:
        raise ValidationError(f"too many ids in {key!r} ({len(raw)}); at most {MAX_DEPENDENCIES}")
    ids = []
    for item in raw:
        try:
            ids.append(parse_id(item))
        except ValidationError as exc:
            raise ValidationError(f"{key!r}: {exc.message}") from None
    return tuple(dict.fromkeys(ids))


def _checked_mount(spec: Any, config: Config) -> Mount:
    if not isinstance(spec, str):
        raise ValidationError(f"each mount must be a string 'HOST:CONTAINER[:ro]', got {type(spec).__name__}")
    mount = parse_mount(spec)
    check_mount(mount, config.docker)
    return mount
