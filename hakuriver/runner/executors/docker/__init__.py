"""The Docker backend: one container per task, `hakuriver-task-<id>`.

This package and the runner's environment sync are the only runner code that
uses the Docker SDK, through `hakuriver.dockerapi`, which imports it only
when a `DockerExecutor` is first used: importing the executor registry never
needs it.

The parts: `plan.py` (LaunchSpec -> container arguments, inspect State ->
ExitResult; pure), `logs.py` (the log stream -> output files), `oom.py`
(kernel OOM-kill records) and `executor.py` (the `DockerExecutor` lifecycle).

How a task is run
    The image must already be on the node (`hakuriver/<env>:base`, loaded from
    the shared tarball by the runner): we check it and otherwise fail; we never
    pull. The container is *created* then *started* (the SDK's `run()` would
    pull on a missing image). Its entrypoint is the argv's program and its
    command the rest, so the argv runs exactly, without a shell and without
    any ENTRYPOINT the image may carry. `init=True` puts docker-init (tini) in
    front so that SIGTERM reaches the task and zombies are reaped.

How output reaches the shared dir (the "watch")
    For each task one dedicated daemon thread (never a default-pool thread)
    follows the container's log (`GET /containers/<id>/logs?follow=1`, the
    json-file log the daemon keeps anyway) and demultiplexes the 8-byte framed
    stream into the stdout and stderr files, writing every frame as it
    arrives. The files are therefore readable while the task runs.

    The files are always a *prefix* of the container's two streams. So
    resuming is simple and needs no truncation (which would confuse a
    `logs --follow` reader): the watch replays the log from the start and skips
    as many bytes of each stream as its file already holds. This covers a
    runner restart (`recover`), an already-exited container, and a log stream
    that broke while the daemon restarted.

How the end is observed
    The follow stream ends when the container stops (the daemon closes the
    log after the process exits). The watch then inspects the container; the
    daemon only answers once the exit status is recorded, and if the
    container still runs (a broken stream) the watch resumes following. A
    follow may miss the very end of the log (Docker 20.10 drops a last line
    without a newline), so the watch then reads a short tail of the log and
    appends what lies beyond what it consumed (`logs.catch_up`). Only then is the
    ExitResult set on the future that `wait()` awaits: `wait()` cannot return
    before every byte is in the files, and waiting costs no thread beyond the
    watch itself.

    OOM kills: Docker's `State.OOMKilled`, and where the engine never sets it
    (kernel 6.x with cgroup v1, as on this project's CI) the kernel's own
    OOM-kill records in /dev/kmsg (`oom.KernelOomLog`).

`close()` stops the watches (it shuts their sockets down so a blocked read
returns) and joins them, leaving every container running; a new executor's
`recover()` picks the tasks up where the files end.
"""

from .executor import DockerExecutor
from .logs import missed_after
from .oom import KernelOomLog, oom_cgroups_in
from .plan import LOCAL_TEMP_MOUNT, SHARED_MOUNT, ContainerPlan, build_plan, exit_result, presence_of

__all__ = [
    "LOCAL_TEMP_MOUNT",
    "SHARED_MOUNT",
    "ContainerPlan",
    "DockerExecutor",
    "KernelOomLog",
    "build_plan",
    "exit_result",
    "missed_after",
    "oom_cgroups_in",
    "presence_of",
]
