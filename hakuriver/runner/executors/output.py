"""Output faults: why a task's stdout/stderr files are, or may be, incomplete.

A task whose output could not be fully written keeps its real state and exit
code; its result carries `ExitResult.output_error`, one line built here from
the faults its executor saw, e.g.
"stdout: No space left on device (ENOSPC) after 1M written".

What each backend can see differs (the README says so too):

- Docker: the runner itself writes the files from the container's log, so
  every failed write (ENOSPC, EIO, EDQUOT, ...), a failed final `fsync`, and
  a file removed or replaced under it (a vanished shared dir) is seen
  exactly (`write_fault`, `file_gone`).
- `--container NULL`: the task's own processes write the files, so their
  write errors reach only them. The runner checks what it can once the task
  has ended (`check_written_files`): the files are still there, and the
  shared dir's file system was not full (no space left for unprivileged
  writers). A full disk that was freed before the task ended, or an I/O
  error on a disk with room, is not detected.

Pure functions, except the `check_*` ones, which block (file system calls):
run them in a thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass

from ...parsing import format_size


@dataclass(frozen=True)
class OutputFault:
    """One stream's problem: `stream` ("stdout", "stderr", or "output" for both),
    `why` (a person's words), `written` (bytes in the file then, when known)."""

    stream: str
    why: str
    written: int | None = None

    def __str__(self) -> str:
        if self.written is None:
            return f"{self.stream}: {self.why}"
        if self.written == 0:
            return f"{self.stream}: {self.why} with nothing written"
        return f"{self.stream}: {self.why} after {format_size(self.written)} written"


def _bytes(n: int) -> str:
    return f"{n} bytes" if n < 1024 else f"{format_size(n)} ({n} bytes)"


def os_error_text(exc: OSError) -> str:
    """The message and the errno's name: "No space left on device (ENOSPC)"."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def write_fault(stream: str, exc: OSError, written: int | None) -> OutputFault:
    """A write (or fsync, or open) of `stream`'s file failed with `exc`."""
    return OutputFault(stream, os_error_text(exc), written)


def summary(faults: Iterable[OutputFault]) -> str | None:
    """The one line an `ExitResult.output_error` holds, or None when there is nothing wrong."""
    text = "; ".join(str(f) for f in faults)
    return text or None


def file_gone(stream: str, path: str, fd: int) -> OutputFault | None:
    """Whether the file open as `fd` is no longer the one at `path` (removed,
    replaced, or its directory gone): what was written there is lost. Blocks."""
    try:
        at_path = os.lstat(path)
    except FileNotFoundError:
        return OutputFault(stream, f"the output file {path} was removed while the task ran (is the shared dir gone?)")
    except OSError as exc:
        return OutputFault(stream, f"cannot check the output file {path}: {os_error_text(exc)}")
    mine = os.fstat(fd)
    if (at_path.st_dev, at_path.st_ino) != (mine.st_dev, mine.st_ino):
        return OutputFault(stream, f"the output file {path} was replaced while the task ran")
    return None


def check_written_files(paths: dict[str, str]) -> list[OutputFault]:
    """After a task that wrote its own files (`--container NULL`) has ended:
    each of `paths` ({"stdout": path, ...}) still exists as a regular file, and
    the file system holding them has room left for an unprivileged writer
    (none left means the task's last writes most likely failed with ENOSPC).
    Blocks; never follows a link (lstat only)."""
    faults: list[OutputFault] = []
    sizes: dict[str, int] = {}
    for stream, path in paths.items():
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            faults.append(OutputFault(stream, f"the output file {path} is gone (is the shared dir gone?)"))
            continue
        except OSError as exc:
            faults.append(OutputFault(stream, f"cannot check the output file {path}: {os_error_text(exc)}"))
            continue
        sizes[stream] = st.st_size
    if sizes:
        parent = os.path.dirname(next(iter(paths.values())))
        try:
            vfs = os.statvfs(parent)
        except OSError as exc:
            faults.append(OutputFault("output", f"cannot check the shared dir's free space: {os_error_text(exc)}"))
        else:
            if vfs.f_bavail == 0:
                held = ", ".join(f"{stream} holds {_bytes(size)}" for stream, size in sizes.items())
                faults.append(
                    OutputFault(
                        "output",
                        "the shared dir's file system was full when the task ended, so its last writes most "
                        f"likely failed with No space left on device (ENOSPC); {held}",
                    )
                )
    return faults
