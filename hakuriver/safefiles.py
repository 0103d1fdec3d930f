"""Opening files a task could have tampered with: the task logs in the shared dir.

Tasks can write into the shared dir (their own files, and, run as root,
anything). HakuRiver itself writes each task's log files there (the runner)
and reads them back (the Host's log endpoint). A task may plant a symbolic
link, a FIFO, a device node or a hard link where a log goes; every open of
such a path goes through here, so none of them is ever followed or opened:

- The trusted root (the shared dir: the admin's path) is opened as given.
  Every component below it is opened relative to its parent's descriptor
  (`openat`) with `O_NOFOLLOW`, so no link is followed at any level: a log
  directory replaced by a link is refused, not entered.
- Only regular files are opened for data. The entry is `lstat`ed first (a
  FIFO or a device node is never even opened), opened with `O_NONBLOCK`
  and `O_NOCTTY` (a FIFO swapped in meanwhile cannot block the open), then
  `fstat`ed: it must be that same regular file, with exactly one link (a
  hard link would let a task's log name another file's contents).
- A new file is created with `O_CREAT | O_EXCL`: nothing that exists is
  truncated. Whatever squats on a new task's log name is unlinked first
  (unlinking a link never touches its target).
- A file re-opened to append to (after a runner restart) must also belong
  to this process's uid; anything else is replaced by a fresh file.

`UnsafeFile` (409) names what was found instead of a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .errors import Conflict

LOG_DIR_MODE = 0o755
"""task_outputs/ and task_errors/: the runner's, readable by all, writable by it alone."""
LOG_FILE_MODE = 0o640
"""A task's log file: the runner writes it, its group (the Host's) reads it."""

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_DATA_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class UnsafeFile(Conflict):
    """What is at a log path is not a regular file HakuRiver may use (409)."""

    code = "unsafe_file"


def describe(st: os.stat_result) -> str:
    """What a (non-regular, or multiply linked) entry is, in words."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode) and st.st_nlink != 1:
        return f"a file with {st.st_nlink} hard links"
    return "not a regular file"


def _safe_regular(st: os.stat_result, links_ok: bool = False) -> bool:
    return stat.S_ISREG(st.st_mode) and (links_ok or st.st_nlink == 1)


def open_dir(root: str, parts: Sequence[str], *, create_mode: int | None = None) -> int:
    """A descriptor of `root`/`parts...`: `root` as given, each part with
    O_NOFOLLOW relative to the one above. `create_mode`: make missing parts
    with exactly that mode (owned by this process). FileNotFoundError when a
    part is missing (and not created); UnsafeFile when one is not a real
    directory."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parts:
            _check_name(part)
            created = False
            if create_mode is not None:
                try:
                    os.mkdir(part, create_mode, dir_fd=fd)
                    created = True
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    raise UnsafeFile(
                        f"{os.path.join(root, *parts)}: {part} is {describe(st)}, not a directory"
                    ) from None
                raise
            os.close(fd)
            fd = child
            if created and create_mode is not None:
                os.fchmod(fd, create_mode)  # exactly, whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(dir_fd: int, name: str, flags: int, *, owner: int | None = None, links_ok: bool = False) -> int:
    """Open the regular, singly linked file `name` in `dir_fd` (never following
    a link, never opening anything else). `owner`: it must belong to that uid.
    `links_ok`: hard links are fine (a file whose contents are only parsed).
    FileNotFoundError when there is nothing; UnsafeFile when it is not such a
    file."""
    _check_name(name)
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not _safe_regular(st, links_ok):
        raise UnsafeFile(f"{name} is {describe(st)}")
    try:
        fd = os.open(name, flags | _DATA_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # swapped since the lstat
            raise UnsafeFile(f"{name} changed while it was opened") from None
        raise
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) or not _safe_regular(now, links_ok):
            raise UnsafeFile(f"{name} changed while it was opened")
        if owner is not None and now.st_uid != owner:
            raise UnsafeFile(f"{name} belongs to uid {now.st_uid}, not to uid {owner}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_new(dir_fd: int, name: str, mode: int = LOG_FILE_MODE) -> int:
    """Create `name` in `dir_fd`, empty, for appending, with exactly `mode`:
    FileExistsError if anything (a link, even a dangling one) is there."""
    _check_name(name)
    fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _DATA_FLAGS, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace_with_new(dir_fd: int, name: str, mode: int = LOG_FILE_MODE) -> tuple[int, str | None]:
    """A fresh empty file at `name`, whatever was there: what was there is
    unlinked (a link's target is untouched) and the file created exclusively.
    Returns the descriptor and what was replaced (None: nothing was).
    UnsafeFile when the name is held by a directory."""
    replaced: str | None = None
    for _ in range(8):
        try:
            return create_new(dir_fd, name, mode), replaced
        except FileExistsError:
            pass
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeFile(f"{name} is a directory")
        replaced = describe(st) if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 else "a file"
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
    raise UnsafeFile(f"{name} keeps being recreated by someone else")


def open_log_dir(path: str, *, create: bool) -> tuple[int, str]:
    """The descriptor of a task log's directory, and the log's name. A log path
    is `<shared>/<task_outputs|task_errors>/<name>` (`naming.stdout_path`):
    the shared dir is the admin's and opened as given, the directory below
    it without following a link. `create`: make it (LOG_DIR_MODE) if missing."""
    parent, name = os.path.split(path)
    root, sub = os.path.split(parent)
    return open_dir(root or "/", [sub], create_mode=LOG_DIR_MODE if create else None), name


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a single path component: {name!r}")


def write_file(path: Path, text: str, *, mode: int, overwrite: bool) -> None:
    """Write `text` to `path` with `mode` from the first byte: HakuRiver's one way to
    write a file it generates (configs, keys, certificates, sudoers rules).

    Without `overwrite`, an existing `path` raises `FileExistsError` (the kernel
    checks it at creation: `O_EXCL`). With it, the text goes to a temporary file
    in the same directory, renamed over `path`, so no reader ever sees a half-
    written file or a wider mode. The data is fsynced before it gets its name.
    """
    if not overwrite:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        target = None
    else:
        fd, target = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), mode)  # whatever the umask or an inherited ACL did
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        if target is not None:
            os.replace(target, path)
    except BaseException:
        try:
            os.unlink(target or path)
        except FileNotFoundError:
            pass
        raise
