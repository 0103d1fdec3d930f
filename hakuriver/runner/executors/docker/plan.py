"""The pure half of the Docker backend: a LaunchSpec in Docker's terms, and a
stopped container's inspect `State` back in HakuRiver's.

No I/O and no SDK import: the plan is what `APIClient.create_host_config`
and `create_container` receive. The argv runs exactly: the container's
entrypoint is the program and its command the rest, so no shell and no
ENTRYPOINT of the image comes between; `init=True` puts docker-init (tini)
in front so that SIGTERM reaches the task and zombies are reaped. The log
driver is json-file, which keeps the whole log for the watch to replay
(see `logs.py`).

Who it runs as: always the numeric uid:gid of `spec.identity` (the
submitter's account, looked up on the node; `NOBODY` when none is given),
with its supplementary groups, never the image's default user; and every
task container gets `no-new-privileges`, so a setuid binary in the image
grants nothing. HOME is the account's home where a mount makes it visible
in the container, `/tmp` otherwise (an image rarely knows the node's users).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ....errors import ExecutorError
from ....models import ExitResult, TaskState
from ....naming import LABEL_RUNNER, LABEL_TASK_ID, task_container_name
from ..base import NOBODY, LaunchSpec, Presence, TaskIdentity

SHARED_MOUNT = "/shared"
LOCAL_TEMP_MOUNT = "/local_temp"
FALLBACK_HOME = "/tmp"  # noqa: S108 - writable in every image; the task's HOME when its own is not visible
SECURITY_OPT = ("no-new-privileges",)


@dataclass(frozen=True)
class ContainerPlan:
    """The arguments of `APIClient.create_container` and `create_host_config`."""

    create: dict[str, Any]
    host_config: dict[str, Any]


_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
"""A name Docker accepts as a container's hostname (RFC 1123); other node names keep Docker's default."""


def build_plan(
    spec: LaunchSpec, runner_name: str, *, init: bool = True, extra_labels: dict[str, str] | None = None
) -> ContainerPlan:
    """Translate a LaunchSpec into Docker's terms. Pure: no I/O, no SDK import."""
    if not spec.command:
        raise ExecutorError(f"task {spec.task_id}: empty command")
    if not spec.image:
        raise ExecutorError(f"task {spec.task_id}: the docker executor needs an environment image")
    env = spec.task_env()
    env["HAKURIVER_SHARED_DIR"] = SHARED_MOUNT
    env["HAKURIVER_LOCAL_TEMP_DIR"] = LOCAL_TEMP_MOUNT
    identity = spec.identity or NOBODY
    if "HOME" not in env and identity.uid != 0:
        env["HOME"] = task_home(identity, [SHARED_MOUNT, LOCAL_TEMP_MOUNT, *(m.container_path for m in spec.mounts)])
    mounts = [
        {"Type": "bind", "Source": spec.shared_dir, "Target": SHARED_MOUNT, "ReadOnly": False},
        {"Type": "bind", "Source": spec.local_temp_dir, "Target": LOCAL_TEMP_MOUNT, "ReadOnly": False},
    ]
    mounts += [
        {"Type": "bind", "Source": m.host_path, "Target": m.container_path, "ReadOnly": bool(m.read_only)}
        for m in spec.mounts
    ]
    host: dict[str, Any] = {
        "mounts": mounts,
        "privileged": bool(spec.privileged),
        "security_opt": list(SECURITY_OPT),
        "init": init,
        "auto_remove": False,
        # json-file keeps the whole log, which the watch replays after a restart.
        "log_config": {"type": "json-file"},
    }
    if identity.groups:
        host["group_add"] = [str(g) for g in identity.groups]
    if spec.cores is not None:
        host["nano_cpus"] = int(spec.cores * 1_000_000_000)
    if spec.memory is not None:
        host["mem_limit"] = int(spec.memory)
        host["memswap_limit"] = int(spec.memory)  # no swap beyond the limit
    if spec.gpus:
        host["device_requests"] = [
            {"driver": "nvidia", "device_ids": [str(g) for g in spec.gpus], "capabilities": [["gpu"]]}
        ]
    if spec.numa is not None:
        host["cpuset_cpus"] = ",".join(str(c) for c in spec.numa.cpus)
        host["cpuset_mems"] = str(spec.numa.id)
    create: dict[str, Any] = {
        "image": spec.image,
        "name": task_container_name(spec.task_id),
        "entrypoint": [spec.command[0]],
        "command": list(spec.command[1:]),
        "environment": env,
        "user": f"{identity.uid}:{identity.gid}",
        "working_dir": SHARED_MOUNT,
        # `hostname` in a task names the node it ran on, as on bare metal
        # (Docker's default is the container id, which tells a user nothing).
        **({"hostname": runner_name} if _HOSTNAME.fullmatch(runner_name) else {}),
        "labels": {**(extra_labels or {}), LABEL_TASK_ID: str(spec.task_id), LABEL_RUNNER: runner_name},
        "detach": True,
        "stdin_open": False,
        "tty": False,
        "use_config_proxy": False,  # the task sees exactly the env it was given
    }
    return ContainerPlan(create=create, host_config=host)


def task_home(identity: TaskIdentity, visible: list[str]) -> str:
    """The account's home if it lies in (or is) one of the `visible` container
    paths (a mount), else FALLBACK_HOME."""
    home = identity.home
    if home and home.startswith("/") and any(home == v or home.startswith(v.rstrip("/") + "/") for v in visible):
        return home
    return FALLBACK_HOME


def exit_result(state: dict[str, Any], *, kernel_oom: bool = False) -> ExitResult:
    """The ExitResult of a stopped container from its inspect `State`.

    `kernel_oom`: the kernel log says the OOM killer struck in the container's
    cgroup (see `KernelOomLog`), for engines that do not set `OOMKilled`.
    """
    if state.get("Status") == "created":
        return ExitResult(TaskState.FAILED, None, "the container was created but never started")
    code = int(state.get("ExitCode") or 0)
    if (state.get("OOMKilled") or kernel_oom) and code != 0:
        return ExitResult(TaskState.KILLED_OOM, code, f"killed by the out-of-memory killer (exit code {code})")
    if code == 0:
        return ExitResult(TaskState.COMPLETED, 0)
    error = f"exited with code {code}"
    if state.get("Error"):
        error += f": {state['Error']}"
    return ExitResult(TaskState.FAILED, code, error)


def presence_of(state: dict[str, Any]) -> Presence:
    if state.get("Paused"):
        return Presence.PAUSED
    if state.get("Running") or state.get("Restarting"):
        return Presence.RUNNING
    return Presence.EXITED
