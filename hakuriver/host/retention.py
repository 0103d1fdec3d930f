"""Retention: final tasks older than `database.retain_days` leave the database,
and their log files leave the shared dir.

A purge only ever removes final tasks (the SQL says so twice, see
`Database.purge_final_tasks`), never one a waiting task depends on, and
removes their logs by name inside `task_outputs` / `task_errors` opened
without following links: a log that is a link is unlinked itself, never
what it points to."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Mapping

from .. import naming
from ..config import Config
from ..safefiles import UnsafeFile, open_log_dir
from .db import Database

log = logging.getLogger(__name__)

PURGE_INTERVAL = 3600.0
"""Seconds between purges (the first runs at start-up)."""
PURGE_BATCH = 1000
"""Tasks deleted in one write, so a long history never holds the writer long."""


def remove_logs(shared_dir: str, tasks: Mapping[int, int]) -> int:
    """Unlink the stdout and stderr files of these tasks, every attempt's; return how many
    went. Missing ones are fine; a log directory that is a link is left
    alone (logged). `tasks`: each task id with its last attempt."""
    removed = 0
    ids = list(tasks)
    for path_of in (naming.stdout_path, naming.stderr_path):
        if not ids:
            break
        try:
            dir_fd, _ = open_log_dir(path_of(shared_dir, ids[0]), create=False)
        except FileNotFoundError:
            continue
        except UnsafeFile as exc:
            log.error("not purging logs: %s", exc.message)
            continue
        try:
            for task_id in ids:
                # Every attempt's (naming.stdout_path): any may be missing (one that
                # failed before it wrote), so each one the task had is tried.
                for attempt in range(1, max(1, tasks[task_id]) + 1):
                    name = os.path.basename(path_of(shared_dir, task_id, attempt))
                    try:
                        os.unlink(name, dir_fd=dir_fd)  # a link goes itself; its target stays
                        removed += 1
                    except FileNotFoundError:
                        pass
                    except OSError as exc:
                        if exc.errno != errno.EISDIR:
                            log.warning("cannot remove log %s of task %s: %s", name, task_id, exc)
        finally:
            os.close(dir_fd)
    return removed


async def purge_once(config: Config, db: Database, now: float | None = None) -> list[int]:
    """One purge: every final task that finished more than `retain_days`
    ago, in batches; their logs too. Returns the purged ids (none when
    retention is off)."""
    days = config.database.retain_days
    if days <= 0:
        return []
    cutoff = (time.time() if now is None else now) - days * 86400
    purged: list[int] = []
    while True:
        batch = await db.purge_final_tasks(cutoff, limit=PURGE_BATCH)
        if not batch:
            break
        ids = list(batch)
        purged.extend(ids)
        files = await asyncio.to_thread(remove_logs, config.paths.shared_dir, batch)
        log.info("retention: purged %d final tasks older than %d days and %d log files", len(ids), days, files)
        if len(ids) < PURGE_BATCH:
            break
    return purged


async def retention_loop(config: Config, db: Database, interval: float = PURGE_INTERVAL) -> None:
    """Purge now and then every `interval` seconds; a failed purge is logged
    and tried again next time."""
    if config.database.retain_days <= 0:
        return
    while True:
        try:
            await purge_once(config, db)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention purge failed; trying again in %.0f s", interval)
        await asyncio.sleep(interval)
