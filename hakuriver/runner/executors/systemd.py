"""The systemd backend (`--container NULL`): one transient service per task,
`hakuriver-task-<id>.service`, started through the root-owned task launcher.

Why a service and not a scope
    A scope's main process is the `systemd-run --scope` client itself: only it
    sees the exit status, and it must stay alive (in the caller's cgroup) for
    the task to run. A transient *service* is forked by PID 1 into its own
    cgroup: nothing of the task lives in the runner's cgroup, no client
    process has to stay alive, and stopping or killing the runner (whatever
    its KillMode) leaves the task running.

How the exit status survives a runner restart
    The unit carries `ExecStopPost=/bin/sh <state dir>/.poststop.sh <id> <state dir>` (the
    launcher's POSTSTOP_SCRIPT, as a root-owned file; units of older launchers:
    `+/bin/sh -c <script> ...` or `+<launcher's code> poststop <id> <state dir>`). The unit
    has no User=: its process becomes the task's user through setpriv, so the hook is a
    plain ExecStopPost= that a daemon-reload
    keeps (launcher.become_user). When the task
    ends, systemd runs it as root *inside the unit's cgroup*, with
    SERVICE_RESULT / EXIT_CODE / EXIT_STATUS set. It writes
    `<state_dir>/<id>.json` (root-owned, world-readable, in a root-owned
    directory, default /var/lib/hakuriver/task-status) with those and the
    cgroup's OOM-kill count (memory.events on cgroup v2, memory.oom_control on
    v1, where systemd itself never reports `oom-kill`). The record outlives
    the unit, the runner and a reboot; `destroy` removes it. A unit that
    failed and was not collected also keeps ExecMainCode/ExecMainStatus,
    used when a record is missing (say the hook itself was killed).

How the end is observed
    One loop per executor, not one per task. An inotify watch on the state
    dir (`dirwatch.DirWatch`) wakes it as the hook renames a record in, so a
    task's end is seen at once; it then stats the status files of the tasks
    being waited for (a cheap local read, no sudo, no process). Without
    inotify it does so every `poll_interval`. About every three seconds it asks
    systemd about all their units in a single `systemctl show` (unprivileged,
    read-only) to notice a unit that vanished without a record (LOST).

What is known about the output
    The task's processes write their files themselves (the launcher's `exec`
    step opens them as the task's user), so their write errors reach only
    them. Once a task has ended, `wait` checks what can be seen from outside:
    the files are still there and their file system is not full
    (`output.check_written_files`); either problem becomes the result's
    `output_error`. A disk that was full and then freed before the end, or
    an I/O error on a disk with room, goes unseen.

Who a task runs as
    The submitter's Unix account (`LaunchSpec.unix_user`, set by the admin with
    `hakuriver.admin user add NAME --unix-user ACCOUNT`), so the files a task
    writes belong to them. A submitter without one gets `environment.runner_user`
    if the admin set it, and is refused otherwise; never the runner's own
    account by default. The launcher has the last word: it refuses accounts its
    root-owned allow-list does not name, root, and members of root-equivalent
    groups (docker, sudo, ..., the runner's own group), each with its reason.

What runs as root
    Only the launcher (see hakuriver/launcher.py), through
    `sudo -n <launcher> start|kill|pause|resume|cleanup|info`, argv lists,
    the task request as JSON on stdin. `-n` makes a missing sudoers rule fail
    at once with a message instead of waiting for a password. When the runner
    itself runs as root it calls the launcher directly. The calls go to one
    long-lived `<launcher> serve`, started the same way, where it can answer
    (`launcher_session`: the same subcommands and answers, without a sudo and
    a Python start per call), and one-shot otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import pwd
import re
import shutil
import signal as _signal
from dataclasses import dataclass
from typing import Any

from ... import launcher as launcher_mod
from ... import naming
from ...errors import ExecutorError
from ...launcher import DEFAULT_LAUNCHER_PATH, DEFAULT_STATE_DIR, UNIT_PROPERTIES, parse_show
from ...models import ExitResult, TaskState
from .base import Capabilities, Executor, Fingerprint, Handle, LaunchSpec, Presence
from .dirwatch import DirWatch
from .launcher_session import Call, LauncherSession
from .output import check_written_files, summary

log = logging.getLogger(__name__)

LAUNCHER_PROG = "hakuriver-task-launcher"
DEFAULT_SUDO = "/usr/bin/sudo"
DEFAULT_SYSTEMCTL = "/usr/bin/systemctl"
CALL_TIMEOUT = 120.0
"""The launcher's own tool calls time out at 120 s; `cleanup` may wait for a stop."""
# Reading a few status files is a handful of stat() calls, so a short interval
# costs little and is most of the end-to-end latency of a short task. The
# `systemctl show` safety net (a process spawn) stays about every 3 s.
DEFAULT_POLL_INTERVAL = 0.1
UNIT_CHECK_EVERY = 30
"""Poll intervals between two `systemctl show` checks of the waited units."""
WATCHED_POLL_INTERVAL = 1.0
"""The poll interval while an inotify watch on the state dir wakes the poller."""
SYSTEMD_EXIT_CODES = range(200, 256)
"""systemd's own "could not set up the process" exit codes (EXIT_CHDIR, EXIT_USER, ...)."""
LIVE_STATES = ("active", "activating", "deactivating", "reloading")
_RUNNER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")


# --------------------------------------------------------------- pure builders


def service_name(task_id: int) -> str:
    return f"{naming.task_unit_name(task_id)}.service"


def resolve_task_user(spec: LaunchSpec, fallback: str) -> str:
    """The account a task runs as: the submitter's Unix account (`spec.unix_user`); for a
    submitter without one, `fallback` (environment.runner_user) when the admin set
    it; otherwise ExecutorError saying so. Never the runner's own account by
    default, and never empty. Whether the account may run tasks at all (it is not
    root, nor in a root-equivalent group, ...) is the launcher's decision."""
    if spec.unix_user:
        return spec.unix_user
    fallback = (fallback or "").strip()
    if fallback:
        return fallback
    who = f"user {spec.user!r}" if spec.user else "the submitter"
    raise ExecutorError(
        f"{who} has no Unix account, so this runner cannot run their --container NULL task: an admin gives "
        f"them one (hakuriver.admin user add NAME --unix-user ACCOUNT) or sets environment.runner_user in this "
        f"runner's config to the account such tasks run as"
    )


def launch_request(spec: LaunchSpec, *, user: str, runner_name: str, numactl: str | None) -> dict[str, Any]:
    """The JSON the launcher's `start` reads on stdin. Pure."""
    if not spec.command:
        raise ExecutorError(f"task {spec.task_id}: empty command")
    if spec.gpus:
        raise ExecutorError("GPU tasks need a Docker environment: --container NULL cannot pass GPUs through")
    if spec.mounts:
        raise ExecutorError("--mount applies to Docker tasks only; --container NULL tasks see the node's filesystem")
    if spec.privileged:
        raise ExecutorError("--privileged applies to Docker tasks only")
    req: dict[str, Any] = {
        "task_id": str(spec.task_id),
        "user": user,
        "command": list(spec.command),
        "env": {k: v for k, v in spec.env.items() if not k.startswith("HAKURIVER_")},
        "shared_dir": spec.shared_dir.rstrip("/") or "/",
        "local_temp_dir": spec.local_temp_dir.rstrip("/") or "/",
        "stdout": spec.stdout_path,
        "stderr": spec.stderr_path,
    }
    if runner_name and _RUNNER_NAME.match(runner_name):
        req["runner"] = runner_name  # only in the unit's description; odd names are left out
    if spec.cores is not None:
        req["cores"] = int(spec.cores)
    if spec.memory is not None:
        req["memory"] = int(spec.memory)
    if spec.time_limit is not None:
        # Only with a limit: a launcher from before time limits still runs every other task.
        req["time_limit"] = int(spec.time_limit)
        req["timeout_grace"] = max(1, math.ceil(spec.timeout_grace))
    if spec.attempt != 1:
        # Only for a retry (its own log files): a launcher from before retries runs every first attempt.
        req["attempt"] = int(spec.attempt)
    if spec.array_index is not None:
        # Only for array tasks: a launcher from before arrays still runs every other task.
        req["array_index"] = int(spec.array_index)
        req["batch_id"] = str(spec.batch_id)
    if spec.numa is not None:
        if not numactl:
            raise ExecutorError(
                f"task {spec.task_id} targets NUMA node {spec.numa.id}, but numactl is not installed on this node "
                "(install the numactl package or set paths.numactl_path)"
            )
        req["numa"] = int(spec.numa.id)
        req["numactl"] = numactl
    return req


def launcher_argv(launcher: str, sub: str, *args: str, sudo: str | None) -> list[str]:
    """`sudo -n -- <launcher> sub args...` (or the launcher alone for a root runner). Pure."""
    base = [launcher, sub, *args]
    return [sudo, "-n", "--", *base] if sudo else base


def signal_of(text: str) -> _signal.Signals | None:
    """A signal from systemd's words for it: "KILL", "SIGKILL" or "9"."""
    try:
        return _signal.Signals(int(text))
    except ValueError:
        pass
    try:
        return _signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except KeyError:
        return None


def exit_result_from_record(record: dict[str, Any]) -> ExitResult:
    """The ExitResult of a task from the record its unit's poststop hook wrote. Pure."""
    code_kind = str(record.get("exit_code", ""))
    status = str(record.get("exit_status", ""))
    result = str(record.get("result", ""))
    oom = int(record.get("oom_kills") or 0) > 0 or result == "oom-kill"
    return _result(code_kind, status, result, oom)


def exit_result_from_unit(props: dict[str, str]) -> ExitResult:
    """Fallback from `systemctl show` of a failed unit with no record. Pure."""
    kinds = {"1": "exited", "2": "killed", "3": "dumped"}
    code_kind = kinds.get(props.get("ExecMainCode", ""), "")
    status = props.get("ExecMainStatus", "")
    result = props.get("Result", "")
    return _result(code_kind, status, result, result == "oom-kill")


def _result(code_kind: str, status: str, result: str, oom: bool) -> ExitResult:
    code: int | None
    if code_kind == "exited" and status.lstrip("-").isdigit():
        code = int(status)
    elif code_kind in ("killed", "dumped"):
        sig = signal_of(status)
        code = 128 + int(sig) if sig is not None else None
    else:
        code = None
    if oom and (code is None or code != 0):
        return ExitResult(
            TaskState.KILLED_OOM,
            code,
            f"killed by the out-of-memory killer (exit code {code})"
            if code is not None
            else "killed by the out-of-memory killer",
        )
    if result == "timeout":
        # RuntimeMaxSec= struck (the supervisor words the limit; a "timeout"
        # without a limit, a stop that hung, it turns into FAILED).
        return ExitResult(TaskState.TIMEOUT, code, "the unit's time limit (RuntimeMaxSec) was reached")
    if code == 0:
        return ExitResult(TaskState.COMPLETED, 0)
    if code_kind in ("killed", "dumped"):
        sig = signal_of(status)
        name = sig.name if sig is not None else status
        return ExitResult(
            TaskState.FAILED, code, f"killed by signal {name}" + (" (core dumped)" if code_kind == "dumped" else "")
        )
    if code is not None and code in SYSTEMD_EXIT_CODES:
        return ExitResult(
            TaskState.FAILED,
            code,
            f"systemd could not set up the task (exit code {code}, result "
            f"{result or 'unknown'}); see journalctl -u of its unit",
        )
    if code is not None:
        return ExitResult(TaskState.FAILED, code, f"exited with code {code}")
    return ExitResult(TaskState.FAILED, None, f"the task's unit ended with result {result or 'unknown'}")


def launcher_problem(path: str) -> str | None:
    """Why the launcher at `path` cannot be used, or None when it is installed as it must be."""
    try:
        st = os.stat(path)
    except OSError:
        return (
            f"the HakuRiver task launcher is not installed at {path} "
            "(write it with `hakuriver.init launcher` and run the install steps it prints, as root)"
        )
    if st.st_uid != 0 or st.st_mode & 0o022:
        return f"{path} must be owned by root and writable by root only"
    if not st.st_mode & 0o111:
        return f"{path} is not executable"
    return None


def allow_list_summary(info: dict[str, Any]) -> str:
    """Who the launcher's allow-list (`launcher info`) lets tasks run as, in words. Pure."""
    users = [str(u) for u in info.get("task_users") or []]
    groups = [f"members of {g}" for g in info.get("task_groups") or []]
    return ", ".join(users + groups) or "nobody yet"


def fallback_problem(info: dict[str, Any], user: str, accounts: Any = None) -> str | None:
    """Why the launcher whose `info` this is would refuse tasks as `user`, or None.
    Advisory (the launcher decides for each task): the same check, run here."""
    try:
        cfg = launcher_mod.parse_config({k: v for k, v in info.items() if k in launcher_mod.CONFIG_FIELDS})
        launcher_mod.check_task_account(cfg, user, accounts or launcher_mod.SYSTEM_ACCOUNTS)
    except launcher_mod.Refused as exc:
        return str(exc)
    return None


SYSTEMD_RUN_DIR = "/run/systemd/system"


def systemd_booted(run_dir: str = SYSTEMD_RUN_DIR) -> bool:
    """sd_booted(): systemd is PID 1."""
    return os.path.isdir(run_dir)


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return ""


def resolve_numactl(configured: str) -> str | None:
    if configured:
        return configured if os.path.isabs(configured) else shutil.which(configured)
    return shutil.which("numactl")


# ------------------------------------------------------------------ executor


@dataclass(eq=False)
class _Waiter:
    task_id: int
    future: asyncio.Future[ExitResult]
    absent: int = 0
    """Consecutive unit checks that found neither the unit nor a record."""


class SystemdExecutor(Executor):
    """Runs each task as a transient systemd service. See the module docstring."""

    name = "systemd"
    capabilities = Capabilities(pause=True, time_limit=True)

    def __init__(
        self,
        runner_name: str,
        *,
        fallback_user: str = "",
        service_user: str | None = None,
        launcher_path: str = DEFAULT_LAUNCHER_PATH,
        numactl_path: str = "",
        use_sudo: bool | None = None,
        sudo_path: str = DEFAULT_SUDO,
        systemctl_path: str = DEFAULT_SYSTEMCTL,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        unit_check_every: int = UNIT_CHECK_EVERY,
        systemd_run_dir: str = SYSTEMD_RUN_DIR,
    ):
        """`fallback_user`: environment.runner_user, the account tasks of users without a
        Unix account run as (empty: those tasks are refused). `service_user`: the account
        the runner itself runs as (default: the current one), for messages only.
        `use_sudo`: call the launcher through `sudo -n` (default: unless running as root).
        `systemd_run_dir`: what exists only where systemd is PID 1 (sd_booted())."""
        self.runner_name = runner_name
        self.fallback_user = (fallback_user or "").strip()
        self.service_user = service_user if service_user is not None else current_user()
        self.launcher_path = launcher_path
        self.numactl_path = numactl_path
        self.use_sudo = (os.geteuid() != 0) if use_sudo is None else use_sudo
        self.sudo_path = sudo_path
        self.systemctl_path = systemctl_path
        self.poll_interval = poll_interval
        self.unit_check_every = max(1, unit_check_every)
        self.systemd_run_dir = systemd_run_dir
        self._state_dir: str | None = None
        self._waiters: dict[int, _Waiter] = {}
        self._poller: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._dirwatch = DirWatch()
        self._closed = False
        self._session = LauncherSession(self._launcher_argv("serve"))

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> SystemdExecutor:
        return cls(
            config.runner_name,
            fallback_user=config.environment.runner_user,
            numactl_path=config.paths.numactl_path,
            **kwargs,
        )

    async def unavailable(self) -> str | None:
        """Where systemd is not PID 1, or the root-owned launcher is not installed as
        it must be. A missing sudoers rule or allow-list entry is not detected here:
        `fingerprint` reports it, and each task fails with the same reason."""

        def check() -> str | None:
            if not systemd_booted(self.systemd_run_dir):
                return "systemd is not PID 1"
            return launcher_problem(self.launcher_path)

        return await asyncio.to_thread(check)  # stat() calls: a hung mount must not stall the loop

    # -- plumbing ---------------------------------------------------------
    async def _exec(self, argv: list[str], *, input: bytes | None = None, timeout: float = CALL_TIMEOUT) -> Call:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise ExecutorError(f"{argv[0]} is not installed on this node") from None
        except OSError as exc:
            raise ExecutorError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.kill()
            await proc.wait()
            raise ExecutorError(
                f"{os.path.basename(argv[0])} {' '.join(argv[1:4])} did not finish within {timeout:.0f}s"
            ) from None
        except asyncio.CancelledError:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    proc.kill()
            raise
        return Call(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    def _explain(self, call: Call) -> str:
        text = " ".join(call.stderr.split()) or " ".join(call.stdout.split()) or f"exit status {call.rc}"
        prefix = f"{LAUNCHER_PROG}: "
        if text.startswith(prefix):
            return text[len(prefix) :]
        if text.startswith("sudo:"):
            return (
                f"the runner user {self.service_user!r} may not run the task launcher as root ({text}); "
                f"install the sudoers drop-in (hakuriver.init launcher writes it with the launcher)"
            )
        return text

    def _launcher_argv(self, sub: str, *args: str) -> list[str]:
        return launcher_argv(self.launcher_path, sub, *args, sudo=self.sudo_path if self.use_sudo else None)

    async def _launcher(self, sub: str, *args: str, input: bytes | None = None) -> dict[str, Any]:
        problem = launcher_problem(self.launcher_path)
        if problem:
            raise ExecutorError(problem)
        # The long-lived launcher where it can answer; else the one-shot call (see launcher_session).
        call = await self._session.call([sub, *args], input=input, timeout=CALL_TIMEOUT)
        if call is None:
            call = await self._exec(self._launcher_argv(sub, *args), input=input)
        if call.rc != 0:
            raise ExecutorError(self._explain(call))
        try:
            data = json.loads(call.stdout or "{}")
        except ValueError:
            raise ExecutorError(
                f"the task launcher answered {sub} with something that is not JSON: {call.stdout[:200]!r}"
            ) from None
        return data if isinstance(data, dict) else {}

    async def fingerprint(self) -> Fingerprint:
        """Runs `launcher info` through sudo: the facts are the launcher's paths and
        the allow-list it reads. Warns (in the log) when the launcher would refuse
        environment.runner_user, checked here against the node's accounts."""
        info = await self._launcher("info")
        self._state_dir = str(info.get("state_dir") or DEFAULT_STATE_DIR)
        allowed = allow_list_summary(info)
        fallback = "are refused"
        if self.fallback_user:
            fallback = f"run as {self.fallback_user}"
            problem = await asyncio.to_thread(fallback_problem, info, self.fallback_user)  # NSS may be slow
            if problem:
                log.warning("environment.runner_user %r: %s", self.fallback_user, problem)
                fallback = f"are refused ({problem})"
        return Fingerprint(
            version=str(info.get("version", "unknown")),
            summary=(
                f"--container NULL tasks run as their submitter's Unix account through {info.get('launcher')} "
                f"(it allows {allowed}); tasks of users without one {fallback}"
            ),
            facts=info,
        )

    async def _state_dir_path(self) -> str:
        if self._state_dir is None:
            info = await self._launcher("info")
            self._state_dir = str(info.get("state_dir") or DEFAULT_STATE_DIR)
        return self._state_dir

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorError("the systemd executor is closed")

    # -- start ------------------------------------------------------------
    async def start(self, spec: LaunchSpec) -> Handle:
        self._check_open()
        user = resolve_task_user(spec, self.fallback_user)
        numactl = resolve_numactl(self.numactl_path) if spec.numa is not None else None
        request = launch_request(spec, user=user, runner_name=self.runner_name, numactl=numactl)
        # Shielded: a start cancelled because the runner is stopping lets the launcher
        # finish (its unit has the deterministic name the supervisor persisted before
        # calling start, so the next runner adopts it) rather than leaving a unit
        # half-made or racing a cleanup against it.
        job = asyncio.ensure_future(self._launcher("start", input=json.dumps(request).encode()))
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # never "never retrieved"
        answer = await asyncio.shield(job)
        if answer.get("state_dir"):
            self._state_dir = str(answer["state_dir"])
        return Handle(
            task_id=spec.task_id,
            executor=self.name,
            ref=str(answer.get("unit") or service_name(spec.task_id)),
            data={"user": user, "stdout": spec.stdout_path, "stderr": spec.stderr_path},
        )

    # -- observing --------------------------------------------------------
    def _read_record(self, state_dir: str, task_id: int) -> dict[str, Any] | None:
        try:
            with open(os.path.join(state_dir, f"{task_id}.json"), encoding="utf-8") as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def _records(self, task_ids: list[int]) -> dict[int, dict[str, Any]]:
        state_dir = await self._state_dir_path()

        def read_all() -> dict[int, dict[str, Any]]:
            found = {}
            for tid in task_ids:
                rec = self._read_record(state_dir, tid)
                if rec is not None:
                    found[tid] = rec
            return found

        return await asyncio.to_thread(read_all)

    async def _show(self, task_ids: list[int]) -> dict[int, dict[str, str]]:
        """One `systemctl show` for all these units (unprivileged, read-only)."""
        if not task_ids:
            return {}
        units = [service_name(t) for t in task_ids]
        call = await self._exec(
            [self.systemctl_path, "--no-pager", "show", "--property=" + ",".join(UNIT_PROPERTIES), "--", *units],
            timeout=60,
        )
        if call.rc != 0:
            raise ExecutorError(f"systemctl show failed: {self._explain(call)}")
        by_unit = {b.get("Id", ""): b for b in parse_show(call.stdout)}
        out = {tid: by_unit.get(unit, {"LoadState": "not-found"}) for tid, unit in zip(task_ids, units, strict=True)}
        return out

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll_loop())
        self._wake.set()

    async def _watch_state_dir(self) -> None:
        """Wake the poller as soon as the hook renames a record into the state
        dir (inotify); where that is not possible the poller keeps its interval."""
        if self._dirwatch.active:
            return
        try:
            state_dir = await self._state_dir_path()
        except ExecutorError:
            return  # the round's own read reports it
        self._dirwatch.start(state_dir, self._wake.set)

    async def _poll_loop(self) -> None:
        # The watch first, then the reads: a record renamed in between still wakes us.
        await self._watch_state_dir()
        loop = asyncio.get_running_loop()
        check_every = self.poll_interval * self.unit_check_every
        last_check = -check_every
        while not self._closed and any(not w.future.done() for w in self._waiters.values()):
            now = loop.time()
            check_units = now - last_check >= check_every
            if check_units:
                last_check = now
            self._wake.clear()
            try:
                await self._poll_once(check_units=check_units)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a bad round must not end the loop
                log.warning("watching systemd tasks: %s", exc)
            # Watched, the interval is only the safety net (and the systemctl
            # check's clock); unwatched, it is the latency of every task's end.
            interval = max(self.poll_interval, WATCHED_POLL_INTERVAL) if self._dirwatch.active else self.poll_interval
            try:
                await asyncio.wait_for(self._wake.wait(), min(interval, check_every))
            except TimeoutError:
                pass

    async def _poll_once(self, *, check_units: bool) -> None:
        pending = [w for w in self._waiters.values() if not w.future.done()]
        if not pending:
            return
        records = await self._records([w.task_id for w in pending])
        for w in pending:
            if w.task_id in records:
                self._settle(w, exit_result_from_record(records[w.task_id]))
        rest = [w for w in pending if not w.future.done()]
        if not check_units or not rest:
            return
        units = await self._show([w.task_id for w in rest])
        # A record written between the two reads must win over "not found".
        late = await self._records([w.task_id for w in rest])
        for w in rest:
            if w.task_id in late:
                self._settle(w, exit_result_from_record(late[w.task_id]))
                continue
            props = units.get(w.task_id, {})
            load, active = props.get("LoadState", ""), props.get("ActiveState", "")
            if load == "loaded" and active == "failed":
                w.absent += 1
                if w.absent >= 2:  # the hook had its chance: fall back to systemd's memory
                    self._settle(w, exit_result_from_unit(props))
            elif load != "loaded" or active == "inactive":
                w.absent += 1
                if w.absent >= 2:
                    self._settle(
                        w,
                        ExitResult(
                            TaskState.LOST, None, "the task's unit disappeared without recording its exit status"
                        ),
                    )
            else:
                w.absent = 0

    def _settle(self, w: _Waiter, result: ExitResult) -> None:
        if not w.future.done():
            w.future.set_result(result)

    # -- the contract -----------------------------------------------------
    async def wait(self, handle: Handle) -> ExitResult:
        self._check_open()
        w = self._waiters.get(handle.task_id)
        if w is None or (w.future.done() and w.future.cancelled()):
            w = _Waiter(handle.task_id, asyncio.get_running_loop().create_future())
            self._waiters[handle.task_id] = w
        self._ensure_poller()
        try:
            result = await asyncio.shield(w.future)
        finally:
            if w.future.done() and self._waiters.get(handle.task_id) is w:
                del self._waiters[handle.task_id]
        return await self._with_output_check(handle, result)

    async def _with_output_check(self, handle: Handle, result: ExitResult) -> ExitResult:
        """`result` with what can be seen of its output files from outside: the
        task's own processes wrote them, so only a file that is gone or a file
        system left full is detected (`output.check_written_files`)."""
        paths = {k: handle.data[k] for k in ("stdout", "stderr") if isinstance(handle.data.get(k), str)}
        if not paths or result.state is TaskState.LOST:
            return result
        faults = await asyncio.to_thread(check_written_files, paths)
        text = summary(faults)
        if text is None:
            return result
        log.warning("task %s ended (%s) but its output is likely incomplete: %s", handle.task_id, result.state, text)
        return dataclasses.replace(result, output_error=text)

    async def stop(self, handle: Handle, signal: str = "SIGKILL") -> None:
        self._check_open()
        await self._launcher("kill", str(handle.task_id), signal)
        self._wake.set()

    async def pause(self, handle: Handle) -> None:
        self._check_open()
        try:
            await self._launcher("pause", str(handle.task_id))
        except ExecutorError as exc:
            raise ExecutorError(f"cannot pause task {handle.task_id}: {exc.message}") from None

    async def resume(self, handle: Handle) -> None:
        self._check_open()
        try:
            await self._launcher("resume", str(handle.task_id))
        except ExecutorError as exc:
            raise ExecutorError(f"cannot resume task {handle.task_id}: {exc.message}") from None

    async def destroy(self, handle: Handle) -> None:
        w = self._waiters.pop(handle.task_id, None)
        await self._launcher("cleanup", str(handle.task_id))
        if w is not None and not w.future.done():
            w.future.set_exception(ExecutorError(f"task {handle.task_id} was destroyed before it ended"))
            w.future.exception()  # retrieved: nobody else may be waiting

    async def recover(self, handle: Handle) -> Presence:
        """Also accepts the supervisor's placeholder handle (ref = the bare unit name)."""
        self._check_open()
        handle.ref = service_name(handle.task_id)
        records = await self._records([handle.task_id])
        if handle.task_id in records:
            return Presence.EXITED
        props = (await self._show([handle.task_id]))[handle.task_id]
        if props.get("LoadState") != "loaded" or props.get("ActiveState") == "inactive":
            # Ended between the two reads, or never there.
            if handle.task_id in await self._records([handle.task_id]):
                return Presence.EXITED
            return Presence.MISSING
        if props.get("ActiveState") == "failed":
            return Presence.EXITED
        if props.get("ActiveState") in LIVE_STATES and props.get("SubState") == "running":
            pid = props.get("MainPID", "0")
            if pid.isdigit() and int(pid) > 0 and await asyncio.to_thread(_stopped, int(pid)):
                return Presence.PAUSED
        return Presence.RUNNING

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        self._dirwatch.close()
        await self._session.close()
        for w in self._waiters.values():
            if not w.future.done():
                w.future.set_exception(ExecutorError("the systemd executor was closed before the task ended"))
                w.future.exception()
        self._waiters.clear()


def _stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return False
    _, _, rest = text.rpartition(")")
    return rest.strip()[:1] in ("T", "t")
