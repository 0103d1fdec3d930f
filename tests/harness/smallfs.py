"""A small real file system for storage-fault tests: a size-limited tmpfs.

`small_tmpfs(path)` mounts one on `path` (root only; the test is skipped,
saying why, where mounting is not permitted) and always unmounts it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "1m", mode: str = "0755") -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (run the tests as root)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs on {path}: {proc.stderr.strip() or proc.returncode}")
    try:
        yield path
    finally:
        done = subprocess.run(["umount", str(path)], capture_output=True, text=True, check=False)
        if done.returncode != 0:  # something still holds a file open there: detach it anyway
            subprocess.run(["umount", "-l", str(path)], capture_output=True, text=True, check=False)


def fill(path: Path) -> int:
    """Fill the file system holding `path` (a new file there) up; the bytes it took."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        chunk = b"\0" * 65536
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError:
                return written
            if n == 0:
                return written
            written += n
    finally:
        os.close(fd)
