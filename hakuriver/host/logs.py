"""Reading a task's output files for the log endpoint.

Pure file work, run in a thread by the API: one chunk from an offset, or the
last N lines. A missing file is an empty log (a task that has not written
yet), not an error.

Tasks can write into the shared dir, so a log is opened only through
`hakuriver.safefiles`: never through a symbolic link (at the file or its
directory), only a regular file with a single link, and never by opening a
FIFO or a device (nothing can make a read block). Anything else raises
`UnsafeFile` (409, with what was found); the target of a planted link is
never read.
"""

from __future__ import annotations

import os
from typing import Any

from ..safefiles import open_log_dir, open_regular

LOG_CHUNK = 1 << 20
"""The most bytes one log request returns; clients page with the next offset."""


def read_log(path: str, offset: int | None, tail: int | None) -> tuple[bytes, int]:
    """`path` is `<shared>/<task_outputs|task_errors>/<name>` (`naming.stdout_path`)."""
    try:
        dir_fd, name = open_log_dir(path, create=False)
    except FileNotFoundError:
        return b"", offset or 0
    try:
        fd = open_regular(dir_fd, name, os.O_RDONLY)
    except FileNotFoundError:
        return b"", offset or 0
    finally:
        os.close(dir_fd)
    with os.fdopen(fd, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if tail is not None:
            start = tail_start(fh, size, tail)
        else:
            start = min(offset or 0, size)
        fh.seek(start)
        data = fh.read(LOG_CHUNK)
        return data, start + len(data)


def tail_start(fh: Any, size: int, lines: int) -> int:
    """Byte offset where the last `lines` lines begin."""
    if lines == 0:
        return size
    pos, found, block = size, 0, 8192
    # A trailing newline ends the last line; it does not start a new one.
    fh.seek(max(size - 1, 0))
    if size and fh.read(1) == b"\n":
        pos -= 1
    while pos > 0:
        step = min(block, pos)
        fh.seek(pos - step)
        chunk = fh.read(step)
        for i in range(len(chunk) - 1, -1, -1):
            if chunk[i] == 0x0A:
                found += 1
                if found == lines:
                    return pos - step + i + 1
        pos -= step
    return 0
