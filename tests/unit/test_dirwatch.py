"""runner/executors/dirwatch.py against a real directory and real inotify."""

from __future__ import annotations

import asyncio
import os

from hakuriver.runner.executors.dirwatch import DirWatch


async def test_a_record_renamed_into_the_dir_wakes_the_waiter(tmp_path) -> None:
    woke = asyncio.Event()
    watch = DirWatch()
    try:
        assert watch.start(str(tmp_path), woke.set)
        assert not woke.is_set()
        # What the launcher's hook does: write a temp file elsewhere in the dir, rename it in.
        tmp = tmp_path / "7.json.123.tmp"
        tmp.write_text("{}")
        woke.clear()  # the temp file's close may already have woken it; the rename must too
        os.rename(tmp, tmp_path / "7.json")
        await asyncio.wait_for(woke.wait(), 30)
    finally:
        watch.close()
    watch.close()  # idempotent
    assert not watch.active


async def test_a_missing_dir_is_no_watch_and_leaves_nothing_behind(tmp_path) -> None:
    watch = DirWatch()
    assert watch.start(str(tmp_path / "missing"), lambda: None) is False
    assert not watch.active
    watch.close()
