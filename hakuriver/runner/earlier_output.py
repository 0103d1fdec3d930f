"""An earlier attempt's output files, kept when a task is retried.

A task's stdout and stderr live at one name each (`naming.stdout_path`), and
each backend starts its attempt's files afresh there: Docker creates them new
(the files mirror the container's log byte for byte), `--container NULL`
appends to what it finds. Before a retried task's next attempt starts, the
runner that takes it moves the files the previous attempt left to their own
names (`naming.stdout_path(..., earlier=N)`: `ID.attemptN.out`, and
`ID.attemptN.err`), so no attempt's output is lost or mixed into the next
one, whichever backend or node ran it, and `hakuriver.task logs --attempt N`
reads them back.

Only a regular file is moved, by name inside its directory opened without
following links (`safefiles.open_log_dir`); a link or anything else standing
there is left for the executor, which never writes through it. A name that
is taken already (a repeated order of the same attempt) is not overwritten.
Blocks (file system calls): run it in a thread.
"""

from __future__ import annotations

import logging
import os
import stat

from .. import naming
from ..errors import HakuRiverError
from ..safefiles import open_log_dir

log = logging.getLogger(__name__)


def keep_earlier_output(shared_dir: str, task_id: int, earlier: int) -> list[str]:
    """Move attempt `earlier`'s stdout and stderr files of task `task_id` to
    their attempt names; returns the new paths of those moved."""
    moved: list[str] = []
    for path_of in (naming.stdout_path, naming.stderr_path):
        current, kept = path_of(shared_dir, task_id), path_of(shared_dir, task_id, earlier)
        try:
            dir_fd, name = open_log_dir(current, create=False)
        except FileNotFoundError:
            continue  # nothing was ever written there
        except (OSError, HakuRiverError) as exc:
            log.warning("task %s: cannot keep attempt %d's output %s: %s", task_id, earlier, current, exc)
            continue
        try:
            if _move(dir_fd, name, os.path.basename(kept), task_id, earlier):
                moved.append(kept)
        finally:
            os.close(dir_fd)
    return moved


def _move(dir_fd: int, name: str, new_name: str, task_id: int, earlier: int) -> bool:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False  # not output anyone wrote; the executor replaces it and says so
    try:
        os.stat(new_name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        pass
    else:
        log.warning("task %s: %s is there already; attempt %d's output stays at %s", task_id, new_name, earlier, name)
        return False
    try:
        # The directory is the runner's alone (safefiles.LOG_DIR_MODE), so nobody
        # makes `new_name` between the check and the rename.
        os.rename(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        log.warning("task %s: cannot keep attempt %d's output %s: %s", task_id, earlier, name, exc)
        return False
    return True
