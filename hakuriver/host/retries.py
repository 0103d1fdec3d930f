"""Retries (`--retries N`, `--retry-on-exit`): whether a task's ending runs it again. Pure: no I/O.

Like Slurm's `--requeue` on a node failure and Nomad's `reschedule`, a task
submitted with `retries` N is put back to `pending` (same id, same
dependencies, limits and array) when one of its runs ends, up to N times,
for these endings only:

- `lost`: its node stopped heartbeating (`liveness.check_liveness`), or its
  runner no longer knows it, or its container vanished under the runner;
- `failed` on the node's side: the task never ran its command to an exit,
  so there is no exit code (the runner could not start it, the environment
  or image is missing, the executor or runner failed, dispatch to the node
  failed or the runner refused the order);
- `failed` with a non-zero exit code of the command itself only when the
  task also asked for it (`retry_on_exit`, `--retry-on-exit`).

`killed` (a user's kill), `killed_oom`, `timeout` (its time limit) and
`cancelled` are never retried: running again would end the same way, or
undo what someone asked for.

Each ending that is retried is recorded as one attempt (`task_attempts`:
its node, start, end, state, exit code, error); the task keeps its last run
in its own row. The retry and the record are one guarded write
(`Database.requeue`), so the task is never seen final in between: its
`--after` dependents keep waiting, `--wait` keeps waiting, and only the
last attempt's end settles them.

A late report from an earlier attempt's runner never touches the new one:
the Host sends the attempt number in the run request (version 4) and the
runner sends it back in its reports and heartbeats; a report for another
attempt is refused (409) and a heartbeat that lists one gets a kill order.
A retried task is not placed on the node of its previous attempt while that
node, online, may still hold the old run (until its next heartbeat no longer
lists the task: `RetryFences`), and among the nodes where it fits, the
previous attempt's node is chosen last.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ValidationError
from ..models import Task, TaskState

MAX_RETRIES = 10
"""The most retries a task may ask for: a task that failed on eleven nodes is
not going to work on the twelfth, and the queue should not keep feeding it."""


def check_retries(value: object) -> int:
    """A valid `retries` count, or ValidationError saying why not."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RETRIES:
        raise ValidationError(f"'retries' must be a whole number from 0 to {MAX_RETRIES}")
    return value


def parse_retries(text: str) -> int:
    """The CLI's `--retries N`."""
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValidationError(f"--retries must be a whole number from 0 to {MAX_RETRIES}, not {text!r}") from None
    if not 0 <= value <= MAX_RETRIES:
        raise ValidationError(f"--retries must be a whole number from 0 to {MAX_RETRIES}, not {value}")
    return value


def retryable(state: TaskState, exit_code: int | None, *, retry_on_exit: bool) -> bool:
    """Whether an ending of this kind is retried at all (see the module doc)."""
    if state is TaskState.LOST:
        return True
    if state is TaskState.FAILED:
        return exit_code is None or retry_on_exit
    return False


def should_retry(task: Task, state: TaskState, exit_code: int | None) -> bool:
    """Whether `task`'s current attempt, ending in `state`, runs again: the
    ending is retryable and the task has a retry left (attempt N of a task
    with `retries` R runs again while N <= R)."""
    return task.attempt <= task.retries and retryable(state, exit_code, retry_on_exit=task.retry_on_exit)


class RetryFences:
    """Nodes where an earlier attempt of a retried task may still be held by
    the runner (running, stopping, or its result not yet delivered). While
    such a node is online the task is not placed there: a runner keys tasks
    by id and holds one run of a task at a time. A heartbeat from the node
    that lists the task neither as running nor as finishing lifts the fence.
    Memory only: after a Host restart the runner's own check (it refuses a
    newer attempt while an older one runs) covers the rare case."""

    def __init__(self) -> None:
        self._nodes: dict[int, set[str]] = {}

    def add(self, task_id: int, node: str | None) -> None:
        if node:
            self._nodes.setdefault(task_id, set()).add(node)

    def fenced_ids(self) -> list[int]:
        return list(self._nodes)

    def fenced(self, task_id: int) -> frozenset[str]:
        return frozenset(self._nodes.get(task_id, ()))

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def forget(self, task_id: int) -> None:
        self._nodes.pop(task_id, None)

    def heard_from(self, node: str, holds: Iterable[int]) -> bool:
        """`node` says it holds exactly `holds`: lift its fence on every other
        task. True when a fence was lifted (a task may be placed now)."""
        held = set(holds)
        lifted = False
        for task_id in [t for t, nodes in self._nodes.items() if node in nodes and t not in held]:
            nodes = self._nodes[task_id]
            nodes.discard(node)
            if not nodes:
                del self._nodes[task_id]
            lifted = True
        return lifted
