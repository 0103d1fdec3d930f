"""`hakuriver.init service` without a node: config precedence, output, --print, errors."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hakuriver import __version__
from hakuriver.cli.init import main
from hakuriver.config import read_config_file
from hakuriver.deploy.units import build_path_env, render_unit, unit_params_from_config

PY = "/opt/hakuriver/venv/bin/python"


def write_config(path: Path, shared: Path, **extra: str) -> Path:
    shared.mkdir(parents=True, exist_ok=True)
    shared.chmod(0o1777)  # the db dir too: writable by the unit's User= whoever that is
    lines = [
        "[auth]",
        'token = "' + "t" * 32 + '"',
        "[paths]",
        f'shared_dir = "{shared}"',
        f'local_temp_dir = "{shared}"',
        "[database]",
        f'db_file = "{shared}/host.db"',
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def svc(text: str, key: str) -> str:
    [value] = [line.partition("=")[2] for line in text.splitlines() if line.startswith(key + "=")]
    return value


def test_config_precedence(env: Path) -> None:
    both = write_config(env / "both.toml", env / "s-both")
    host = write_config(env / "host.toml", env / "s-host")
    runner = write_config(env / "runner.toml", env / "s-runner")
    out = env / "out"
    out.mkdir()

    def generate(*flags: str) -> tuple[str, str]:
        assert main(["service", "--all", "--output-dir", str(out), *flags]) == 0
        h = (out / "hakuriver-host.service").read_text()
        r = (out / "hakuriver-runner.service").read_text()
        return svc(h, "WorkingDirectory"), svc(r, "WorkingDirectory")

    assert generate("--config", str(both)) == (str(env / "s-both"), str(env / "s-both"))
    assert generate("--config", str(both), "--host-config", str(host)) == (str(env / "s-host"), str(env / "s-both"))
    assert generate("--config", str(both), "--runner-config", str(runner)) == (
        str(env / "s-both"),
        str(env / "s-runner"),
    )
    assert generate("--host-config", str(host), "--runner-config", str(runner), "--config", str(both)) == (
        str(env / "s-host"),
        str(env / "s-runner"),
    )
    h = (out / "hakuriver-host.service").read_text()
    assert svc(h, "ExecStart").endswith(f"-m hakuriver.cli.host --config {host}")


def test_lookup_order_without_flags(
    env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["service", "--host", "--print"]) == 1
    err = capsys.readouterr().err
    assert "no config file found" in err and "hakuriver.init config" in err and err.count("\n") == 1
    default = write_config(env / "home" / ".hakuriver" / "config.toml", env / "s-default")
    assert main(["service", "--host", "--print"]) == 0
    assert svc(capsys.readouterr().out, "ExecStart").endswith(f"--config {default}")
    from_env = write_config(env / "env.toml", env / "s-env")
    monkeypatch.setenv("HAKURIVER_CONFIG", str(from_env))
    assert main(["service", "--runner", "--print"]) == 0
    assert svc(capsys.readouterr().out, "ExecStart").endswith(f"--config {from_env}")


def test_relative_config_becomes_absolute_and_files_land_in_output_dir(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(env / "c.toml", env / "shared")
    (env / "units").mkdir()
    assert main(["service", "--all", "--config", "c.toml", "--output-dir", "units"]) == 0
    files = sorted(p.name for p in (env / "units").iterdir())
    assert files == ["hakuriver-host.service", "hakuriver-runner.service"]
    for name in files:
        path = env / "units" / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert svc(path.read_text(), "ExecStart").endswith(f"--config {env / 'c.toml'}")
    assert not (env / "hakuriver-host.service").exists()
    out = capsys.readouterr().out
    for step in (
        "cp ",
        "/etc/systemd/system/",
        "systemctl daemon-reload",
        "systemctl enable --now hakuriver-host.service hakuriver-runner.service",
        "journalctl -u hakuriver-host.service -u hakuriver-runner.service",
        "hakuriver.init launcher --config c.toml --user ",
    ):
        assert step in out, step
    # default output dir: the current directory
    assert main(["service", "--host", "--config", "c.toml"]) == 0
    assert (env / "hakuriver-host.service").is_file()


def test_defaults_come_from_the_invoking_environment(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(env / "c.toml", env / "shared")
    assert main(["service", "--host", "--config", "c.toml", "--print"]) == 0
    text = capsys.readouterr().out
    assert svc(text, "User") == pwd.getpwuid(os.geteuid()).pw_name
    assert svc(text, "Group") == grp.getgrgid(os.getegid()).gr_name
    assert svc(text, "ExecStart").startswith(f"{os.path.abspath(sys.executable)} -m hakuriver.cli.host ")


@pytest.mark.parametrize(
    "role,extra",
    [
        ("host", []),
        ("host", ["--harden"]),
        ("runner", []),
        ("runner", ["--instance", "gpu1"]),
    ],
)
def test_print_is_byte_identical_to_the_generator(
    env: Path, role: str, extra: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The guard against divergence: the CLI and the library (what the Ansible
    roles use) must render the same bytes for the same inputs."""
    config_path = write_config(
        env / "c.toml",
        env / "shared",
    )
    flags = ["--user", "nobody", "--group", "nogroup", "--python", PY, "--system-path", "/usr/bin:/bin"]
    assert main(["service", f"--{role}", "--config", str(config_path), "--print", *flags, *extra]) == 0
    printed = capsys.readouterr().out
    params = unit_params_from_config(
        read_config_file(config_path),
        role,
        user="nobody",
        group="nogroup",
        python=PY,
        path_env=build_path_env(PY, "/usr/bin:/bin"),
        instance="gpu1" if "--instance" in extra else None,
        harden="--harden" in extra,
        version=__version__,
    )
    assert printed == render_unit(params)


def test_print_through_the_console_entry_point_and_no_system_commands(env: Path) -> None:
    """Run as a real process with sudo/systemctl/cp/install shims first on PATH:
    hakuriver.init must call none of them."""
    config_path = write_config(env / "c.toml", env / "shared")
    shims = env / "shims"
    shims.mkdir()
    calls = env / "calls"
    for name in ("sudo", "systemctl", "cp", "install", "mv", "visudo"):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\necho {name} "$@" >> {calls}\nexit 1\n')
        shim.chmod(0o755)
    run_env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    argv = [
        sys.executable,
        "-m",
        "hakuriver.cli.init",
        "service",
        "--runner",
        "--config",
        str(config_path),
        "--user",
        "nobody",
        "--group",
        "nogroup",
        "--python",
        PY,
    ]
    printed = subprocess.run([*argv, "--print"], env=run_env, capture_output=True, text=True, check=True).stdout
    params = unit_params_from_config(
        read_config_file(config_path),
        "runner",
        user="nobody",
        group="nogroup",
        python=PY,
        path_env=build_path_env(PY, None),
        version=__version__,
    )
    assert printed == render_unit(params)
    (env / "out").mkdir()
    subprocess.run([*argv, "--output-dir", str(env / "out")], env=run_env, capture_output=True, check=True)
    assert (env / "out" / "hakuriver-runner.service").read_text() == printed
    assert not calls.exists(), calls.read_text()


@pytest.mark.parametrize(
    "argv,status,needle",
    [
        (["service"], 2, "one of the arguments --host --runner --all is required"),
        (["service", "--host", "--runner"], 2, "not allowed with"),
        (["service", "--host", "--config", "missing.toml"], 1, "does not exist"),
        (["service", "--host", "--config", "bad.toml"], 1, "not valid TOML"),
        (["service", "--host", "--config", "unknown.toml"], 1, "unknown key"),
        (["service", "--host", "--config", "nodb.toml"], 1, "database.db_file must be set"),
        (["service", "--host", "--config", "c.toml", "--output-dir", "nowhere"], 1, "does not exist"),
        (["service", "--host", "--config", "c.toml", "--instance", "x"], 2, "--instance"),
        (["service", "--runner", "--config", "c.toml", "--instance", "a/b"], 2, "--instance"),
        (["service", "--runner", "--config", "c.toml", "--harden"], 2, "Host unit only"),
        (["service", "--all", "--config", "c.toml", "--print"], 2, "--print"),
        (["service", "--host", "--config", "c.toml", "--user", "bad user"], 2, "--user"),
        (["service", "--host", "--config", "c.toml", "--python", "py\nExecStartPre=/x"], 1, "python"),
    ],
)
def test_errors_are_one_line(
    env: Path, argv: list[str], status: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(env / "c.toml", env / "shared")
    (env / "bad.toml").write_text("[paths\n")
    (env / "unknown.toml").write_text("[paths]\nshared = 1\n")
    (env / "nodb.toml").write_text(f'[auth]\ntoken = "{"t" * 32}"\n[paths]\nshared_dir = "/srv"\n')
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.err.startswith("hakuriver.init: error:"), captured.err
    assert captured.err.count("\n") == 1 and needle in captured.err, captured.err
    assert captured.out == ""
    assert not list(env.glob("*.service"))


def test_notes_go_to_stderr_and_leave_print_clean(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(env / "c.toml", env / "missing-shared")
    (env / "missing-shared").rmdir()
    assert main(["service", "--host", "--config", "c.toml", "--print", "--user", "root", "--group", "root"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# hakuriver-host.service")
    assert "does not exist here" in captured.err and "runs as root" in captured.err


def test_an_instance_without_its_own_runner_name_gets_a_note(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(env / "c.toml", env / "shared")
    assert (
        main(
            [
                "service",
                "--runner",
                "--instance",
                "a",
                "--config",
                "c.toml",
                "--print",
                "--python",
                "/nonexistent/bin/python",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "runner.name is empty" in err and "/nonexistent/bin/python does not exist here" in err
