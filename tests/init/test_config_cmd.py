"""`hakuriver.init config`: the commented starter config."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import toml

from hakuriver.cli.init import main
from hakuriver.config import Config, read_config_file
from hakuriver.deploy.configfile import KEY_COMMENTS, SECTION_COMMENTS, config_keys, render_config


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("HAKURIVER_CONFIG", raising=False)
    return home


@pytest.fixture
def open_umask() -> Iterator[None]:
    """umask 0: a file created without an explicit mode would be world-readable."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_config_key_has_a_comment_and_the_defaults_round_trip() -> None:
    keys = config_keys()
    assert set(SECTION_COMMENTS) == set(keys)
    assert set(KEY_COMMENTS) == {f"{s}.{k}" for s, ks in keys.items() for k in ks}
    text = render_config()
    assert toml.loads(text) == Config().to_dict()
    for dotted, comment in KEY_COMMENTS.items():
        assert f"# {comment}\n{dotted.partition('.')[2]} = " in text


def test_default_path_mode_0600_and_a_fresh_token(
    home: Path, open_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["config"]) == 0
    path = home / ".hakuriver" / "config.toml"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    config = read_config_file(path)
    auth = config.auth
    assert len(auth.admin_token) >= 43 and len(auth.runner_token) >= 43 and auth.admin_token != auth.runner_token
    assert auth.token == "", "no single shared token any more"
    out = capsys.readouterr().out
    assert f"wrote {path} (mode 0600" in out
    assert auth.admin_token not in out and auth.runner_token not in out, "secrets are never printed"
    other = home / "other.toml"
    assert main(["config", "--output", str(other)]) == 0
    assert read_config_file(other).auth.admin_token != auth.admin_token


def test_flags_round_trip(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    token = "k" * 20 + "-_Zz09"
    (tmp_path / "tok").write_text(token + "\n")
    out = tmp_path / "cfg" / "host.toml"
    argv = [
        "config",
        "--output",
        str(out),
        "--host-address",
        "10.0.0.1",
        "--host-bind-ip",
        "10.0.0.1",
        "--host-port",
        "9100",
        "--runner-address",
        "10.0.0.7",
        "--runner-port",
        "9101",
        "--shared-dir",
        "shared",
        "--local-temp-dir",
        "/scratch/hkr",
        "--db-file",
        "~/db/host.db",
        "--host-log-file",
        "/var/log/hkr/host.log",
        "--runner-log-file",
        "/var/log/hkr/runner.log",
        "--runner-name",
        "gpu-7",
        "--runner-user",
        "tasks",
        "--token-file",
        str(tmp_path / "tok"),
    ]
    assert main(argv) == 0
    c = read_config_file(out)
    assert (c.network.host_reachable_address, c.network.host_bind_ip, c.network.host_port) == (
        "10.0.0.1",
        "10.0.0.1",
        9100,
    )
    assert (c.network.runner_address, c.network.runner_port) == ("10.0.0.7", 9101)
    assert c.paths.shared_dir == str(tmp_path / "shared"), "relative paths are stored absolute"
    assert c.paths.local_temp_dir == "/scratch/hkr"
    assert c.database.db_file == str(home / "db" / "host.db")
    assert (c.paths.host_log_file, c.paths.runner_log_file) == ("/var/log/hkr/host.log", "/var/log/hkr/runner.log")
    assert (c.runner.name, c.environment.runner_user, c.auth.token) == ("gpu-7", "tasks", token)
    # everything not given keeps its default
    defaults = Config().to_dict()
    got = c.to_dict()
    for section in ("timing", "docker"):
        assert got[section] == defaults[section]
    assert c.network.host_ssh_proxy_port == defaults["network"]["host_ssh_proxy_port"]


def test_token_flag(tmp_path: Path) -> None:
    out = tmp_path / "c.toml"
    assert main(["config", "--output", str(out), "--token", "A" * 40]) == 0
    assert read_config_file(out).auth.token == "A" * 40


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, open_umask: None, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.toml"
    out.write_text("# mine\n")
    out.chmod(0o644)
    assert main(["config", "--output", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert out.read_text() == "# mine\n"
    inode = out.stat().st_ino
    assert main(["config", "--output", str(out), "--force"]) == 0
    assert mode(out) == 0o600
    assert out.stat().st_ino != inode, "replaced by rename, never rewritten in place"
    assert read_config_file(out).auth.admin_token
    assert [p.name for p in tmp_path.iterdir()] == ["c.toml"], "no temporary file left behind"


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--host-port", "0"], "port"),
        (["--runner-port", "http"], "port"),
        (["--token", "short"], "shorter than"),
        (["--token", "a" * 20 + " b"], "whitespace"),
        (["--token", "a" * 20, "--token-file", "x"], "not allowed with"),
        (["--runner-name", "no spaces"], "--runner-name"),
        (["--runner-user", "a:b"], "--runner-user"),
        (["--host-address", ""], "--host-address"),
        (["--shared-dir", ""], "--shared-dir"),
    ],
)
def test_bad_values_are_one_line_usage_errors(
    tmp_path: Path, argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.toml"
    assert main(["config", "--output", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hakuriver.init: error:") and err.count("\n") == 1 and needle in err
    assert not out.exists()


def test_unreadable_token_file_is_a_failure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--output", str(tmp_path / "c.toml"), "--token-file", str(tmp_path / "none")]) == 1
    assert "cannot read --token-file" in capsys.readouterr().err


def test_runner_config_holds_the_runner_token_and_no_admin_token(tmp_path: Path) -> None:
    secret = "r" * 30 + "-_09"
    (tmp_path / "rt").write_text(secret + "\n")
    out = tmp_path / "runner.toml"
    assert main(["config", "--output", str(out), "--runner-token-file", str(tmp_path / "rt")]) == 0
    auth = read_config_file(out).auth
    assert (auth.runner_token, auth.admin_token, auth.token) == (secret, "", "")


def test_client_config_has_only_the_host_address_and_the_users_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = "hkr_" + "u" * 40
    (tmp_path / "tok").write_text(token + "\n")
    out = tmp_path / "client.toml"
    argv = ["config", "--client", "--output", str(out), "--token-file", str(tmp_path / "tok")]
    assert main([*argv, "--host-address", "10.1.2.3", "--host-port", "8123"]) == 0
    assert mode(out) == 0o600
    config = read_config_file(out)
    assert (config.network.host_reachable_address, config.network.host_port) == ("10.1.2.3", 8123)
    assert (config.auth.token, config.auth.admin_token, config.auth.runner_token) == (token, "", "")
    assert "runner_token" not in out.read_text() and "admin_token" not in out.read_text()
    assert token not in capsys.readouterr().out
    assert main(["config", "--client", "--output", str(tmp_path / "x.toml")]) == 2
    assert "--client needs the user's token" in capsys.readouterr().err
