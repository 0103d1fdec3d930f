"""`hakuriver.init backup-timer`: the Host's backup service and timer, from the
same generator the Ansible role runs; `systemd-analyze verify` accepts them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver import __version__
from hakuriver.cli.init import main
from hakuriver.deploy.units import (
    BACKUP_SERVICE,
    BACKUP_TIMER,
    BackupTimerParams,
    UnitError,
    build_path_env,
    render_backup_service,
    render_backup_timer,
)

from .test_service_cmd import env, svc, write_config

__all__ = ["env"]  # the fixture, imported for its use below

FLAGS = ["--user", "nobody", "--group", "nogroup", "--system-path", "/usr/bin:/bin"]


def _params(config: Path, backups: Path, python: str, **kw: object) -> BackupTimerParams:
    return BackupTimerParams(
        user="nobody",
        group="nogroup",
        python=python,
        config_path=str(config),
        backup_dir=str(backups),
        keep=kw.pop("keep", 7),  # type: ignore[arg-type]
        path_env=build_path_env(python, "/usr/bin:/bin"),
        version=__version__,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("unit", ["service", "timer"])
def test_print_is_the_generators_output(env: Path, unit: str, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(env / "host.toml", env / "shared")
    backups = env / "backups"
    backups.mkdir(mode=0o700)
    argv = ["backup-timer", "--config", str(config), "--dir", str(backups), "--keep", "3", "--print", unit]
    assert main([*argv, "--python", "/opt/venv/bin/python", *FLAGS]) == 0
    printed = capsys.readouterr().out
    params = _params(config, backups, "/opt/venv/bin/python", keep=3)
    assert printed == (render_backup_service if unit == "service" else render_backup_timer)(params)


def test_the_service_runs_the_admin_backup_into_the_dir_and_keeps_n(env: Path) -> None:
    config = write_config(env / "host.toml", env / "shared")
    text = render_backup_service(_params(config, env / "b", "/opt/venv/bin/python", keep=5))
    assert svc(text, "ExecStart") == (
        f"/opt/venv/bin/python -m hakuriver.cli.admin --config {config} backup --into {env / 'b'} --keep 5"
    )
    assert svc(text, "Type") == "oneshot" and svc(text, "UMask") == "0077"
    assert svc(text, "ReadWritePaths") == str(env / "b") and svc(text, "ProtectSystem") == "strict"
    timer = render_backup_timer(_params(config, env / "b", "/opt/venv/bin/python", on_calendar="*-*-* 03:00:00"))
    assert svc(timer, "OnCalendar") == "*-*-* 03:00:00" and svc(timer, "Persistent") == "true"
    assert svc(timer, "Unit") == BACKUP_SERVICE


@pytest.mark.parametrize(
    ("field", "value"),
    [("keep", 0), ("keep", True), ("on_calendar", "daily\nExecStart=/bin/sh"), ("backup_dir", "relative/dir")],
)
def test_values_that_cannot_go_into_a_unit_are_refused(env: Path, field: str, value: object) -> None:
    config = write_config(env / "host.toml", env / "shared")
    kw = {field: value}
    with pytest.raises(UnitError):
        _params(config, Path(str(kw.pop("backup_dir", env / "b"))), "/opt/venv/bin/python", **kw)


def test_files_are_written_and_the_steps_printed(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(env / "host.toml", env / "shared")
    backups = env / "backups"
    backups.mkdir(mode=0o755)
    out = env / "units"
    out.mkdir()
    argv = ["backup-timer", "--config", str(config), "--dir", str(backups), "--output-dir", str(out), *FLAGS]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted([BACKUP_SERVICE, BACKUP_TIMER])
    assert f"systemctl enable --now {BACKUP_TIMER}" in captured.out
    assert "readable by others" in captured.err  # a 0755 dir for files holding token hashes


def test_a_bad_keep_is_a_one_line_usage_error(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(env / "host.toml", env / "shared")
    assert main(["backup-timer", "--config", str(config), "--dir", str(env), "--keep", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hakuriver.init: error: "), err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_verify_accepts_both_units(env: Path) -> None:
    config = write_config(env / "host.toml", env / "shared")
    backups = env / "backups"
    backups.mkdir(mode=0o700)
    params = BackupTimerParams(
        user="root",
        group="root",
        python=sys.executable,
        config_path=str(config),
        backup_dir=str(backups),
        keep=7,
        path_env=build_path_env(sys.executable, None),
        version=__version__,
    )
    units = env / "units"
    units.mkdir()
    (units / BACKUP_SERVICE).write_text(render_backup_service(params))
    (units / BACKUP_TIMER).write_text(render_backup_timer(params))
    run = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / BACKUP_TIMER), str(units / BACKUP_SERVICE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    ours = [line for line in run.stderr.splitlines() if "hakuriver-host-backup" in line]
    assert run.returncode == 0 and not ours, run.stderr
