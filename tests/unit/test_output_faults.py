"""Output faults on a real small file system (a 1 MiB tmpfs this test mounts):
what the runner records when a task's output could not be fully written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hakuriver.runner.executors.docker.logs import STDERR, STDOUT, write_frame
from hakuriver.runner.executors.output import OutputFault, check_written_files, file_gone, summary, write_fault
from tests.harness.smallfs import fill, small_tmpfs


def test_a_write_on_a_full_file_system_is_recorded_with_what_was_written(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", size="1m") as fs:
        out_path, err_path = fs / "1.out", fs / "1.err"
        with open(out_path, "ab", buffering=0) as out, open(err_path, "ab", buffering=0) as err:
            files = {STDOUT: out, STDERR: err}
            faults: dict[int, OutputFault] = {}
            assert write_frame(files, faults, STDERR, b"a line\n")
            assert not write_frame(files, faults, STDOUT, b"x" * (4 << 20))
            assert set(faults) == {STDOUT}
            written = out_path.stat().st_size
            assert 0 < written < 1 << 20
            assert faults[STDOUT].written == written
            text = summary(faults.values())
            assert text is not None
            assert text.startswith("stdout: No space left on device (ENOSPC) after ")
            assert text.endswith(" written")
        # The file is a prefix of what was sent: nothing but what was accepted.
        assert out_path.read_bytes() == b"x" * written


def test_a_removed_output_file_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "1.out"
    with open(path, "ab", buffering=0) as f:
        assert file_gone("stdout", str(path), f.fileno()) is None
        path.unlink()
        gone = file_gone("stdout", str(path), f.fileno())
        assert gone is not None and "was removed while the task ran" in str(gone)
        path.write_text("someone else's")
        replaced = file_gone("stdout", str(path), f.fileno())
        assert replaced is not None and "was replaced" in str(replaced)


def test_null_task_files_on_a_full_file_system_are_flagged_then_clean_once_freed(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "fs", size="1m") as fs:
        out, err = fs / "1.out", fs / "1.err"
        out.write_bytes(b"partial output\n")
        err.write_bytes(b"")
        paths = {"stdout": str(out), "stderr": str(err)}
        assert check_written_files(paths) == []
        fill(fs / "filler")
        [fault] = check_written_files(paths)
        assert fault.stream == "output"
        assert "No space left on device (ENOSPC)" in str(fault)
        assert "stdout holds 15 bytes, stderr holds 0 bytes" in str(fault)
        os.unlink(fs / "filler")
        assert check_written_files(paths) == []
        err.unlink()
        [gone] = check_written_files(paths)
        assert gone.stream == "stderr" and "is gone" in str(gone)


def test_a_vanished_directory_is_a_fault_not_a_crash(tmp_path: Path) -> None:
    paths = {"stdout": str(tmp_path / "nowhere" / "1.out"), "stderr": str(tmp_path / "nowhere" / "1.err")}
    faults = check_written_files(paths)
    assert [f.stream for f in faults] == ["stdout", "stderr"]
    text = summary(faults)
    assert text is not None and "is gone" in text


@pytest.mark.parametrize(("written", "end"), [(0, "with nothing written"), (3 << 20, "after 3M written")])
def test_the_fault_line(written: int, end: str) -> None:
    exc = OSError(5, "Input/output error")
    assert str(write_fault("stderr", exc, written)) == f"stderr: Input/output error (EIO) {end}"
