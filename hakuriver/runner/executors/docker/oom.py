"""OOM kills the engine does not report: the kernel's own records in /dev/kmsg.

Docker's `State.OOMKilled` is the first source; where the engine never sets
it (kernel 6.x with cgroup v1, as on this project's CI) `KernelOomLog` finds
the kill in the kernel log instead.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict

log = logging.getLogger(__name__)


_OOM_SUMMARY = re.compile(r"oom-kill:.*?(?:oom_memcg=([^,\s]*))?,task_memcg=([^,\s]*)")
_OOM_OLD = re.compile(r"Task in (\S+) killed as a result of limit of (\S+)")
_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def oom_cgroups_in(message: str) -> list[str]:
    """Container ids named by a kernel OOM-kill record (both the 4.19+ summary line
    and the older "Task in ... killed" line). Pure."""
    ids: list[str] = []
    for rx in (_OOM_SUMMARY, _OOM_OLD):
        m = rx.search(message)
        if m:
            for part in m.groups():
                ids.extend(_CONTAINER_ID.findall(part or ""))
    return list(dict.fromkeys(ids))


class KernelOomLog:
    """Which containers the kernel OOM killer struck, read from /dev/kmsg.

    Docker's `State.OOMKilled` relies on containerd's cgroup OOM events, which
    some kernel/cgroup combinations never deliver (this project's CI: kernel
    6.x with cgroup v1 reports a memory kill as a plain exit 137). The kernel
    logs every memcg OOM kill, with the cgroup path (which holds the container
    id), *before* it sends the SIGKILL; so by the time a container is seen
    exited its record is in the log. Nothing runs in the background: `killed()`
    drains the new records without blocking, then looks the id up. Where
    /dev/kmsg cannot be read it says False and Docker's flag alone decides.
    """

    MAX_REMEMBERED = 4096

    def __init__(self, path: str = "/dev/kmsg"):
        self._path = path
        self._fd: int | None = None
        self._tried = False
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def killed(self, container_id: str) -> bool:
        with self._lock:
            if not self._tried:
                self._tried = True
                try:
                    # From the oldest record still in the ring buffer, so that a
                    # runner restarted after the kill still finds it.
                    self._fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as exc:
                    log.info("cannot read the kernel log (%s): OOM kills rely on Docker's OOMKilled flag", exc)
            if self._fd is not None:
                self._drain()
            return container_id in self._seen

    def _drain(self) -> None:
        assert self._fd is not None
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                return
            except BrokenPipeError:  # records overwritten before we read them: skip ahead
                continue
            except OSError as exc:
                log.warning("reading the kernel log failed (%s); no longer watching it", exc)
                self.close()
                return
            if not record:
                return
            _, _, message = record.decode("utf-8", errors="replace").partition(";")
            if "oom" not in message.lower():
                continue
            for cid in oom_cgroups_in(message):
                self._seen[cid] = None
                self._seen.move_to_end(cid)
                while len(self._seen) > self.MAX_REMEMBERED:
                    self._seen.popitem(last=False)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
