"""`hakuriver.init sudoers`: the Runner's drop-in from hakuriver.deploy.sudoers, checked by visudo."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hakuriver.cli.init import SUDOERS_DROPIN, main


def test_prints_the_renderers_text_and_writes_a_file_visudo_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hakuriver.deploy.sudoers import render_sudoers  # issue 4's module

    assert main(["sudoers", "--runner", "--user", "hkrunner"]) == 0
    printed = capsys.readouterr().out
    assert printed == render_sudoers("hkrunner")
    assert "hkrunner" in printed

    out = tmp_path / "hakuriver"
    assert main(["sudoers", "--runner", "--user", "hkrunner", "--output", str(out)]) == 0
    assert out.read_text() == printed
    assert stat.S_IMODE(out.stat().st_mode) == 0o440
    steps = capsys.readouterr().out
    assert f"visudo -cf {out}" in steps and SUDOERS_DROPIN in steps

    visudo = shutil.which("visudo") or "/usr/sbin/visudo"
    assert Path(visudo).exists(), "visudo is needed (scripts/test.sh installs sudo)"
    check = subprocess.run([visudo, "-cf", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_drop_in_path_printed_is_the_renderers() -> None:
    from hakuriver.deploy import sudoers

    assert SUDOERS_DROPIN == sudoers.DEFAULT_SUDOERS_PATH


@pytest.mark.parametrize(
    "argv,status,needle",
    [
        (["sudoers"], 2, "--runner"),
        (["sudoers", "--runner", "--user", "a b"], 2, "--user"),
        (["sudoers", "--runner", "--user", "root"], 1, "root"),
        (["sudoers", "--runner", "--user", "hk", "--output", "/nonexistent/dir/x"], 1, "does not exist"),
    ],
)
def test_errors_are_one_line(argv: list[str], status: int, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.startswith("hakuriver.init: error:") and err.count("\n") == 1 and needle in err, err
