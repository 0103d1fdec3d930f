"""Names and labels HakuRiver gives to things outside its own database.

One place, because the runner must find its containers and units again after
a restart, and the sudoers rule must match exactly the unit names used.
"""

from __future__ import annotations

from .parsing import validate_env_name

TASK_PREFIX = "hakuriver-task-"
LABEL_TASK_ID = "org.hakuriver.task_id"
LABEL_RUNNER = "org.hakuriver.runner"
LABEL_ENVIRONMENT = "org.hakuriver.environment"
LABEL_ENV_VERSION = "org.hakuriver.environment.version"
"""On an environment image: the version (tarball timestamp) it was committed as."""
ENV_CONTAINER_PREFIX = "hakuriver-env-"
IMAGE_REPO_PREFIX = "hakuriver/"
IMAGE_TAG = "base"


def task_container_name(task_id: int) -> str:
    return f"{TASK_PREFIX}{task_id}"


def task_unit_name(task_id: int) -> str:
    """The systemd unit *base* name; the task's transient service is `<name>.service`."""
    return f"{TASK_PREFIX}{task_id}"


def environment_image(name: str) -> str:
    """The local image an environment runs as: `hakuriver/<name>:base`."""
    return f"{IMAGE_REPO_PREFIX}{validate_env_name(name)}:{IMAGE_TAG}"


def environment_container_name(name: str) -> str:
    """The Host's environment container for `name`: `hakuriver-env-<name>`
    (a prefix of its own, so it can never collide with a task container)."""
    return f"{ENV_CONTAINER_PREFIX}{validate_env_name(name)}"


def task_id_from_name(name: str) -> int | None:
    """Inverse of task_container_name / task_unit_name (with or without `.service`)."""
    name = name.lstrip("/")
    if name.endswith(".service"):
        name = name[: -len(".service")]
    if not name.startswith(TASK_PREFIX):
        return None
    rest = name[len(TASK_PREFIX) :]
    return int(rest) if rest.isascii() and rest.isdigit() else None


def stdout_path(shared_dir: str, task_id: int, attempt: int | None = None) -> str:
    """Attempt `attempt`'s stdout file (`--retries`; default the first):
    `ID.out` for the first, `ID.attemptN.out` for attempt N after it, so
    that every attempt has its own from its start and nothing is moved."""
    return f"{shared_dir.rstrip('/')}/task_outputs/{task_id}{_attempt_part(attempt)}.out"


def stderr_path(shared_dir: str, task_id: int, attempt: int | None = None) -> str:
    """Attempt `attempt`'s stderr file, as `stdout_path`: `ID.err`, `ID.attemptN.err`."""
    return f"{shared_dir.rstrip('/')}/task_errors/{task_id}{_attempt_part(attempt)}.err"


def _attempt_part(attempt: int | None) -> str:
    number = 1 if attempt is None else int(attempt)
    if number < 1:
        raise ValueError(f"an attempt is numbered from 1, not {attempt!r}")
    return "" if number == 1 else f".attempt{number}"
