"""The cluster's task policy, one module for the Host and every runner.

The Host applies it when a task is submitted (`host.submission`); each
runner applies it again, with its *own* configuration, to every order it
receives (`runner.supervisor.Supervisor.build_spec`), so an order that
breaks the node's policy is refused even when it carries the right
credential. The checks and their messages are the same on both sides.

Everything here is pure except `node_mount`, which resolves a mount's
source on the node it runs on (symbolic links included) and checks the
resolved path, since that is what Docker will bind.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .config import DockerConfig
from .errors import Forbidden, PolicyDenied, ValidationError
from .models import Mount
from .parsing import parse_cores, parse_mount, parse_size, validate_env_key

MAX_ARGS = 4096
MAX_ARGV_BYTES = 256 * 1024
MAX_ENV = 1024
MAX_TARGETS = 1024
MAX_GPU_COUNT = 64
RESERVED_TARGETS = ("/shared", "/local_temp")
"""Container paths of HakuRiver's own mounts; no user mount may land on or under them."""
MAX_DEPENDENCIES = 100
"""The most tasks one submission may depend on (`after` and `after_any` together)."""
PRIORITY_MIN = -1000
PRIORITY_MAX = 1000
DEFAULT_PRIORITY = 0
"""A task's priority (`--priority`): an integer in PRIORITY_MIN..PRIORITY_MAX,
higher first. Anyone may go down to PRIORITY_MIN (be nice to the others); only
an admin may go above DEFAULT_PRIORITY (like Slurm's negative nice)."""


def check_command(command: Any) -> tuple[str, ...]:
    """The argv: 1..MAX_ARGS strings without NUL, at most MAX_ARGV_BYTES in all."""
    if not isinstance(command, (list, tuple)):
        raise ValidationError(f"field 'command' must be a list, got {type(command).__name__}")
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
    return tuple(command)


def check_env(env: Mapping[Any, Any]) -> dict[str, str]:
    """The user's `--env`: at most MAX_ENV entries, valid names, no HAKURIVER_*, string values without NUL."""
    if len(env) > MAX_ENV:
        raise ValidationError(f"too many env entries ({len(env)}); at most {MAX_ENV}")
    out: dict[str, str] = {}
    for key, value in env.items():
        validate_env_key(key)
        if key.startswith("HAKURIVER_"):
            raise ValidationError(f"env name {key!r} is reserved: HAKURIVER_* variables are set by the runner")
        if not isinstance(value, str):
            raise ValidationError(f"env value of {key!r} must be a string, got {type(value).__name__}")
        if "\x00" in value:
            raise ValidationError(f"env value of {key!r} contains a NUL byte")
        out[key] = value
    return out


def check_resources(cores: int | None, memory: int | None, gpu_count: int) -> None:
    """Bounds on what one task may ask for, whatever the nodes have."""
    if cores is not None:
        parse_cores(cores)
    if memory is not None:
        parse_size(memory)
    check_gpu_count(gpu_count)


def check_gpu_count(gpus: int) -> None:
    if gpus < 0 or gpus > MAX_GPU_COUNT:
        raise ValidationError(f"field 'gpus' must be between 0 and {MAX_GPU_COUNT}")


def check_priority(value: Any) -> int:
    """A priority as the API takes it: an integer in PRIORITY_MIN..PRIORITY_MAX."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"field 'priority' must be an integer, not {value!r}")
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise ValidationError(f"field 'priority' must be between {PRIORITY_MIN} and {PRIORITY_MAX}, not {value}")
    return value


def check_priority_allowed(value: int, *, admin: bool, current: int = DEFAULT_PRIORITY) -> None:
    """Forbidden unless the caller may give a task priority `value`: an admin
    any, anyone else at most the default or the task's `current` priority
    (a user lowers their own; only an admin raises one)."""
    if admin or value <= max(DEFAULT_PRIORITY, current):
        return
    ceiling = max(DEFAULT_PRIORITY, current)
    raise Forbidden(
        f"only an admin may raise a task's priority above {ceiling} (asked for {value}); "
        f"you may lower it, down to {PRIORITY_MIN}"
    )


def check_privileged(privileged: bool, *, systemd: bool, docker: DockerConfig, where: str = "cluster") -> None:
    if privileged and systemd:
        raise ValidationError("--privileged applies to Docker tasks only, not to --container NULL")
    if privileged and not docker.tasks_privileged:
        raise PolicyDenied(f"privileged tasks are not allowed on this {where} (docker.tasks_privileged = false)")


def check_no_mounts_for_systemd(has_mounts: bool, *, systemd: bool) -> None:
    if has_mounts and systemd:
        raise ValidationError("--mount applies to Docker tasks only; --container NULL tasks see the node's filesystem")


def check_mount(mount: Mount, docker: DockerConfig) -> None:
    """A user's mount, by its text: the source under an allowed prefix, the
    target clear of HakuRiver's own mounts."""
    if not mount_allowed(mount.host_path, docker.allowed_mount_prefixes):
        raise PolicyDenied(
            f"mount of {mount.host_path} is not allowed by policy; allowed host prefixes: {_allowed(docker)}"
        )
    check_mount_target(mount)


def check_mount_target(mount: Mount) -> None:
    target = mount.container_path
    if target in RESERVED_TARGETS or target.startswith(tuple(t + "/" for t in RESERVED_TARGETS)):
        raise ValidationError(f"mount target {target} is reserved for HakuRiver's own mounts")


def mount_allowed(host_path: str, prefixes: Iterable[str]) -> bool:
    path = posixpath.normpath(host_path)
    for prefix in prefixes:
        prefix = posixpath.normpath(prefix)
        if prefix == "/":
            continue  # "/" would allow /:/host; an admin must name real subtrees
        if path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def admin_mounts(docker: DockerConfig) -> tuple[Mount, ...]:
    """The admin's `docker.additional_mounts`: added to every Docker task, exempt from the prefixes."""
    return tuple(parse_mount(m) for m in docker.additional_mounts)


def node_mount(mount: Mount, docker: DockerConfig, *, realpath: Callable[[str], str] = os.path.realpath) -> Mount:
    """`mount` as this node will bind it, or PolicyDenied.

    One of the admin's `additional_mounts` (same source, target and mode)
    passes as it is. Any other is checked by its text (`check_mount`), then
    its source is resolved here, symbolic links included, and the *resolved*
    path must lie under an allowed prefix (itself resolved: an admin may
    name a link). The returned mount binds the resolved path, so what was
    checked is what Docker mounts; only a swap in the moments between this
    call and the bind could differ.
    """
    if mount in admin_mounts(docker):
        return mount
    check_mount(mount, docker)
    real = realpath(mount.host_path)
    prefixes = {p for prefix in docker.allowed_mount_prefixes for p in (prefix, realpath(prefix))}
    if not mount_allowed(real, prefixes):
        raise PolicyDenied(
            f"mount of {mount.host_path} is not allowed by policy: on this node it resolves to {real}, "
            f"outside the allowed host prefixes ({_allowed(docker)})"
        )
    return Mount(host_path=real, container_path=mount.container_path, read_only=mount.read_only)


def _allowed(docker: DockerConfig) -> str:
    return ", ".join(docker.allowed_mount_prefixes) or "none are allowed (docker.allowed_mount_prefixes is empty)"
