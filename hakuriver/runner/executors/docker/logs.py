"""The watch's log half: a container's framed log stream, demultiplexed into
the task's stdout and stderr files.

For each task one dedicated daemon thread (never a default-pool thread)
follows the container's log (`GET /containers/<id>/logs?follow=1`, the
json-file log the daemon keeps anyway) and writes every frame of the 8-byte
framed stream to its file as it arrives, so the files are readable while the
task runs.

The files are always a *prefix* of the container's two streams. So resuming
needs no truncation (which would confuse a `logs --follow` reader): `pump`
replays the log from the start and skips as many bytes of each stream as its
file already holds. This covers a runner restart, an already-exited
container, and a log stream that broke while the daemon restarted. A follow
may miss the very end of the log; `catch_up` completes the files once the
container has stopped.

Every function here blocks and runs in the watch's thread. `api` is a
callable giving the SDK's low-level APIClient (`dockerapi.Engine.api`),
called only when a stream is opened.

The files lie where tasks can write (the shared dir), so they are opened
through `hakuriver.safefiles` only: the log directories are made by the
runner (0755, its own), a new task's files are created exclusively (0640;
whatever a task planted at that name is unlinked, never followed), and a
re-opened file is appended to only if it is a regular, singly linked file
of the runner's own; anything else is replaced by a fresh file, into which
the whole log is replayed.

A write that fails (ENOSPC, EIO, ...) does not end the pass: that stream's
file is left as the prefix it is, its fault is recorded on the watch
(`Watch.faults`), and the pass goes on for the other stream and to see the
container's end. When the container has stopped, `catch_up` replays the
whole log once more against the byte counts, so a file whose disk got room
again ends complete (and its fault is dropped); what still fails then is
the task's `output_error`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .... import safefiles
from ....dockerapi import docker_explanation
from ..output import OutputFault, write_fault

log = logging.getLogger(__name__)

Frame = tuple[int, bytes, bytes]
"""(stream, RFC 3339 timestamp, data) of one log message."""
Api = Callable[[], Any]

STDOUT, STDERR = 1, 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
CATCH_UP_TAIL = 64
"""Log messages re-read after a clean follow to find the ones the follow missed."""

_FRAME = struct.Struct(">BxxxL")


def create_log(path: str) -> str | None:
    """Create a new task's empty log file at `path`; what squatted there, if anything."""
    dir_fd, name = safefiles.open_log_dir(path, create=True)
    try:
        fd, replaced = safefiles.replace_with_new(dir_fd, name)
        os.close(fd)
        return replaced
    finally:
        os.close(dir_fd)


def open_log(path: str, task_id: int) -> Any:
    """The log file at `path` opened to append (unbuffered binary), re-using
    it only if it is a regular, singly linked file of this process's uid;
    otherwise (or when missing) it starts again empty."""
    dir_fd, name = safefiles.open_log_dir(path, create=True)
    try:
        try:
            fd = safefiles.open_regular(dir_fd, name, os.O_WRONLY | os.O_APPEND, owner=os.geteuid())
        except FileNotFoundError:
            fd, _ = safefiles.replace_with_new(dir_fd, name)
        except safefiles.UnsafeFile as exc:
            log.warning("task %s: %s; it is not followed or reused: the log starts again in a new file", task_id, exc)
            fd, _ = safefiles.replace_with_new(dir_fd, name)
    finally:
        os.close(dir_fd)
    return os.fdopen(fd, "ab", buffering=0)


def settle(fut: concurrent.futures.Future, result: Any = None, exc: BaseException | None = None) -> None:
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


def _read_exact(raw: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = raw.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _write_all(fd_file: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = fd_file.write(view)
        view = view[n:]


def _shutdown_socket(sock: Any) -> None:
    for s in (sock, getattr(sock, "_sock", None)):
        if s is not None and hasattr(s, "shutdown"):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except Exception:  # noqa: BLE001, S110 - already closed is fine
                pass
            return


class Trail:
    """How many frames a log pass consumed, and the last few of them."""

    def __init__(self) -> None:
        self.count = 0
        self.frames: deque[Frame] = deque(maxlen=CATCH_UP_TAIL)

    def reset(self) -> None:
        self.count = 0
        self.frames.clear()

    def add(self, frame: Frame) -> None:
        self.count += 1
        self.frames.append(frame)


def missed_after(window: list[Any], consumed: list[Any]) -> list[Any] | None:
    """Given the log's last frames (`window`) and the last frames a pass consumed
    (a prefix of the log ends with `consumed`), the frames the pass missed, or None
    when that is not certain: no alignment or several fit, or the overlap is under
    half the window (too many missed to trust an alignment of timestamped frames).
    Pure."""
    fits = [j for j in range(1, min(len(window), len(consumed)) + 1) if window[:j] == consumed[len(consumed) - j :]]
    if len(fits) != 1 or fits[0] * 2 <= len(window):
        return None
    return window[fits[0] :]


@dataclass(eq=False)
class Watch:
    """One task's log pump and exit observer: its output files, the future `wait()`
    awaits, and the socket `stop()` shuts down to end a blocked read."""

    container_id: str
    task_id: int
    stdout_path: str
    stderr_path: str
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sock: Any = None
    thread: threading.Thread | None = None
    faults: dict[int, OutputFault] = field(default_factory=dict)
    """Per stream, the last failure to write its file (kept by the watch's thread only)."""

    def __post_init__(self) -> None:
        # RUNNING futures cannot be cancelled, so a cancelled wait() cannot cancel the watch.
        self.future.set_running_or_notify_cancel()

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            sock = self.sock
        if sock is not None:
            _shutdown_socket(sock)


def frames(api: Api, w: Watch, params: dict[str, Any]) -> Iterator[Frame]:
    """(stream, timestamp, data) for each message of the container's log.

    Uses the APIClient's request helpers directly because the SDK's `logs()`
    merges stdout and stderr. Each frame of the multiplexed stream is one
    log message, prefixed with its RFC 3339 timestamp (fixed width, UTC, so
    byte strings compare in time order).
    """
    client = api()
    url = client._url("/containers/{0}/logs", w.container_id)
    response = client._get(url, params={**params, "timestamps": 1}, stream=True)
    try:
        client._raise_for_status(response)
        sock = client._get_raw_response_socket(response)
        client._disable_socket_timeout(sock)  # a silent task must not time the stream out
        with w.lock:
            w.sock = sock
        if w.stopping.is_set():
            return
        raw = response.raw
        while True:
            header = _read_exact(raw, _FRAME.size)
            if len(header) < _FRAME.size:
                return
            kind, length = _FRAME.unpack(header)
            payload = _read_exact(raw, length)
            if len(payload) < length:
                return
            ts, sep, data = payload.partition(b" ")
            if not sep:
                ts, data = b"", payload
            yield kind, ts, data
    finally:
        with w.lock:
            w.sock = None
        response.close()


def write_frame(files: dict[int, Any], faults: dict[int, OutputFault], kind: int, data: bytes) -> bool:
    """Append `data` to stream `kind`'s file; on an OSError record the fault in
    `faults` and say False (the file stays a prefix of its stream)."""
    target = files[kind]
    try:
        _write_all(target, data)
    except OSError as exc:
        try:
            written: int | None = os.fstat(target.fileno()).st_size
        except OSError:
            written = None
        faults[kind] = write_fault(STREAM_NAMES.get(kind, "output"), exc, written)
        return False
    return True


def pump(
    api: Api,
    w: Watch,
    files: dict[int, Any],
    trail: Trail,
    *,
    follow: bool,
    faults: dict[int, OutputFault] | None = None,
) -> bool:
    """Replay the log from its start (following it if asked), appending what
    the files lack: each file's size is how much of its stream to skip.
    Records the pass in `trail`, and write failures in `faults` (default
    `w.faults`): a stream whose write failed gets no more writes in this
    pass. Returns whether anything was written."""
    faults = w.faults if faults is None else faults
    trail.reset()
    skip = {kind: os.fstat(f.fileno()).st_size for kind, f in files.items()}
    params = {"stdout": 1, "stderr": 1, "follow": int(follow), "tail": "all"}
    wrote = False
    refused: set[int] = set()
    for frame in frames(api, w, params):
        trail.add(frame)
        kind, _ts, data = frame
        if kind not in files or kind in refused or not data:
            continue
        already = skip[kind]
        if already >= len(data):
            skip[kind] = already - len(data)
        else:
            skip[kind] = 0
            if write_frame(files, faults, kind, data[already:]):
                wrote = True
            else:
                refused.add(kind)
    return wrote


def catch_up(api: Api, w: Watch, files: dict[int, Any], trail: Trail | None) -> None:
    """Fetch what a follow stream can miss once the container has stopped.

    Docker 20.10's follow mode drops what the log copier flushes at exit: a
    last line without a trailing newline. A follow pass always delivers a
    *prefix* of the log, so what is missing is a suffix: after a clean pass
    (`trail` given) a short non-follow tail of the log is aligned with the
    last frames the pass consumed and only what lies beyond is written. When
    the alignment is not certain (a long run of identical frames) or the
    pass broke (`trail` None), the whole log is replayed against the byte
    counts instead, which is always exact.

    After a failed write the whole log is replayed too (only that fills
    the gap, if there is room again); that complete replay's own failures
    replace `w.faults`. A log that cannot be read to its end is a fault of
    both streams ("output").
    """
    try:
        if w.faults:
            trail = None
        missed = _missed_frames(api, w, trail) if trail is not None else None
        if missed is None:
            log.debug("task %s: replaying its whole log to complete the output files", w.task_id)
            final: dict[int, OutputFault] = {}
            pump(api, w, files, Trail(), follow=False, faults=final)
            w.faults = final  # the replay went through the whole log: this is the truth
            return
        if missed:
            log.debug("task %s: %d log message(s) recovered after the follow ended", w.task_id, len(missed))
        for kind, _ts, data in missed:
            if kind in files and data and kind not in w.faults:
                write_frame(files, w.faults, kind, data)
    except Exception as exc:  # noqa: BLE001 - the exit status matters more than the tail
        if not w.stopping.is_set():
            why = docker_explanation(exc)
            log.warning("task %s: the end of its output may be missing: %s", w.task_id, why)
            w.faults.setdefault(
                0, OutputFault("output", f"the end may be missing: cannot read the container's log: {why}")
            )


def _missed_frames(api: Api, w: Watch, trail: Trail) -> list[Frame] | None:
    """The frames after the last pass's end, or None when that is not certain."""
    params = {"stdout": 1, "stderr": 1, "follow": 0, "tail": CATCH_UP_TAIL}
    window = list(frames(api, w, params))
    if len(window) < CATCH_UP_TAIL:  # the window is the whole log
        return window[trail.count :]
    return missed_after(window, list(trail.frames))
